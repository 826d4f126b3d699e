"""`--allow-outbound` entries, what they allow, and URLs with their secrets masked."""

from __future__ import annotations

import pytest

from controller.rollouts.outbound import OutboundPolicy, parse_rule, redact_url


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("10.1.2.3:9090", "10.1.2.3/32:9090"),
        ("[::1]:9090", "[::1/128]:9090"),
        ("fd00::/8", "fd00::/8"),
        ("Prometheus.Internal", "prometheus.internal"),
        ("hooks.example.:443", "hooks.example:443"),
    ],
)
def test_entries(entry: str, shown: str) -> None:
    assert str(parse_rule(entry)) == shown


@pytest.mark.parametrize(
    "entry",
    ["", "10.0.0.0/33", "host:0", "host:70000", "bad_host", "a b", "host\n", "http://x", "-x"],
)
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_rule(entry)


def test_the_default_is_loopback_only() -> None:
    policy = OutboundPolicy.parse(())
    assert policy.allows_address("127.0.0.1", 80) and policy.allows_address("127.9.9.9", 1)
    assert policy.allows_address("::1", 9090)
    for outside in ("10.0.0.1", "169.254.169.254", "0.0.0.0", "::", "192.168.1.1"):
        assert not policy.allows_address(outside, 80), outside
    assert not policy.allows_address("::ffff:10.0.0.1", 80)  # mapped IPv4 is IPv4
    assert policy.allows_address("::ffff:127.0.0.1", 80)
    assert not policy.allows_name("localhost", 80)  # a name only by its addresses


def test_ports_and_names() -> None:
    policy = OutboundPolicy.parse(["10.0.0.0/8:9090", "hooks.example"])
    assert policy.allows_address("10.2.3.4", 9090) and not policy.allows_address("10.2.3.4", 80)
    assert policy.allows_name("HOOKS.example.", 443) and not policy.allows_name("x.example", 443)
    assert policy.refusal("http://10.2.3.4:9090/") is None
    assert "10.2.3.4:80 is not allowed" in (policy.refusal("http://10.2.3.4/") or "")
    assert policy.refusal("https://anything.example/") is None  # the resolver decides


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/x?token=abc", "https://hooks.example/x?token=***"),
        ("https://u:pw@hooks.example/x", "https://***@hooks.example/x"),
        ("http://h/x?a=1&b=&c=3#frag", "http://h/x?a=***&b=***&c=***#***"),
        ("http://h/x?justasecret", "http://h/x?justasecret=***"),
        ("http://h:9090/api", "http://h:9090/api"),
    ],
)
def test_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
