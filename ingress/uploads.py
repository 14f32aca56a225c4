"""Accepting uploaded audio: size limit, safe storage path, a quick probe of the content.

The stored file is always ``<upload_dir>/<task_id><ext>``; the client's filename is kept
for display only (sanitised) and never becomes part of a path.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from pathlib import Path
from typing import BinaryIO

from common.errors import (
    AudioTooLongError,
    EmptyUploadError,
    InvalidAudioError,
    UploadTooLargeError,
)
from deployments.audio import probe_audio

CHUNK = 1024 * 1024
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


def display_name(filename: str | None) -> str | None:
    """A printable, path-free version of the client's filename (at most 255 chars)."""
    if not filename:
        return None
    name = unicodedata.normalize("NFKC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:255] or None


def storage_path(upload_dir: Path, task_id: str, filename: str | None) -> Path:
    suffix = Path(display_name(filename) or "").suffix.lower()
    return upload_dir / f"{task_id}{suffix if _SAFE_EXT.match(suffix) else ''}"


def copy_limited(src: BinaryIO, dest: Path, max_bytes: int) -> int:
    """Copy ``src`` to ``dest``; raise UploadTooLargeError past ``max_bytes``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise UploadTooLargeError(
                        f"The file is larger than the {max_bytes} bytes this service accepts.",
                        f"upload exceeded max_upload_bytes={max_bytes}",
                    )
                out.write(chunk)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


async def save_upload(
    src: BinaryIO, dest: Path, max_bytes: int, *, max_seconds: float | None = None
) -> float | None:
    """Store and probe an upload; returns its duration in seconds when the container says."""
    size = await asyncio.to_thread(copy_limited, src, dest, max_bytes)
    return await probe_stored(dest, size, max_seconds=max_seconds)


async def probe_stored(
    dest: Path, size: int, *, source: str = "uploaded", max_seconds: float | None = None
) -> float | None:
    """Probe audio already stored at ``dest`` (``size`` bytes); delete it unless it is audio
    of at most ``max_seconds`` (as its container declares).

    Returns its duration in seconds when the container says.
    """
    if size == 0:
        dest.unlink(missing_ok=True)
        raise EmptyUploadError(f"The {source} file is empty.", f"{source} file has 0 bytes")
    try:
        duration = await asyncio.to_thread(probe_audio, dest)
    except InvalidAudioError:
        dest.unlink(missing_ok=True)
        raise
    if max_seconds is not None and duration > max_seconds:
        dest.unlink(missing_ok=True)
        raise AudioTooLongError(
            f"The {source} audio is {duration:.0f} s long; this service accepts at most "
            f"{max_seconds:.0f} s.",
            f"audio duration {duration:.1f}s > max_audio_seconds={max_seconds:g}",
        )
    return duration if duration and duration > 0 else None
