"""The HTTP exchanges that :mod:`common.netguard.policy` vets: downloads and callbacks.

Each connection goes to the address the policy vetted: a network backend pins every TCP
connect to it while the URL keeps its host name, so the Host header, TLS SNI and the
certificate check all use the name. Nothing resolves the name a second time, so DNS
rebinding between check and connect cannot move the request elsewhere. Redirects are
followed by hand, each hop checked like the first. Every exchange is bounded in bytes and
time by :class:`FetchLimits`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx

from common.errors import DownloadFailedError, UploadTooLargeError
from common.netguard.policy import IPAddress, IPNetwork, check_url, redact_url, resolve

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_FLUSH_BYTES = 1024 * 1024
USER_AGENT = b"whisperx-serve"


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one outbound exchange, redirects included."""

    max_bytes: int
    """Largest body read (a download beyond it fails; a callback's reply is cut)."""
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    """Longest wait for the next bytes (also for sending)."""
    total_timeout: float = 300.0
    """Deadline for everything: resolution, every hop, the whole body."""
    max_redirects: int = 5


@dataclass(frozen=True)
class FetchedFile:
    url: str
    """The final URL, redacted (no credentials, query or fragment)."""
    size: int
    content_type: str | None


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects every TCP request to one vetted address, whatever host name it names."""

    def __init__(self, address: IPAddress) -> None:
        self._address = str(address)
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._backend.connect_tcp(
            self._address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never used for outbound URLs")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


@contextlib.asynccontextmanager
async def _exchange(
    method: str,
    url: httpx.URL,
    address: IPAddress,
    *,
    limits: FetchLimits,
    headers: Sequence[tuple[bytes, bytes]] = (),
    content: bytes | None = None,
) -> AsyncIterator[httpcore.Response]:
    """One request on a fresh single-connection pool pinned to ``address``."""
    pool = httpcore.AsyncConnectionPool(
        ssl_context=_ssl_context(), max_connections=1, network_backend=_PinnedBackend(address)
    )
    target = httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )
    sent = [
        (b"Host", url.netloc),
        (b"User-Agent", USER_AGENT),
        (b"Accept-Encoding", b"identity"),  # no transparent decompression (zip bombs)
        *headers,
    ]
    timeouts = {
        "connect": limits.connect_timeout,
        "read": limits.read_timeout,
        "write": limits.read_timeout,
        "pool": limits.connect_timeout,
    }
    async with (
        pool,
        pool.stream(
            method, target, headers=sent, content=content, extensions={"timeout": timeouts}
        ) as response,
    ):
        yield response


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _joined(base: httpx.URL, location: str, shown: str) -> str:
    """A redirect's ``Location`` (maybe relative) as an absolute URL to check again."""
    try:
        return str(base.join(location))
    except (httpx.InvalidURL, TypeError, ValueError):
        raise DownloadFailedError(
            "The server at the URL sent a broken redirect.", f"unparseable Location from {shown}"
        ) from None


def _transport_failure(exc: Exception, shown: str) -> DownloadFailedError:
    if isinstance(exc, httpcore.TimeoutException):
        return DownloadFailedError(
            "The server at the URL did not answer in time.",
            f"{type(exc).__name__} talking to {shown}",
        )
    return DownloadFailedError(
        "The server at the URL could not be reached.",
        f"{type(exc).__name__} talking to {shown}: {exc}",
    )


_TRANSPORT_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    ssl.SSLError,
)


def _too_large(limit: int, detail: str) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"The file is larger than the {limit} bytes this service accepts.", detail
    )


# ---------------------------------------------------------------- public operations


async def fetch_to_file(
    url: str,
    dest: Path,
    *,
    limits: FetchLimits,
    allow_networks: Sequence[IPNetwork] = (),
) -> FetchedFile:
    """GET ``url`` into ``dest`` within every limit; ``dest`` is removed on any failure.

    Raises UrlNotAllowedError (a refused URL or hop), UploadTooLargeError (declared or
    streamed size over ``limits.max_bytes``) or DownloadFailedError (network, status,
    redirects, time).
    """
    try:
        async with asyncio.timeout(limits.total_timeout):
            return await _fetch(url, dest, limits, allow_networks)
    except TimeoutError:
        dest.unlink(missing_ok=True)
        raise DownloadFailedError(
            "Downloading the file took too long.",
            f"{redact_url(url)}: not complete within {limits.total_timeout:g}s",
        ) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


async def _fetch(
    url: str, dest: Path, limits: FetchLimits, allow_networks: Sequence[IPNetwork]
) -> FetchedFile:
    current = check_url(url)
    for _ in range(limits.max_redirects + 1):
        address = await resolve(current, allow_networks)
        shown = redact_url(current)
        try:
            async with _exchange("GET", current, address, limits=limits) as response:
                if response.status in _REDIRECTS:
                    location = _header(response, b"location")
                    if not location:
                        raise DownloadFailedError(
                            "The server at the URL sent a broken redirect.",
                            f"HTTP {response.status} without Location from {shown}",
                        )
                    current = check_url(_joined(current, location, shown))
                    continue
                if not 200 <= response.status < 300:
                    raise DownloadFailedError(
                        "The server at the URL did not return the file.",
                        f"{shown} answered HTTP {response.status}",
                    )
                declared = _header(response, b"content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise _too_large(
                        limits.max_bytes,
                        f"content-length {declared} > max_download_bytes={limits.max_bytes}",
                    )
                size = await _stream_to(response, dest, limits.max_bytes)
                return FetchedFile(shown, size, _header(response, b"content-type"))
        except _TRANSPORT_ERRORS as exc:
            raise _transport_failure(exc, shown) from None
    raise DownloadFailedError(
        "The URL redirects too many times.",
        f"more than {limits.max_redirects} redirects from {redact_url(url)}",
    )


async def _stream_to(response: httpcore.Response, dest: Path, max_bytes: int) -> int:
    """Write the body to ``dest``, counting as it comes; disk writes leave the event loop."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    buffer = bytearray()
    with dest.open("wb") as out:
        async for chunk in response.aiter_stream():
            written += len(chunk)
            if written > max_bytes:
                raise _too_large(max_bytes, f"download exceeded max_download_bytes={max_bytes}")
            buffer += chunk
            if len(buffer) >= _FLUSH_BYTES:
                await asyncio.to_thread(out.write, buffer)
                buffer.clear()
        if buffer:
            await asyncio.to_thread(out.write, buffer)
    return written


async def post(
    url: str,
    body: bytes,
    *,
    headers: Sequence[tuple[str, str]] = (),
    limits: FetchLimits,
    allow_networks: Sequence[IPNetwork] = (),
) -> int:
    """POST ``body`` to ``url`` and return the response status (redirects are not followed;
    at most ``limits.max_bytes`` of the reply is read).

    Raises UrlNotAllowedError for a refused URL, DownloadFailedError when no answer came.
    """
    shown = redact_url(url)
    sent = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        async with asyncio.timeout(limits.total_timeout):
            parsed = check_url(url)
            address = await resolve(parsed, allow_networks)
            async with _exchange(
                "POST", parsed, address, limits=limits, headers=sent, content=body
            ) as response:
                read = 0
                async for chunk in response.aiter_stream():
                    read += len(chunk)
                    if read >= limits.max_bytes:
                        break
                return response.status
    except TimeoutError:
        raise DownloadFailedError(
            "The server at the URL did not answer in time.",
            f"{shown}: no answer within {limits.total_timeout:g}s",
        ) from None
    except _TRANSPORT_ERRORS as exc:
        raise _transport_failure(exc, shown) from None
