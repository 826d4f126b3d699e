"""Command constructors: exact texts, and no argument can inject a second command."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.runtime import commands as c
from controller.runtime.commands import Command, CommandKind
from controller.runtime.errors import InvalidArgument


@pytest.mark.parametrize(
    ("cmd", "text", "kind"),
    [
        (
            c.set_server_addr("be", "s1", "127.0.0.1", 18081),
            "set server be/s1 addr 127.0.0.1 port 18081",
            CommandKind.WRITE,
        ),
        (
            c.set_server_addr("be", "s1", "2001:DB8:0:0::1", 80),
            "set server be/s1 addr 2001:db8::1 port 80",
            CommandKind.WRITE,
        ),
        (
            c.set_server_addr("be", "s1", ipaddress.ip_address("10.0.0.1"), 1),
            "set server be/s1 addr 10.0.0.1 port 1",
            CommandKind.WRITE,
        ),
        (
            c.set_server_state("be", "s1", "drain"),
            "set server be/s1 state drain",
            CommandKind.WRITE,
        ),
        (
            c.set_server_weight("b.e-1", "s_1", 256),
            "set server b.e-1/s_1 weight 256",
            CommandKind.WRITE,
        ),
        (c.set_server_weight("be", "s1", 0), "set server be/s1 weight 0", CommandKind.WRITE),
        (c.show_servers_state(), "show servers state", CommandKind.READ),
        (c.show_servers_state("be"), "show servers state be", CommandKind.READ),
        (c.show_map(), "show map", CommandKind.READ),
        (c.show_map("maps/shop.map"), "show map maps/shop.map", CommandKind.READ),
        (c.show_map("#2", version=3), "show map @3 #2", CommandKind.READ),
        (
            c.prepare_map("/etc/haproxy/maps/a.map"),
            "prepare map /etc/haproxy/maps/a.map",
            CommandKind.WRITE,
        ),
        (
            c.add_map_entry("maps/shop.map", 2, "0:4999", "be_blue"),
            "add map @2 maps/shop.map 0:4999 be_blue",
            CommandKind.WRITE,
        ),
        (c.commit_map("maps/shop.map", 2), "commit map @2 maps/shop.map", CommandKind.WRITE),
        (c.clear_map("maps/shop.map"), "clear map maps/shop.map", CommandKind.WRITE),
        (c.clear_map("maps/shop.map", 4), "clear map @4 maps/shop.map", CommandKind.WRITE),
        (c.show_stat(), "show stat -1 -1 -1", CommandKind.READ),
        (c.show_stat(-1, c.STAT_BACKEND, -1), "show stat -1 2 -1", CommandKind.READ),
        (c.show_stat(3, 6, 1, typed=True), "show stat 3 6 1 typed", CommandKind.READ),
        (c.show_proxy_stat("be", c.STAT_SERVER), "show stat be 4 -1", CommandKind.READ),
        (c.show_info(), "show info", CommandKind.READ),
        (c.show_backend(), "show backend", CommandKind.READ),
        (c.show_proc(), "show proc", CommandKind.MASTER),
        (c.reload(), "reload", CommandKind.MASTER),
    ],
)
def test_constructors_build_exact_text(cmd: Command, text: str, kind: CommandKind) -> None:
    assert cmd.text == text
    assert cmd.kind is kind
    assert cmd.idempotent is (kind is CommandKind.READ)


BAD_TOKENS = [
    "be;shutdown sessions",
    "be\nset server x/y state maint",
    "be\rx",
    "be\\x",
    "be x",
    "be\tx",
    "be\x00",
    "bé",
    "be\u2028x",
    "",
    "a" * 300,
    "be#1",
    "@1",
]

# (field, builder taking the bad value for that field, None is a valid choice there)
Builder = Callable[[Any], Command]
STRING_FIELDS: list[tuple[str, Builder, bool]] = [
    ("backend", lambda v: c.set_server_addr(v, "s1", "127.0.0.1", 80), False),
    ("server", lambda v: c.set_server_addr("be", v, "127.0.0.1", 80), False),
    ("ip", lambda v: c.set_server_addr("be", "s1", v, 80), False),
    ("backend", lambda v: c.set_server_state(v, "s1", "ready"), False),
    ("server", lambda v: c.set_server_state("be", v, "ready"), False),
    ("state", lambda v: c.set_server_state("be", "s1", v), False),
    ("backend", lambda v: c.set_server_weight(v, "s1", 1), False),
    ("server", lambda v: c.set_server_weight("be", v, 1), False),
    ("backend", lambda v: c.show_servers_state(v), True),
    ("ref", lambda v: c.show_map(v), True),
    ("ref", lambda v: c.prepare_map(v), False),
    ("ref", lambda v: c.add_map_entry(v, 1, "k", "v"), False),
    ("key", lambda v: c.add_map_entry("m.map", 1, v, "v"), False),
    ("value", lambda v: c.add_map_entry("m.map", 1, "k", v), False),
    ("ref", lambda v: c.commit_map(v, 1), False),
    ("ref", lambda v: c.clear_map(v), False),
    ("proxy", lambda v: c.show_proxy_stat(v), False),
]


@pytest.mark.parametrize("bad", BAD_TOKENS)
@pytest.mark.parametrize(("field", "build", "optional"), STRING_FIELDS)
def test_every_string_argument_refuses_unsafe_text(
    field: str, build: Builder, optional: bool, bad: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        build(bad)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("field", "build", "bad"),
    [
        (field, build, bad)
        for field, build, optional in STRING_FIELDS
        for bad in (None, 1, b"be", ["be"])
        if not (bad is None and optional)
    ],
)
def test_string_arguments_refuse_other_types(field: str, build: Builder, bad: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        build(bad)
    assert info.value.field == field


def test_optional_arguments() -> None:
    assert c.show_servers_state(None).text == "show servers state"
    assert c.show_map(None).text == "show map"
    assert c.clear_map("m.map", None).text == "clear map m.map"


IntBuilder = Callable[[Any], Command]
# (field, builder, out-of-range values, None is a valid choice there)
INT_FIELDS: list[tuple[str, IntBuilder, list[object], bool]] = [
    ("port", lambda v: c.set_server_addr("be", "s1", "127.0.0.1", v), [0, 65536, -1], False),
    ("weight", lambda v: c.set_server_weight("be", "s1", v), [-1, 257, 10**6], False),
    ("version", lambda v: c.add_map_entry("m.map", v, "k", "v"), [-1, 2**31], False),
    ("version", lambda v: c.commit_map("m.map", v), [-1], False),
    ("version", lambda v: c.clear_map("m.map", v), [-1], True),
    ("version", lambda v: c.show_map("m.map", v), [-1], True),
    ("proxy_id", lambda v: c.show_stat(v), [0, -2, 2**31], False),
    ("types", lambda v: c.show_stat(-1, v), [0, 8, -2], False),
    ("server_id", lambda v: c.show_stat(-1, -1, v), [0, -2], False),
    ("types", lambda v: c.show_proxy_stat("be", v), [0, 8], False),
]


@pytest.mark.parametrize(("field", "build", "out_of_range", "none_ok"), INT_FIELDS)
def test_integer_arguments_are_range_and_type_checked(
    field: str, build: IntBuilder, out_of_range: list[object], none_ok: bool
) -> None:
    for bad in [*out_of_range, True, "1", 1.0, *([] if none_ok else [None])]:
        with pytest.raises(InvalidArgument) as info:
            build(bad)
        assert info.value.field == field, bad


@pytest.mark.parametrize(
    "ip", ["1.2.3", "1.2.3.4.5", "01.2.3.4", "fe80::1%eth0", "fe80::1%a;b", "localhost", " 1.2.3.4"]
)
def test_ip_must_be_a_plain_literal(ip: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        c.set_server_addr("be", "s1", ip, 80)
    assert info.value.field == "ip"


def test_map_ranges_and_ids_are_accepted() -> None:
    assert c.add_map_entry("#12", 0, "5000:9999", "be2").text == "add map @0 #12 5000:9999 be2"
    with pytest.raises(InvalidArgument):
        c.show_map(None, version=1)


def test_typed_flag_must_be_bool() -> None:
    with pytest.raises(InvalidArgument) as info:
        c.show_stat(typed="yes")  # type: ignore[arg-type]
    assert info.value.field == "typed"


def test_commands_cannot_be_built_directly() -> None:
    with pytest.raises(TypeError):
        Command("show info", CommandKind.READ)
    cmd = c.show_info()
    with pytest.raises(InvalidArgument):
        dataclasses.replace(cmd, text="show info; shutdown sessions")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmd.text = "x"  # type: ignore[misc]


# ---- property tests ---------------------------------------------------------

FORBIDDEN = (";", "\n", "\r", "\\", "\x00")
any_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abAB09_.:-/#@; \n\\", max_size=20),
    st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
)


def _check(build: Callable[[], Command], tokens: int) -> None:
    try:
        cmd = build()
    except InvalidArgument:
        return
    assert not any(ch in cmd.text for ch in FORBIDDEN)
    assert cmd.text.isascii()
    assert len(cmd.text.split(" ")) == tokens
    assert all(cmd.text.split(" "))


@given(any_text, any_text, any_text, st.integers(-5, 70000))
def test_set_server_addr_never_injects(b: str, s: str, ip: str, port: int) -> None:
    _check(lambda: c.set_server_addr(b, s, ip, port), 7)


@given(any_text, any_text, any_text)
def test_set_server_state_never_injects(b: str, s: str, state: str) -> None:
    _check(lambda: c.set_server_state(b, s, state), 5)


@given(any_text, any_text, st.integers(-5, 300))
def test_set_server_weight_never_injects(b: str, s: str, weight: int) -> None:
    _check(lambda: c.set_server_weight(b, s, weight), 5)


@given(any_text, st.integers(-2, 10), any_text, any_text)
def test_map_commands_never_inject(ref: str, version: int, key: str, value: str) -> None:
    _check(lambda: c.add_map_entry(ref, version, key, value), 6)
    _check(lambda: c.prepare_map(ref), 3)
    _check(lambda: c.commit_map(ref, version), 4)
    _check(lambda: c.clear_map(ref), 3)
    _check(lambda: c.show_map(ref), 3)
    _check(lambda: c.show_servers_state(ref), 4)


@given(any_text, st.integers(-3, 9))
def test_show_proxy_stat_never_injects(proxy: str, types: int) -> None:
    _check(lambda: c.show_proxy_stat(proxy, types), 5)
