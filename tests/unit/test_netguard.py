"""common.netguard: the address policy, URL checks, and fetches against real local servers.

The servers listen on 127.0.0.2 (allowlisted as 127.0.0.2/32) and 127.0.0.1 (not), so a
redirect or a DNS answer that leads to 127.0.0.1 must be refused before any connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from http.server import BaseHTTPRequestHandler
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from common.errors import DownloadFailedError, UploadTooLargeError, UrlNotAllowedError
from common.netguard import (
    FetchLimits,
    address_refusal,
    check_url,
    fetch_to_file,
    parse_networks,
    post,
    redact_url,
    resolve,
)
from tests.local_http import LocalHTTPServer, reply

ALLOW = parse_networks(["127.0.0.2/32"])
LIMITS = FetchLimits(max_bytes=1024 * 1024, connect_timeout=2, read_timeout=2, total_timeout=10)
BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def allowed() -> Any:
    with LocalHTTPServer("127.0.0.2") as server:
        yield server


@pytest.fixture
def forbidden() -> Any:
    with LocalHTTPServer("127.0.0.1") as server:
        yield server


# ---------------------------------------------------------------- address policy


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("0.1.2.3", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fec0::1", "site-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("198.18.0.1", "private"),
        ("::127.0.0.1", "reserved"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("168.63.129.16", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:8.8.8.8", None),
        ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
        ("2002:a9fe:a9fe::1", "metadata"),  # 6to4 around 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 around 8.8.8.8 (DNS64 on IPv6-only networks)
        ("2001::1", "private"),  # Teredo
    ],
)
def test_address_policy(address: str, refusal: str | None) -> None:
    reason = address_refusal(ip_address(address))
    if refusal is None:
        assert reason is None
    else:
        assert reason is not None and refusal in reason, reason


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.2", True),
        ("::ffff:127.0.0.2", True),  # the same address, mapped
        ("127.0.0.1", False),  # a neighbour of the allowlisted /32
        ("127.0.0.3", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
    ],
)
def test_allowlist_opens_exactly_its_networks(address: str, allowed: bool) -> None:
    assert (address_refusal(ip_address(address), ALLOW) is None) is allowed


def test_allowlist_never_opens_metadata_multicast_or_unspecified() -> None:
    everything = parse_networks(["0.0.0.0/0", "::/0"])
    for address in ("169.254.169.254", "fd00:ec2::254", "224.0.0.1", "0.0.0.0", "::"):
        assert address_refusal(ip_address(address), everything) is not None, address
    assert address_refusal(ip_address("10.0.0.1"), everything) is None


def test_parse_networks_rejects_host_bits() -> None:
    assert [str(n) for n in parse_networks(["127.0.0.2", "10.0.0.0/8"])] == [
        "127.0.0.2/32",
        "10.0.0.0/8",
    ]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.1/8"])


# ---------------------------------------------------------------- URL checks


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.flac",
        "file:///etc/passwd",
        "gopher://example.com/",
        "data:audio/flac;base64,AAAA",
        "javascript:alert(1)",
        "example.com/a.flac",
        "http://user:secret@example.com/a.flac",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./x",
        "http:///nohost",
        "http://example.com:0/a",
    ],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(UrlNotAllowedError) as caught:
        check_url(url)
    assert caught.value.code == "url_not_allowed" and caught.value.status_code == 422
    assert "secret" not in caught.value.technical_detail


@pytest.mark.parametrize(
    "url", ["http://example.com/a.flac", "https://example.com:8443/x?sig=1", "HTTPS://Example.COM"]
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url).scheme in ("http", "https")


def test_redact_url_drops_credentials_query_and_fragment() -> None:
    shown = redact_url("https://u:pw@Example.com:8443/a/b.flac?X-Amz-Signature=tok#frag")
    assert shown == "https://example.com:8443/a/b.flac"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://100.64.1.1/",
        "http://localhost/",
        "http://2130706433/",  # 127.0.0.1 as one number
    ],
)
async def test_resolve_refuses_non_public_addresses(url: str) -> None:
    with pytest.raises(UrlNotAllowedError) as caught:
        await resolve(check_url(url), ALLOW)
    assert caught.value.code == "url_not_allowed"


async def test_refusal_detail_does_not_reveal_resolved_addresses() -> None:
    with pytest.raises(UrlNotAllowedError) as caught:
        await resolve(check_url("http://localhost:8080/a"))
    assert "loopback" in caught.value.technical_detail
    assert "127.0.0.1" not in caught.value.technical_detail


async def test_resolve_allows_allowlisted_literal() -> None:
    assert str(await resolve(check_url("http://127.0.0.2:1/"), ALLOW)) == "127.0.0.2"
    assert str(await resolve(check_url("http://[::ffff:127.0.0.2]:1/"), ALLOW)) == "127.0.0.2"


# ---------------------------------------------------------------- fetches


def _serve(body: bytes, **headers: str) -> Any:
    def route(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, body, {"Content-Type": "audio/flac", **headers})

    return route


def _redirect(location: str, status: int = 302) -> Any:
    def route(h: BaseHTTPRequestHandler) -> None:
        reply(h, status, headers={"Location": location})

    return route


async def test_fetch_writes_the_body(allowed: LocalHTTPServer, tmp_path: Path) -> None:
    allowed.routes["/a.flac"] = _serve(BODY)
    dest = tmp_path / "out" / "a.flac"
    fetched = await fetch_to_file(
        allowed.url("/a.flac?token=abc"), dest, limits=LIMITS, allow_networks=ALLOW
    )
    assert dest.read_bytes() == BODY and fetched.size == len(BODY)
    assert fetched.content_type == "audio/flac" and "token" not in fetched.url
    sent = allowed.requests[0].headers
    assert sent["Host"] == f"127.0.0.2:{allowed.port}" and sent["Accept-Encoding"] == "identity"


async def test_fetch_follows_redirects_rechecking_each_hop(
    allowed: LocalHTTPServer, tmp_path: Path
) -> None:
    allowed.routes["/start"] = _redirect("/middle", 301)
    allowed.routes["/middle"] = _redirect(allowed.url("/a.flac"), 307)
    allowed.routes["/a.flac"] = _serve(BODY)
    dest = tmp_path / "a"
    await fetch_to_file(allowed.url("/start"), dest, limits=LIMITS, allow_networks=ALLOW)
    assert dest.read_bytes() == BODY
    assert allowed.paths() == ["/start", "/middle", "/a.flac"]


async def test_redirect_to_a_refused_address_never_connects(
    allowed: LocalHTTPServer, forbidden: LocalHTTPServer, tmp_path: Path
) -> None:
    forbidden.routes["/secret"] = _serve(b"internal data")
    allowed.routes["/start"] = _redirect(forbidden.url("/secret"))
    dest = tmp_path / "a"
    with pytest.raises(UrlNotAllowedError) as caught:
        await fetch_to_file(allowed.url("/start"), dest, limits=LIMITS, allow_networks=ALLOW)
    assert "loopback" in caught.value.technical_detail
    assert forbidden.requests == [] and not dest.exists()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "http://169.254.169.254/latest/"])
async def test_redirect_to_refused_scheme_or_metadata(
    allowed: LocalHTTPServer, tmp_path: Path, location: str
) -> None:
    allowed.routes["/start"] = _redirect(location)
    with pytest.raises(UrlNotAllowedError):
        await fetch_to_file(
            allowed.url("/start"), tmp_path / "a", limits=LIMITS, allow_networks=ALLOW
        )


async def test_redirect_loop_stops_at_the_limit(allowed: LocalHTTPServer, tmp_path: Path) -> None:
    allowed.routes["/loop"] = _redirect("/loop")
    limits = FetchLimits(max_bytes=1024, max_redirects=3, total_timeout=10)
    with pytest.raises(DownloadFailedError, match="redirects"):
        await fetch_to_file(
            allowed.url("/loop"), tmp_path / "a", limits=limits, allow_networks=ALLOW
        )
    assert allowed.paths() == ["/loop"] * 4


async def test_error_status_is_download_failed(allowed: LocalHTTPServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadFailedError) as caught:
        await fetch_to_file(
            allowed.url("/missing"), tmp_path / "a", limits=LIMITS, allow_networks=ALLOW
        )
    assert "HTTP 404" in caught.value.technical_detail and not (tmp_path / "a").exists()


async def test_declared_oversize_is_refused_before_the_body(
    allowed: LocalHTTPServer, tmp_path: Path
) -> None:
    allowed.routes["/big"] = _serve(BODY)
    limits = FetchLimits(max_bytes=len(BODY) - 1)
    with pytest.raises(UploadTooLargeError, match="content-length"):
        await fetch_to_file(
            allowed.url("/big"), tmp_path / "a", limits=limits, allow_networks=ALLOW
        )
    assert not (tmp_path / "a").exists()


async def test_undeclared_oversize_is_cut_mid_stream(
    allowed: LocalHTTPServer, tmp_path: Path
) -> None:
    sent: list[int] = []

    def endless(h: BaseHTTPRequestHandler) -> None:  # no Content-Length, runs until cut
        reply(h, 200, content_length=False)
        chunk = b"\0" * 65536
        try:
            while not allowed.stopping.is_set() and sum(sent) < 50 * 1024 * 1024:
                h.wfile.write(chunk)
                sent.append(len(chunk))
        except OSError:
            pass  # the client hung up: what we want

    allowed.routes["/endless"] = endless
    limits = FetchLimits(max_bytes=256 * 1024, total_timeout=20)
    with pytest.raises(UploadTooLargeError, match="exceeded"):
        await fetch_to_file(
            allowed.url("/endless"), tmp_path / "a", limits=limits, allow_networks=ALLOW
        )
    assert not (tmp_path / "a").exists()
    assert sum(sent) < 50 * 1024 * 1024  # the client stopped reading long before the end


async def test_slow_drip_hits_the_total_deadline(allowed: LocalHTTPServer, tmp_path: Path) -> None:
    def drip(h: BaseHTTPRequestHandler) -> None:
        reply(h, 200, content_length=False)
        try:
            while not allowed.stopping.is_set():
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.1)  # never silent long enough for the read timeout
        except OSError:
            pass

    allowed.routes["/drip"] = drip
    limits = FetchLimits(max_bytes=1024 * 1024, read_timeout=2, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DownloadFailedError, match="took too long"):
        await fetch_to_file(
            allowed.url("/drip"), tmp_path / "a", limits=limits, allow_networks=ALLOW
        )
    assert 0.9 < time.monotonic() - started < 3
    assert not (tmp_path / "a").exists()


async def test_stalled_server_hits_the_read_timeout(
    allowed: LocalHTTPServer, tmp_path: Path
) -> None:
    def stall(h: BaseHTTPRequestHandler) -> None:
        allowed.stopping.wait(10)  # accepts, then says nothing

    allowed.routes["/stall"] = stall
    limits = FetchLimits(max_bytes=1024, read_timeout=0.5, total_timeout=10)
    started = time.monotonic()
    with pytest.raises(DownloadFailedError) as caught:
        await fetch_to_file(
            allowed.url("/stall"), tmp_path / "a", limits=limits, allow_networks=ALLOW
        )
    assert "ReadTimeout" in caught.value.technical_detail
    assert time.monotonic() - started < 3


async def test_connection_refused_is_download_failed(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadFailedError, match="ConnectError"):
        await fetch_to_file(
            f"http://127.0.0.2:{port}/", tmp_path / "a", limits=LIMITS, allow_networks=ALLOW
        )


async def test_resolved_address_is_pinned_against_rebinding(
    allowed: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves once (to 127.0.0.2); a second lookup would answer 127.0.0.1, where
    nothing listens. The fetch must connect to the first answer and keep the name as Host."""
    allowed.routes["/a.flac"] = _serve(BODY)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    lookups: list[str] = []

    async def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return await real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    url = f"http://rebind.test:{allowed.port}/a.flac"
    await fetch_to_file(url, tmp_path / "a", limits=LIMITS, allow_networks=ALLOW)
    assert (tmp_path / "a").read_bytes() == BODY
    assert lookups == ["rebind.test"]
    assert allowed.requests[0].headers["Host"] == f"rebind.test:{allowed.port}"


async def test_name_with_one_refused_address_is_refused(
    allowed: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()

    async def mixed(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", mixed)
    with pytest.raises(UrlNotAllowedError, match="private"):
        await fetch_to_file(
            f"http://mixed.test:{allowed.port}/",
            tmp_path / "a",
            limits=LIMITS,
            allow_networks=ALLOW,
        )
    assert allowed.requests == []


async def test_unresolvable_name_is_download_failed(tmp_path: Path) -> None:
    with pytest.raises(DownloadFailedError, match="DNS"):
        await fetch_to_file("http://no-such-host.invalid/a.flac", tmp_path / "a", limits=LIMITS)


async def test_post_returns_status_and_does_not_follow_redirects(
    allowed: LocalHTTPServer, forbidden: LocalHTTPServer
) -> None:
    allowed.routes["/hook"] = _redirect(forbidden.url("/hook"), 307)
    status = await post(
        allowed.url("/hook"),
        b'{"a": 1}',
        headers=[("Content-Type", "application/json")],
        limits=LIMITS,
        allow_networks=ALLOW,
    )
    assert status == 307 and forbidden.requests == []
    assert allowed.requests[0].method == "POST" and allowed.requests[0].body == b'{"a": 1}'


async def test_unparseable_redirect_is_download_failed(
    allowed: LocalHTTPServer, tmp_path: Path
) -> None:
    allowed.routes["/start"] = _redirect("https://[::1/")
    with pytest.raises(DownloadFailedError, match="broken redirect"):
        await fetch_to_file(
            allowed.url("/start"), tmp_path / "a", limits=LIMITS, allow_networks=ALLOW
        )
