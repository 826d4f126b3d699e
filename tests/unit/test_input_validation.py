"""Every validator of a user string, good and bad values side by side (issue 9, finding 1/10).

A value either passes its validator or is refused with an error naming the field; the
plan and the renderer refuse again whatever slipped past the model (second line of defence).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from controller.cli.run import host_port
from controller.compile import GatewayLayout, GatewayMaps
from controller.conditions import parse_condition
from controller.conditions.policy import UnsafeAcl, check_acl_policy, unsafe_reason
from controller.config_file import ConfigFileError, load_config
from controller.errors import InvalidInput
from controller.model import (
    Address,
    Config,
    Gateway,
    Route,
    acl_policy_problems,
    check_balance,
    check_host,
    check_name,
    check_rewrite_path,
    parse_address,
    parse_percent,
    validation_problems,
)
from controller.plan import Observed, plan_changes
from controller.render import RenderSettings, UnsafeLine, render_section
from controller.runtime.commands import CLI_BUFFER, MapSwap
from controller.runtime.errors import InvalidArgument

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
NOTHING = Observed(running=None, backends={}, maps={})

# the characters that change the meaning of a config line or a Runtime API command
CONTROL = ["\n", "\r", "\x00", "\t", "\x0b", "\x1b", "\u2028", "\x85"]
UNICODE_DIGITS = ["８", "٣", "۳", "߃", "३", "𝟠"]  # full-width, Arabic-Indic, NKo, Devanagari, math


def _refuses(check: Any, value: Any) -> None:
    with pytest.raises(ValueError):
        check(value)


# ---- names ----------------------------------------------------------------------------

GOOD_NAMES = ["a", "0", "stable", "a-b_c", "v2", "a" * 63]
BAD_NAMES = [
    "",
    "A",
    "evil\n",
    "\nevil",
    "ev\nil",
    "a b",
    "a;b",
    "a#b",
    "a.b",
    "a/b",
    "a%b",
    "-a",
    "a-",
    "a" * 64,
    "café",
    "ａ",  # full-width a
    "\u212a",  # Kelvin sign: lower() is an ASCII k
    *(f"a{c}" for c in CONTROL),
    *(f"v{d}" for d in UNICODE_DIGITS),
]


@pytest.mark.parametrize("value", GOOD_NAMES)
def test_name_accepts(value: str) -> None:
    assert check_name(value) == value


@pytest.mark.parametrize("value", BAD_NAMES)
def test_name_refuses(value: str) -> None:
    _refuses(check_name, value)


@pytest.mark.parametrize("value", ["evil\n", "a\x00", "v٣"])
def test_route_name_refused_naming_the_route(value: str) -> None:
    data = {"bind": "127.0.0.1:8080", "routes": {"ok": {}, value: {}}}
    with pytest.raises(ValidationError) as info:
        Gateway.model_validate(data)
    fields = [p["field"] for p in validation_problems(info.value, "gateway")]
    assert fields == [f"gateway.routes.{value}"]


# ---- hosts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.com", "example.com"),
        ("*.example.com", "*.example.com"),
        ("a-b.c0", "a-b.c0"),
        ("localhost", "localhost"),
    ],
)
def test_host_accepts(value: str, expected: str) -> None:
    assert check_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.com\n",
        "example.com.",
        "*.",
        "*example.com",
        "exa mple.com",
        "ex;ample.com",
        "ex'ample.com",
        "\u212a.com",  # would lower() to k.com, past the virtual-host uniqueness check
        "例え.jp",
        "a" * 254,
        ".example.com",
        *(f"example.com{c}" for c in CONTROL),
    ],
)
def test_host_refuses(value: str) -> None:
    _refuses(check_host, value)


def test_host_with_trailing_newline_cannot_bypass_uniqueness() -> None:
    gateways = {
        "a": {"bind": "127.0.0.1:80", "virtual_hosts": ["shop.example"]},
        "b": {"bind": "127.0.0.1:80", "virtual_hosts": ["shop.example\n"]},
    }
    with pytest.raises(ValidationError) as info:
        Config.model_validate({"gateways": gateways})
    assert [p["field"] for p in validation_problems(info.value)] == ["gateways.b.virtual_hosts.0"]


# ---- balance --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["roundrobin", "static-rr", "leastconn", "first", "random", "source", "uri",
     "url_param id", "url_param a.b-c_d", "hdr(x-user)"],
)  # fmt: skip
def test_balance_accepts(value: str) -> None:
    assert check_balance(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "roundrobin\n",
        "url_param id\n",
        "hdr(x)\n",
        "url_param a b",
        "url_param a;b",
        "hdr(x y)",
        "hdr(x)\nbackend evil",
        "roundrobin;",
        " leastconn",
        "leastconn ",
        "random(2)",
        "url_param ",
        "ROUNDROBIN",
        "url_param ｉｄ",
        *(f"leastconn{c}" for c in CONTROL),
    ],
)
def test_balance_refuses(value: str) -> None:
    _refuses(check_balance, value)


# ---- percentages ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "points"),
    [(0, 0), (100, 10000), ("90", 9000), ("90%", 9000), (" 90% ", 9000), ("2.5%", 250),
     ("0.01", 1), ("100.00%", 10000), ("007", 700), (2.5, 250), (90.0, 9000), (33.33, 3333)],
)  # fmt: skip
def test_percent_accepts(value: Any, points: int) -> None:
    assert parse_percent(value) == points


@pytest.mark.parametrize(
    "value",
    [
        "1e-99999999",
        "1e2",
        "1E1",
        "NaN",
        "nan%",
        "inf",
        "+5",
        "-0",
        "5 %",
        "5%%",
        "%5",
        ".5",
        "5.",
        "0x10",
        "1_0",
        "5%\n",
        "5\n",
        "\n5",
        "5\x00",
        "101",
        "100.01",
        "1000",
        "2.555",
        "",
        " ",
        "%",
        1e-5,
        0.1 + 0.2,
        1e16,
        -1,
        101,
        10**100,
        True,
        None,
        [5],
        {"v": 5},
        *(f"{d}%" for d in UNICODE_DIGITS),
        "５０%",
    ],
)
def test_percent_refuses(value: Any) -> None:
    _refuses(parse_percent, value)


# ---- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wildcard", "expected"),
    [
        ("127.0.0.1:80", False, "127.0.0.1:80"),
        ("[::1]:80", False, "[::1]:80"),
        ("[fe80::1]:80", False, "[fe80::1]:80"),
        ("[0:0::1]:65535", False, "[::1]:65535"),
        ("*:8080", True, "0.0.0.0:8080"),
        ("[::]:8080", True, "[::]:8080"),
    ],
)
def test_address_accepts(value: str, wildcard: bool, expected: str) -> None:
    assert str(parse_address(value, wildcard=wildcard)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:80\n",
        "127.0.0.1:80\r",
        "127.0.0.1\n:80",
        "127.0.0.1:８０",
        "127.0.0.1:٨٠",
        "127.0.0.1:+80",
        "127.0.0.1: 80",
        "127.0.0.1:80 ",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:000000080",
        "１２７.0.0.1:80",
        "127.0.0.1\x00:80",
        "localhost:80",
        "[fe80::1%eth0]:80",
        '[::1%"$WEIGHBRIDGE_API_TOKEN"]:80',
        "[::1%25eth0]:80",
        "[::1%]:80",
        "[::1]80",
        "127.0.0.1",
        "*:80",  # an instance needs a concrete address
        "0.0.0.0:80",
    ],
)
def test_instance_address_refuses(value: str) -> None:
    _refuses(parse_address, value)


@pytest.mark.parametrize(
    "value", ['[::1%"$WEIGHBRIDGE_API_TOKEN"]:8080', "[fe80::1%eth0]:8080", "*:8080\n"]
)
def test_bind_refuses_zone_ids_and_newlines(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Gateway.model_validate({"bind": value})
    assert [p["field"] for p in validation_problems(info.value)] == ["bind"]
    assert "$" not in info.value.errors()[0]["msg"].replace(repr(value), "")


def test_address_model_refuses_unvalidated_construction() -> None:
    """`Address` only comes from `parse_address`: a dict is not a host:port string."""
    with pytest.raises(ValidationError):
        Route.model_validate({"instances": [{"ip": "::1%eth0", "port": 80}]})


# ---- rewrite paths --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/", "/a", "/a/b;c=d", "/v2/api(x)", "/$&~@:+,*!"])
def test_rewrite_path_accepts(value: str) -> None:
    assert check_rewrite_path(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "a", "/a\n", "/a\r", "/a\x00", "/a b", "/a'b", '/a"b', "/a%20", "/a#b", "/a\\b",
     "/é", "/%[env(X)]", "/" + "a" * 256, "/a\nbackend x", 5],
)  # fmt: skip
def test_rewrite_path_refuses(value: Any) -> None:
    _refuses(check_rewrite_path, value)


def test_rewrite_path_error_names_the_field() -> None:
    data = {"bind": "127.0.0.1:80", "routes": {"a": {"rewrites": [{"path": "/x\n"}]}}}
    with pytest.raises(ValidationError) as info:
        Gateway.model_validate(data)
    assert [p["field"] for p in validation_problems(info.value)] == ["routes.a.rewrites.0.path"]


def test_pydantic_pattern_dollar_is_end_of_text() -> None:
    """pydantic-core's Rust regex: `$` does not match before a final newline (Python's does).

    The model uses explicit `fullmatch` validators anyway; this pins the engine's behaviour
    for any `Field(pattern=...)` elsewhere (the rollout model's URLs).
    """

    class Probe(BaseModel):
        value: str = Field(pattern=r"^[a-z]+$")

    assert Probe(value="abc").value == "abc"
    for bad in ("abc\n", "abc\r\n", "\nabc", "abc\x00"):
        with pytest.raises(ValidationError):
            Probe(value=bad)


# ---- literal fields -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", "http\n"), ("mode", "HTTP"), ("mode", "tcp "), ("sticky", "route\n"),
     ("sticky", "none\x00")],
)  # fmt: skip
def test_literal_fields_refuse_variants(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Gateway.model_validate({"bind": "127.0.0.1:80", field: value})
    assert [p["field"] for p in validation_problems(info.value)] == [field]


# ---- raw ACL policy -------------------------------------------------------------------

SAFE_ACLS = [
    "src 10.0.0.0/8",
    "req.hdr(x-beta) -m found",
    "path -m beg /debug",  # a pattern, not the debug converter
    "path -m sub env(",  # a literal pattern
    "path_reg '^/api$'",
    "req.ssl_sni -m end .example.com",
    "req.hdr(x),lower -m str abc",
    "nbsrv(wb.shop.b1) gt 0",
    "hdr_cnt(x) -m int gt 2",
]
UNSAFE_ACLS = [
    ("req.hdr(x) -m ip -f /etc/shadow", "-f"),
    ("req.hdr(x) '-f' /etc/shadow", "-f"),
    ("req.hdr(x) -'f' /dev/zero", "-f"),
    ("req.hdr(x) -M -f /etc/passwd", "-M"),
    ("env(WEIGHBRIDGE_API_TOKEN) -m beg a", "environment"),
    ("getenv(X) -m found", "environment"),
    ("req.hdr(x),map(/etc/passwd) -m found", "map"),
    ("req.hdr(x),map_str_int(/etc/passwd,0) -m int gt 0", "map"),
    ("src,map_ip(/etc/hosts) -m found", "map"),
    ("req.hdr(x),MAP_BEG(/x) -m found", "map"),
    ("'req.hdr(x), map(/etc/passwd)' -m found", "map"),
    ("req.hdr(x),jwt_verify(RS256,/etc/ssl/key.pem) -m int 1", "certificate"),
    ("lua.secret -m found", "Lua"),
    ("req.hdr(x),lua.conv -m found", "Lua"),
    ("src,debug -m found", "debug"),
    ("req.hdr(x) -m str %[env(X)]", "%["),
    ("req.hdr(x) -m str ${HOME}", "${"),
    ('req.hdr(x) -m str "$HOME"', "double quotes"),
    ("req.hdr(x) -m str \\x22", "backslash"),
]


@pytest.mark.parametrize("raw", SAFE_ACLS)
def test_policy_allows_request_only_acls(raw: str) -> None:
    assert unsafe_reason(raw) is None


@pytest.mark.parametrize(("raw", "reason"), UNSAFE_ACLS)
def test_policy_refuses_files_environment_and_code(raw: str, reason: str) -> None:
    found = unsafe_reason(raw)
    assert found is not None and reason in found


def test_policy_names_the_condition_field_and_the_flag() -> None:
    config = Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:80",
                    "routes": {
                        "stable": {"weight": 100},
                        "canary": {"condition": "has cookie beta or < env(X) -m found >"},
                        "pinned": {"rewrites": [{"path": "/x", "condition": "<src,debug>"}]},
                    },
                }
            }
        }
    )
    problems = acl_policy_problems(config, allow_unsafe=False)
    assert [p["field"] for p in problems] == [
        "gateways.shop.routes.canary.condition",
        "gateways.shop.routes.pinned.rewrites.0.condition",
    ]
    assert all("--allow-unsafe-acls" in p["message"] for p in problems)
    assert acl_policy_problems(config, allow_unsafe=True) == []
    with pytest.raises(InvalidInput) as info:
        plan_changes(config, NOTHING, "/m", SETTINGS)
    assert info.value.problems == problems
    allowed = RenderSettings(admin_socket="/x/admin.sock", allow_unsafe_acls=True)
    assert plan_changes(config, NOTHING, "/m", allowed).needs_reload


def test_policy_checks_the_parsed_tree() -> None:
    check_acl_policy(parse_condition("< src 10.0.0.0/8 > and has cookie x"))
    with pytest.raises(UnsafeAcl, match="reads a map file"):
        check_acl_policy(parse_condition("not < src,map_ip(/etc/hosts) -m found >"))


def test_config_file_refuses_unsafe_acls_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "weighbridge.yaml"
    path.write_text(
        "gateways:\n  shop:\n    bind: 127.0.0.1:80\n    routes:\n"
        "      a:\n        condition: '< req.hdr(x) -f /etc/shadow >'\n"
    )
    with pytest.raises(ConfigFileError, match=r"gateways\.shop\.routes\.a\.condition"):
        load_config(path)
    assert load_config(path, allow_unsafe_acls=True).gateways["shop"].routes["a"].condition


# ---- the plan and the renderer: a second line of defence ------------------------------

BAD_TOKENS = ["a b", "a\n", "a;b", "a#b", "", "a\\b", "é", "a\x00", "%[x]", "a" * 256]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_map_swap_checks_every_entry_when_built(token: str) -> None:
    with pytest.raises(InvalidArgument) as key:
        MapSwap("/m/shop.map", ((token, "wb.shop.b1"),))
    assert key.value.problems[0]["field"] == "key"
    with pytest.raises(InvalidArgument) as value:
        MapSwap("/m/shop.map", (("0:9999", token),))
    assert value.value.problems[0]["field"] == "value"


@pytest.mark.parametrize("ref", ["/m/a b.map", "/m/a.map\n", "/m/a;b.map", "/m/é.map", "", "@1"])
def test_map_swap_checks_its_map(ref: str) -> None:
    with pytest.raises(InvalidArgument):
        MapSwap(ref, ())


def test_map_swap_builds_its_commands_for_the_version() -> None:
    swap = MapSwap("/m/shop.map", (("0:8999", "wb.shop.b1"), ("9000:9999", "wb.shop.b2")))
    assert swap.prepare().text == "prepare map /m/shop.map"
    assert [c.wire for c in swap.commands(7)] == [
        "add map @7 /m/shop.map <<\n0:8999 wb.shop.b1\n9000:9999 wb.shop.b2\n",
        "commit map @7 /m/shop.map",
    ]
    assert [c.text for c in MapSwap("/m/shop.map", ()).commands(7)] == [
        "commit map @7 /m/shop.map"
    ]
    with pytest.raises(InvalidArgument):
        swap.commands(-1)


def test_a_big_map_swap_splits_its_entries_into_payloads_that_fit_haproxy_s_buffer() -> None:
    entries = tuple((f"{i}:{i}", f"wb.shop.backend-with-a-long-name-{i}") for i in range(2000))
    swap = MapSwap("/m/shop.map", entries)
    adds = swap.commands(3)[:-1]
    assert len(adds) > 1 and swap.command_count == len(adds) + 2
    assert all(len(c.wire) <= CLI_BUFFER // 2 + 64 for c in adds)
    lines = [line for c in adds for line in (c.payload or "").split("\n")]
    assert lines == [f"{key} {value}" for key, value in entries]


def test_plan_refuses_a_route_name_that_bypassed_the_model() -> None:
    """`model_construct` skips validation: the plan still builds and checks every token."""
    route = Route()
    gateway = Gateway.model_construct(
        bind=parse_address("127.0.0.1:80"), mode="http", balance=None, sticky="none",
        virtual_hosts=(), routes={"stable": route.model_copy(update={"weight": 10000}),
                                  "evil\n": route},
    )  # fmt: skip
    config = Config.model_construct(gateways={"shop": gateway})
    with pytest.raises(InvalidInput) as info:
        plan_changes(config, NOTHING, "/m", SETTINGS)
    assert info.value.problems[0]["field"] in ("key", "value", "(configuration)")


def _layout(**changes: Any) -> GatewayLayout:
    gateway = GatewayLayout(
        name="shop",
        key="0",
        bind=Address(ip="127.0.0.1", port=80),
        mode="http",
        sticky="none",
        virtual_hosts=(),
        maps=GatewayMaps(weights="/m/shop.map", routes="/m/shop.routes.map"),
        conditions=(),
        backends=(),
    )
    fields = {f: getattr(gateway, f) for f in GatewayLayout.__dataclass_fields__} | changes
    return GatewayLayout(**fields)


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        # virtual hosts are map entries, not lines: tests/unit/test_hosts.py checks them
        ({"bind": Address(ip="::1\nbackend evil", port=80)}, "line break"),
        ({"bind": Address(ip="::1%eth0\tx", port=80)}, "control or non-ASCII"),
    ],
)
def test_renderer_refuses_a_line_a_value_would_break(changes: dict[str, Any], line: str) -> None:
    layout = _layout(**changes)
    with pytest.raises(UnsafeLine) as info:
        render_section(layout)
    assert line in info.value.problems[0]["message"]
    assert "backend wb.shop._none" in render_section(_layout()).backends  # the same, valid


# ---- the CLI's own host:port ----------------------------------------------------------


@pytest.mark.parametrize("value", ["127.0.0.1:８０", "127.0.0.1:80\n", "127.0.0.1:", ":80"])
def test_cli_host_port_refuses(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        host_port(value)


def test_cli_host_port_accepts() -> None:
    assert host_port("127.0.0.1:9900") == ("127.0.0.1", 9900)
