"""Accepting uploaded audio: size limit, a quick probe of the content, then the blob store.

An upload is first spooled to this node's scratch directory (``<data_dir>/spool``), where
it is probed; only audio that passes goes into the blob store, under the key
``<task_id><ext>``. The client's filename is kept for display only (sanitised) and never
becomes part of a key or a path.
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
    UploadTooLargeError,
)
from deployments.audio import probe_audio
from storage.blobs import BlobStore, put_file

CHUNK = 1024 * 1024
_SAFE_EXT = re.compile(r"^\.[a-z0-9]{1,8}$")


def display_name(filename: str | None) -> str | None:
    """A printable, path-free version of the client's filename (at most 255 chars)."""
    if not filename:
        return None
    name = unicodedata.normalize("NFKC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".")
    return name[:255] or None


def upload_key(task_id: str, filename: str | None) -> str:
    """The blob key of a task's audio: its id and the (safe) extension of the client's name."""
    suffix = Path(display_name(filename) or "").suffix.lower()
    return f"{task_id}{suffix if _SAFE_EXT.match(suffix) else ''}"


def spool_path(spool_dir: Path, key: str) -> Path:
    spool_dir.mkdir(parents=True, exist_ok=True)
    return spool_dir / key


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
    store: BlobStore,
    src: BinaryIO,
    spooled: Path,
    key: str,
    max_bytes: int,
    *,
    max_seconds: float | None = None,
) -> float | None:
    """Spool, probe and store an upload as ``key``; returns its duration in seconds when
    the container says."""
    size = await asyncio.to_thread(copy_limited, src, spooled, max_bytes)
    return await store_spooled(store, spooled, key, size, max_seconds=max_seconds)


async def store_spooled(
    store: BlobStore,
    spooled: Path,
    key: str,
    size: int,
    *,
    source: str = "uploaded",
    max_seconds: float | None = None,
) -> float | None:
    """Probe the spooled file (``size`` bytes) and, if it is audio of at most
    ``max_seconds`` (as its container declares), put it into the blob store as ``key``.
    The spooled file is removed either way.

    Returns its duration in seconds when the container says.
    """
    try:
        if size == 0:
            raise EmptyUploadError(f"The {source} file is empty.", f"{source} file has 0 bytes")
        duration = await asyncio.to_thread(probe_audio, spooled)
        if max_seconds is not None and duration > max_seconds:
            raise AudioTooLongError(
                f"The {source} audio is {duration:.0f} s long; this service accepts at most "
                f"{max_seconds:.0f} s.",
                f"audio duration {duration:.1f}s > max_audio_seconds={max_seconds:g}",
            )
        await asyncio.to_thread(put_file, store, key, spooled)
    finally:
        await asyncio.to_thread(spooled.unlink, missing_ok=True)
    return duration if duration and duration > 0 else None
