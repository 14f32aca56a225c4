"""What outbound URLs and addresses this service may contact (no I/O beyond one DNS lookup).

A URL must be http(s) without credentials. Its host is resolved once, here, and every
address it resolves to must be publicly routable: no loopback, private, link-local, CGNAT,
multicast, reserved, unspecified or cloud-metadata address, also when one hides inside an
IPv6 address (IPv4-mapped, 6to4, Teredo, NAT64). :func:`resolve` returns the one vetted
address that :mod:`common.netguard.transport` then connects to.

``allow_networks`` opens specific CIDRs (an internal media server, a test server on
127.0.0.x); it never opens metadata, multicast or unspecified addresses.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from common.errors import DownloadFailedError, UrlNotAllowedError

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
