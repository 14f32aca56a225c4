"""Serving a stored upload back with HTTP range requests (RFC 9110 §14), for the page's player.

One byte range per request: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``. A range the file
cannot satisfy is a 416 naming the file's size; a malformed or multi-range header, or an
``If-Range`` that no longer matches, is ignored and the whole file is sent (as the RFC
allows), so a player always gets audio it can use.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers

from common.errors import RangeNotSatisfiableError
from ingress.errors import response_for

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

MEDIA_TYPES = {
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".webm": "audio/webm",
    ".mp4": "video/mp4",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
}
FALLBACK_TYPE = "application/octet-stream"


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), FALLBACK_TYPE)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The single byte range ``header`` asks for, as (first, last) inclusive, clipped to the
    file; ``None`` when the header is to be ignored (malformed, several ranges).

    Raises RangeNotSatisfiableError when the range lies wholly outside the file.
    """
    match = _RANGE.match(header.strip().replace(" ", ""))
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(header, size)
        return max(0, size - n), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _unsatisfiable(header, size)
    return start, min(end, size - 1)


def _unsatisfiable(header: str, size: int) -> RangeNotSatisfiableError:
    return RangeNotSatisfiableError(
        "The requested byte range lies outside the file.",
        f"range {header[:64]!r} not satisfiable for {size} bytes",
    )


def _read(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


def ranged_file(path: Path, request_headers: Headers) -> Response:
    """``path`` as a 200 (whole file) or 206 (one range) response, or a 416."""
    stat = path.stat()
    size = stat.st_size
    etag = '"{}"'.format(
        hashlib.md5(f"{stat.st_mtime_ns}-{size}".encode(), usedforsecurity=False).hexdigest()
    )
    last_modified = formatdate(stat.st_mtime, usegmt=True)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": last_modified,
        "Cache-Control": "private, max-age=300",
    }
    wanted = request_headers.get("range")
    if_range = request_headers.get("if-range")
    if wanted and if_range is not None and if_range not in (etag, last_modified):
        wanted = None  # the file changed since the client's copy: send all of it
    span = None
    if wanted:
        try:
            span = parse_range(wanted, size)
        except RangeNotSatisfiableError as exc:
            error: JSONResponse = response_for(exc)
            error.headers["Content-Range"] = f"bytes */{size}"
            return error
    start, end = span if span is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _read(path, start, length),
        status_code=206 if span is not None else 200,
        media_type=media_type(path),
        headers=headers,
    )
