"""The API's access rules as plain values: Host names, origins, tokens, the bind check."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller.api.security import HostPolicy, same_origin, split_host
from controller.api.tokens import Tokens, check_token, load_tokens
from controller.errors import InvalidInput
from controller.service import ApiSettings, api_access

WRITE = "w" * 20
READ = "r" * 20


@pytest.mark.parametrize(
    ("bind", "host", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:9900", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "localhost:9900", True),
        ("127.0.0.1", "LOCALHOST.", True),
        ("127.0.0.1", "127.0.0.2:9900", True),  # a loopback literal cannot be rebound
        ("127.0.0.1", "[::1]:9900", True),
        ("127.0.0.1", "attacker.example:9900", False),
        ("127.0.0.1", "localhost.attacker.example", False),
        ("127.0.0.1", "10.0.0.5:9900", False),
        ("127.0.0.1", "", False),
        ("127.0.0.1", "127.0.0.1:99999", False),
        ("127.0.0.1", "127.0.0.1:9900@attacker.example", False),
        ("127.0.0.1", "::1", False),  # IPv6 in a Host header needs brackets
        ("::1", "[::1]:9900", True),
        ("::1", "[0:0::1]", True),
        ("10.0.0.5", "10.0.0.5:9900", True),
        ("10.0.0.5", "localhost:9900", False),
        ("10.0.0.5", "10.0.0.6:9900", False),
        ("0.0.0.0", "10.1.2.3:9900", True),
        ("0.0.0.0", "[fe80::1]:9900", True),
        ("0.0.0.0", "localhost", True),
        ("0.0.0.0", "attacker.example", False),
        ("", "attacker.example", False),
    ],
)
def test_host_policy(bind: str, host: str, allowed: bool) -> None:
    assert HostPolicy.build(bind).allows(host) is allowed


def test_configured_names_are_allowed_on_any_port() -> None:
    policy = HostPolicy.build("10.0.0.5", ["Weighbridge.Internal"])
    assert policy.allows("weighbridge.internal:443")
    assert not policy.allows("weighbridge.internal.attacker.example")
    with pytest.raises(InvalidInput, match="api-hostname"):
        HostPolicy.build("127.0.0.1", ["bad/name"])
    with pytest.raises(InvalidInput):
        HostPolicy.build("127.0.0.1", ["name:80"])


def test_split_host() -> None:
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("Example.COM") == ("example.com", None)
    for bad in ("[::1", "[zz]:80", "a b", "a:0", "a:x", "é.example", "[::1]x"):
        assert split_host(bad) is None, bad


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:9900", "127.0.0.1:9900", True),
        ("http://LOCALHOST:9900", "localhost:9900", True),
        ("https://wb.example", "wb.example", True),  # behind a TLS proxy
        ("https://wb.example:443", "wb.example", True),
        ("http://wb.example", "wb.example:80", True),
        ("http://127.0.0.1:3000", "127.0.0.1:9900", False),
        ("http://evil.example", "127.0.0.1:9900", False),
        ("https://127.0.0.1:9900", "127.0.0.1:9900", True),  # that host and port is us
        ("null", "127.0.0.1:9900", False),
        ("file://", "127.0.0.1:9900", False),
        ("http://127.0.0.1:9900/path", "127.0.0.1:9900", False),
        ("http://127.0.0.1:99999", "127.0.0.1:9900", False),
    ],
)
def test_same_origin(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


def test_bearer_tokens() -> None:
    tokens = Tokens(write=WRITE, read=READ)
    assert tokens.grant(f"Bearer {WRITE}") == "write"
    assert tokens.grant(f"bearer {WRITE}") == "write"
    assert tokens.grant(f"BEARER   {READ}  ") == "read"
    for refused in (None, "", WRITE, f"Basic {WRITE}", "Bearer ", f"Bearer {WRITE}x", "Bearer"):
        assert tokens.grant(refused) is None, refused
    assert Tokens(write=WRITE).grant(f"Bearer {READ}") is None
    assert WRITE not in repr(tokens) and READ not in repr(tokens)


def test_tokens_are_checked_without_echoing_them() -> None:
    assert check_token(f"  {WRITE}\n", "file") == WRITE
    for bad in ("short", "x" * 513, "has space inside-0123456", "tab\tin-0123456789abcdef"):
        with pytest.raises(InvalidInput) as caught:
            check_token(bad, "file")
        assert bad.strip() not in caught.value.message


def test_tokens_leave_the_environment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    environ = {"WEIGHBRIDGE_API_TOKEN": WRITE, "WEIGHBRIDGE_READ_TOKEN": READ, "PATH": "/bin"}
    assert load_tokens(None, None, environ) == Tokens(WRITE, READ)
    assert environ == {"PATH": "/bin"}
    path = tmp_path / "token"
    path.write_text(WRITE + "\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_tokens(path, None, {}) == Tokens(WRITE, "")
    assert "chmod 600" in caplog.text and WRITE not in caplog.text
    with pytest.raises(InvalidInput, match="needs a write token"):
        load_tokens(None, None, {"WEIGHBRIDGE_READ_TOKEN": READ})


def test_an_api_beyond_loopback_needs_a_token_or_an_explicit_opt_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for host in ("0.0.0.0", "", "::", "10.0.0.5", "wb.example"):
        with pytest.raises(InvalidInput, match="--insecure-no-token"):
            api_access(host, ApiSettings())
        api_access(host, ApiSettings(tokens=Tokens(WRITE)))
    for host in ("127.0.0.1", "::1", "localhost"):
        api_access(host, ApiSettings())
    with caplog.at_level(logging.WARNING):
        api_access("0.0.0.0", ApiSettings(insecure_no_token=True))
    assert "INSECURE" in caplog.text
