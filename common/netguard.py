"""Outbound HTTP to URLs that users give us (audio downloads, task callbacks), without SSRF.

A URL must be http(s) without credentials. Its host is resolved once, here, and every
address it resolves to must be publicly routable: no loopback, private, link-local, CGNAT,
multicast, reserved, unspecified or cloud-metadata address, also when one hides inside an
IPv6 address (IPv4-mapped, 6to4, Teredo, NAT64). The connection then goes to that vetted
address: a network backend pins every TCP connect to it while the URL keeps its host
name, so the Host header, TLS SNI and the certificate check all use the name. Nothing
resolves the name a second time, so DNS rebinding between check and connect cannot move
the request elsewhere. Redirects are followed by hand, each hop checked like the first.

``allow_networks`` opens specific CIDRs (an internal media server, a test server on
127.0.0.x); it never opens metadata, multicast or unspecified addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import httpcore
import httpx

from common.errors import DownloadFailedError, UploadTooLargeError, UrlNotAllowedError

logger = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, …
        "169.254.170.2",  # AWS ECS task metadata
        "168.63.129.16",  # Azure wire server (a public address)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS instance metadata over IPv6
    )
)
METADATA_HOSTNAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_CGNAT = ip_network("100.64.0.0/10")
_NAT64 = ip_network("64:ff9b::/96")
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


# ---------------------------------------------------------------- address policy


def parse_networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """CIDRs (``10.1.2.0/24``, ``127.0.0.2``) as networks; host bits set is an error."""
    return tuple(v if isinstance(v, IPv4Network | IPv6Network) else ip_network(v) for v in values)


def _embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address a 6to4, Teredo or NAT64 address routes to, if it carries one."""
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress, allow_networks: Sequence[IPNetwork] = ()) -> str | None:
    """Why this service must not connect to ``ip``, or ``None`` when it may."""
    if isinstance(ip, IPv6Address):
        ip = IPv6Address(int(ip))  # drop any %scope so comparisons see the bare address
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d reaches a.b.c.d on dual-stack
            ip = ip.ipv4_mapped
    # Never allowed, whatever the allowlist says.
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    # The operator's explicit exceptions (plain membership, nothing inferred).
    if any(ip in network for network in allow_networks):
        return None
    if isinstance(ip, IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
        reason = address_refusal(inner)  # what a tunnel leads to never gets the allowlist
        if reason is not None:
            return f"{reason} (inside an IPv6 address)"
        if ip in _NAT64:
            return None  # a DNS64 answer for a public IPv4 host (IPv6-only networks)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip in _CGNAT:
        return "a shared (CGNAT) address"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


# ---------------------------------------------------------------- URLs


def redact_url(url: str | httpx.URL) -> str:
    """``scheme://host[:port]/path`` without credentials, query or fragment (may hold tokens)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        netloc = parsed.netloc.decode("ascii", "replace")
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<unparseable URL>"
    path = parsed.path if len(parsed.path) <= 120 else parsed.path[:119] + "…"
    return f"{parsed.scheme}://{netloc}{path}"


def check_url(url: str) -> httpx.URL:
    """Parse ``url`` and refuse what no address check can make safe. No DNS here, so this
    also serves to validate a URL at submission time."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlNotAllowedError(
            "The URL is not valid.", f"unparseable URL ({type(exc).__name__})"
        ) from None
    shown = redact_url(parsed)
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UrlNotAllowedError(
            "Only http and https URLs are accepted.",
            f"scheme {parsed.scheme[:20]!r} refused",
        )
    if parsed.userinfo:
        raise UrlNotAllowedError(
            "URLs with a user name or password are not accepted.",
            f"credentials in URL refused: {shown}",
        )
    host = parsed.host.rstrip(".").lower()
    if not host:
        raise UrlNotAllowedError("The URL has no host name.", f"no host: {shown}")
    if host in METADATA_HOSTNAMES:
        raise UrlNotAllowedError(
            "The URL points to a cloud metadata service, which this service does not contact.",
            f"metadata host refused: {shown}",
        )
    if parsed.port == 0:
        raise UrlNotAllowedError("The URL has an invalid port.", f"port 0 refused: {shown}")
    return parsed


async def resolve(url: httpx.URL, allow_networks: Sequence[IPNetwork] = ()) -> IPAddress:
    """The one address to connect to for ``url``; every address its host has must pass."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    shown = redact_url(url)
    try:
        addresses: list[IPAddress] = [ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise DownloadFailedError(
                "The host name in the URL could not be resolved.",
                f"DNS lookup failed for {shown}: {type(exc).__name__}",
            ) from None
        addresses = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise DownloadFailedError(
            "The host name in the URL could not be resolved.", f"no address for {shown}"
        )
    for address in addresses:
        reason = address_refusal(address, allow_networks)
        if reason is not None:  # the address itself stays out of the detail (DNS recon)
            raise UrlNotAllowedError(
                "The URL points to a private, local or reserved network address, which "
                "this service does not contact.",
                f"{shown} resolves to {reason}",
            )
    first = addresses[0]
    if isinstance(first, IPv6Address) and first.ipv4_mapped is not None:
        return first.ipv4_mapped
    return first


# ---------------------------------------------------------------- pinned transport


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
