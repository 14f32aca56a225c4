"""common.netguard.policy: which addresses and URLs may be contacted, and the one DNS lookup."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from pydantic import ValidationError

from common.errors import UrlNotAllowedError
from common.netguard.policy import (
    address_refusal,
    check_url,
    redact_url,
    resolve,
)
from common.settings import Settings

ALLOW = (ip_network("127.0.0.2/32"),)

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
    everything = (ip_network("0.0.0.0/0"), ip_network("::/0"))
    for address in ("169.254.169.254", "fd00:ec2::254", "224.0.0.1", "0.0.0.0", "::"):
        assert address_refusal(ip_address(address), everything) is not None, address
    assert address_refusal(ip_address("10.0.0.1"), everything) is None


def test_allow_networks_setting_parses_cidrs_and_rejects_host_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``WHISPERX_SERVE_URL_FETCH_ALLOW_NETWORKS``: where the allowlist comes from."""
    name = "WHISPERX_SERVE_URL_FETCH_ALLOW_NETWORKS"
    monkeypatch.setenv(name, "127.0.0.2, 10.0.0.0/8")
    assert [str(n) for n in Settings().url_fetch_allow_networks] == ["127.0.0.2/32", "10.0.0.0/8"]
    monkeypatch.setenv(name, '["fd00::/8"]')
    assert [str(n) for n in Settings().url_fetch_allow_networks] == ["fd00::/8"]
    monkeypatch.setenv(name, "10.0.0.1/8")
    with pytest.raises(ValidationError):
        Settings()


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
