"""What can be transcribed: a URL (the server downloads it), a local file, or raw bytes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

from whisperx_serve_client._transport import FileField, FilesFactory
from whisperx_serve_client.errors import SourceError

Source: TypeAlias = str | os.PathLike[str] | bytes
"""``"http(s)://…"`` is a URL the server fetches; any other str or a Path is a local file."""


def is_url(source: Source) -> bool:
    return isinstance(source, str) and source.lower().startswith(("http://", "https://"))


def label(source: Source, index: int) -> str:
    """How a source is named in progress bars, batch results and data frames."""
    if isinstance(source, bytes):
        return f"<bytes #{index}>"
    return os.fspath(source)


def upload(source: Source, file_name: str | None = None) -> FilesFactory:
    """A factory opening the upload for each attempt; a missing file fails here, early."""
    if isinstance(source, bytes):
        data, name = source, file_name or "audio"

        @contextlib.contextmanager
        def from_bytes() -> Iterator[dict[str, FileField]]:
            yield {"file": (name, data)}

        return from_bytes
    path = Path(os.fspath(source))
    if not path.is_file():
        raise SourceError(f"No such file: {path}", f"{path!s} is not a readable file")

    @contextlib.contextmanager
    def from_file() -> Iterator[dict[str, FileField]]:
        try:
            f = path.open("rb")
        except OSError as exc:
            raise SourceError(f"Cannot read {path}.", f"{type(exc).__name__}: {exc}") from exc
        with f:
            yield {"file": (file_name or path.name, f)}

    return from_file
