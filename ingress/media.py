"""Serving a stored upload back from the blob store with HTTP range requests (RFC 9110 §14),
for the page's player.

One byte range per request: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``. A range the file
cannot satisfy is a 416 naming the file's size; a malformed or multi-range header, or an
``If-Range`` that no longer matches, is ignored and the whole file is sent (as the RFC
allows), so a player always gets audio it can use.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import Iterator
from datetime import UTC
from email.utils import format_datetime
from pathlib import PurePath

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers

from common.errors import RangeNotSatisfiableError
from ingress.errors import response_for
from storage.blobs import BlobInfo, BlobStore

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


def media_type(key: str) -> str:
    return MEDIA_TYPES.get(PurePath(key).suffix.lower(), FALLBACK_TYPE)


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


async def ranged_blob(
    store: BlobStore, key: str, info: BlobInfo, request_headers: Headers
) -> Response:
    """Blob ``key`` as a 200 (whole file) or 206 (one range) response, or a 416.

    Raises FileNotFoundError if the blob is gone before its first byte is read."""
    size = info.size
    modified = info.modified
    etag = '"{}"'.format(
        hashlib.md5(
            f"{key}-{modified.timestamp()}-{size}".encode(), usedforsecurity=False
        ).hexdigest()
    )
    last_modified = format_datetime(modified.astimezone(UTC), usegmt=True)
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
    body = await _started(store.read(key, start, length)) if length else iter(())
    return StreamingResponse(
        body,
        status_code=206 if span is not None else 200,
        media_type=media_type(key),
        headers=headers,
    )


async def _started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` with its first item already read (in a thread), so a missing blob is an
    error before the response starts rather than a broken body."""
    first = await asyncio.to_thread(next, chunks, b"")
    return itertools.chain([first], chunks)
