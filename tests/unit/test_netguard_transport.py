"""common.netguard.transport: downloads and callbacks against real local servers.

The servers listen on 127.0.0.2 (allowlisted as 127.0.0.2/32) and 127.0.0.1 (not), so a
redirect or a DNS answer that leads to 127.0.0.1 must be refused before any connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from http.server import BaseHTTPRequestHandler
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from common.errors import DownloadFailedError, UploadTooLargeError, UrlNotAllowedError
from common.netguard.transport import FetchLimits, fetch_to_file, post
from tests.local_http import LocalHTTPServer, reply

ALLOW = (ip_network("127.0.0.2/32"),)
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
