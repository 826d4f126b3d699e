"""Issue 9's acceptance property: no string at any field of the model can wedge, leak or inject.

Each example takes a valid two-gateway state and puts arbitrary Unicode, control characters
(\\n \\r \\0 \\t), HAProxy metacharacters (`;` `#` `\\` quotes spaces `%[` `$` `{}` `<>`) or
almost-valid values into one or two fields: gateway and route names, bind, mode, balance,
sticky, virtual hosts, weights, strengths, instances, conditions, rewrite paths. Then:

- refused: every problem names a mutated field, or the object around it for rules across
  fields (weights that must sum to 100 %, a bind shared by two gateways); a value its own
  validator refuses must be refused naming exactly its field;
- accepted: the state renders, a real `haproxy -c` accepts it, and its runtime state (slot
  addresses, every map) is applied to a running HAProxy by the planned Runtime API commands
  and read back unchanged (`show servers state`, `show map`): planning again finds nothing
  to do. Raw HAProxy ACLs (`< ... >`) are passed through, so for them `haproxy -c` is the
  validator: refusing one there is allowed.

The running HAProxy is started once (by the product's own engine) with the base state; the
round trip uses the example's state with its gateways renamed to the base names, because
proxies and maps only exist at runtime once a configuration names them. Gateway names are
covered by validation and `haproxy -c` of the example's own configuration.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.compile import parse_pool_backend
from controller.conditions import parse_condition, raw_acls
from controller.engine import Engine
from controller.errors import InvalidInput
from controller.hosts import group_of_ref, parse_group_backend, value_gateway
from controller.model import (
    NAME_PATTERN,
    Config,
    check_balance,
    check_condition,
    check_host,
    check_name,
    check_rewrite_path,
    parse_address,
    parse_percent,
    validation_problems,
)
from controller.plan import Observed, Plan, ReloadReason, plan_changes, render_plan
from controller.process import HAProxyProcess, InvalidConfig, StatePaths
from controller.render import RenderSettings, Running
from controller.runtime.client import RuntimeClient
from controller.runtime.parse import parse_prepared_version
from controller.store import FileStore
from tests.support.ports import free_port

pytestmark = pytest.mark.haproxy

EXAMPLES = int(os.environ.get("WB_PROPERTY_EXAMPLES", "2000"))
NOTHING = Observed(running=None, backends={}, maps={})


def base_state(port: int) -> dict[str, Any]:
    """Every kind of field in use: shared bind, hosts, sticky, conditions, rewrites, IPv6."""
    bind = f"127.0.0.1:{port}"
    return {
        "gateways": {
            "shop": {
                "bind": bind,
                "balance": "roundrobin",
                "sticky": "route",
                "virtual_hosts": ["shop.example", "*.shop.test"],
                "routes": {
                    "stable": {
                        "weight": "90%",
                        "balance": "leastconn",
                        "instances": ["127.0.0.1:9001", "[::1]:9002"],
                    },
                    "canary": {
                        "condition": "has cookie beta",
                        "condition_strength": "50%",
                        "instances": ["127.0.0.2:9101"],
                        "rewrites": [{"path": "/v2", "condition": "path begins /api"}],
                    },
                },
            },
            "other": {
                "bind": bind,
                "sticky": "route",
                "virtual_hosts": ["other.example"],
                "routes": {
                    "blue": {"condition": "user-agent == Firefox", "instances": ["127.0.0.3:9201"]}
                },
            },
        }
    }


BASE_NAMES = ("shop", "other")


# ---- what a field may be given ----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A field of the state: `path` from the root; `key` when the value is a dict key."""

    path: tuple[str | int, ...]
    kind: str
    key: bool = False
    optional: bool = False
    """None is a valid value (the field is absent)."""

    def field(self, value: object, renames: dict[tuple[str | int, ...], object]) -> str:
        """The field's name as errors give it, after the keys `renames` changed."""
        parts: list[object] = list(self.path)
        for at, name in renames.items():
            if tuple(parts[: len(at)]) == at:
                parts[len(at) - 1] = name
        if self.key:
            parts[-1] = value
        return ".".join(str(p) for p in parts)


def _fields(mutations: list[tuple[Target, Any]]) -> list[tuple[Target, Any, str]]:
    renames = {t.path: v for t, v in mutations if t.key}
    return [(t, v, t.field(v, renames)) for t, v in mutations]


R = ("gateways", "shop", "routes")
TARGETS = (
    Target(("gateways", "shop"), "name", key=True),
    Target((*R, "stable"), "name", key=True),
    Target(("gateways", "shop", "bind"), "bind"),
    Target(("gateways", "shop", "mode"), "mode"),
    Target(("gateways", "shop", "balance"), "balance", optional=True),
    Target(("gateways", "shop", "sticky"), "sticky"),
    Target(("gateways", "shop", "virtual_hosts", 0), "host"),
    Target(("gateways", "other", "virtual_hosts", 0), "host"),
    Target((*R, "stable", "weight"), "percent", optional=True),
    Target((*R, "canary", "condition_strength"), "percent", optional=True),
    Target((*R, "stable", "instances", 1), "instance"),
    Target((*R, "stable", "balance"), "balance", optional=True),
    Target((*R, "canary", "condition"), "condition", optional=True),
    Target((*R, "canary", "rewrites", 0, "path"), "path"),
    Target((*R, "canary", "rewrites", 0, "condition"), "condition"),
    Target(("gateways", "other", "routes", "blue", "condition"), "condition", optional=True),
)


def _literal(*allowed: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"not one of {allowed}")
        return value

    return check


OWN_CHECK: dict[str, Callable[[Any], Any]] = {
    "name": check_name,
    "bind": lambda v: parse_address(v, wildcard=True),
    "instance": parse_address,
    "mode": _literal("http", "tcp"),
    "sticky": _literal("none", "route", "instance"),
    "balance": check_balance,
    "host": check_host,
    "percent": parse_percent,
    "condition": check_condition,
    "path": check_rewrite_path,
}
"""The validator each kind of field has on its own (cross-field rules come on top)."""


def _own_refuses(target: Target, value: Any) -> bool:
    if value is None and target.optional:
        return False
    try:
        OWN_CHECK[target.kind](value)
    except ValueError:
        return True
    return False


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=16)
TOKEN = st.from_regex(r"[A-Za-z0-9!%&*+.^_`|~-]{1,12}", fullmatch=True)
SAFE_RAW = (
    "src 127.0.0.0/8",
    "req.hdr(x-beta) -m found",
    "path_reg '^/api/[0-9]+$'",
    "req.hdr(x),lower -m str abc",
    "hdr_cnt(x-a) gt 1",
    "dst_port 443",
)
UNSAFE_RAW = (
    "req.hdr(x) -m ip -f /etc/passwd",
    "env(HOME) -m found",
    "req.hdr(x),map(/etc/hosts) -m found",
    "lua.f -m found",
    "src,debug -m found",
)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _conditions() -> st.SearchStrategy[str]:
    atoms = st.one_of(
        st.sampled_from(["Chrome", "Firefox", "Safari", "Edge", "IE", "true", "false"]),
        PRINTABLE.map(lambda v: f"user-agent == {_quoted(v)}"),
        PRINTABLE.map(lambda v: f"path has {_quoted(v)}"),
        PRINTABLE.map(lambda v: f"path begins {_quoted(v)}"),
        TOKEN.map(lambda n: f"has cookie {n}"),
        TOKEN.map(lambda n: f"misses header {n}"),
        st.tuples(TOKEN, PRINTABLE).map(lambda t: f"header {t[0]} has {_quoted(t[1])}"),
        st.tuples(TOKEN, PRINTABLE).map(lambda t: f"cookie {t[0]} misses {_quoted(t[1])}"),
        st.tuples(TOKEN, PRINTABLE).map(lambda t: f"param {t[0]} == {_quoted(t[1])}"),
        st.from_regex(r"[a-z0-9._-]{1,20}", fullmatch=True).map(lambda h: f"host == {h}"),
        st.sampled_from(["source in 127.0.0.0/8", "src not in ::1", "source in 10.1.0.0/16"]),
        st.sampled_from(SAFE_RAW + UNSAFE_RAW).map(lambda r: f"< {r} >"),
    )
    return st.recursive(
        atoms,
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) and ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} or {t[1]}"),
            inner.map(lambda c: f"not ({c})"),
        ),
        max_leaves=4,
    )


PORTS = st.integers(min_value=1, max_value=65535)
VALID: dict[str, st.SearchStrategy[Any]] = {
    "name": st.from_regex(NAME_PATTERN, fullmatch=True),
    "bind": st.tuples(st.sampled_from(["127.0.0.1:{}", "[::1]:{}", "*:{}"]), PORTS).map(
        lambda t: t[0].format(t[1])
    ),
    "instance": st.tuples(
        st.sampled_from(["127.0.0.{}:{}", "127.1.2.{}:{}", "[::1]:{1}"]),
        st.integers(min_value=1, max_value=254),
        PORTS,
    ).map(lambda t: t[0].format(t[1], t[2])),
    "mode": st.sampled_from(["http", "tcp"]),
    "sticky": st.sampled_from(["none", "route", "instance"]),
    "balance": st.one_of(
        st.sampled_from(["roundrobin", "static-rr", "leastconn", "first", "random", "source"]),
        st.sampled_from(["uri"]),
        st.from_regex(r"url_param [A-Za-z0-9_.-]{1,12}", fullmatch=True),
        st.from_regex(r"hdr\([A-Za-z0-9_-]{1,12}\)", fullmatch=True),
    ),
    "host": st.from_regex(
        r"(\*\.)?[a-z0-9][a-z0-9-]{0,8}(\.[a-z0-9][a-z0-9-]{0,8}){0,2}", fullmatch=True
    ),
    "percent": st.one_of(
        st.integers(min_value=0, max_value=100),
        st.integers(min_value=0, max_value=10000).map(lambda p: f"{p / 100:g}%"),
        st.integers(min_value=0, max_value=1000).map(lambda p: p / 10),
    ),
    "condition": _conditions(),
    "path": st.from_regex(r"/[A-Za-z0-9._~!$&()*+,;=:@/-]{0,20}", fullmatch=True),
}

PIECES = [
    "\n", "\r", "\x00", "\t", "\x0b", "\u2028", "\x85", " ", ";", "#", "\\", "'", '"', "%[",
    "%[env(HOME)]", "$", "${HOME}", '"$HOME"', "{", "}", "<", ">", "%", "&&", "|", "!", ",",
    "８", "٣", "é", "\ufeff", "\u200b", "\u212a", "-f /etc/passwd", "\nbackend x",
]  # fmt: skip
NASTY = [
    "", " ", "evil\n", "\nevil", "a\x00b", "1e-99999999", "NaN", "+5", "5 %", "５０%", "0x10",
    "[fe80::1%eth0]:80", '[::1%"$HOME"]:80', "127.0.0.1:８０", "roundrobin;", "hdr(x)\n",
    "url_param id\n", "http\n", "route\n", "shop.example\n", "/a b", "/%[env(X)]", "< env(X) >",
    "< req.hdr(x) -f /etc/passwd >", "user-agent == 'x' ; y", "has cookie a\nb", "\\", "'",
]  # fmt: skip
METACHARS = st.text(
    st.sampled_from(list(";#\\'\" \t\n\r\x00%[]${}<>&|!()=,:/@-_.*~+`^ab09")), max_size=24
)


def _near(kind: str) -> st.SearchStrategy[str]:
    """A valid value with one hostile piece inserted: what slips past a sloppy anchor."""

    def insert(valid: Any, piece: str, where: int) -> str:
        text = str(valid)
        at = (0, len(text), len(text) // 2)[where]
        return text[:at] + piece + text[at:]

    return st.builds(insert, VALID[kind], st.sampled_from(PIECES), st.integers(0, 2))


def values_for(target: Target) -> st.SearchStrategy[Any]:
    kind = target.kind
    valid, near = VALID[kind], _near(kind)
    hostile = [st.text(max_size=24), METACHARS, st.sampled_from(NASTY)]
    if not target.key:  # JSON keys are strings; values may be anything
        hostile.append(
            st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(), st.just([]))
        )
    # mostly valid values, so that many states reach `haproxy -c` and the round trip
    choices = [valid, valid, valid, valid, near, near, *hostile]
    return st.integers(0, len(choices) - 1).flatmap(choices.__getitem__)


MUTATIONS = st.lists(
    st.sampled_from(TARGETS).flatmap(lambda t: st.tuples(st.just(t), values_for(t))),
    min_size=1,
    max_size=2,
    unique_by=lambda m: m[0],
)


def mutate(state: dict[str, Any], mutations: list[tuple[Target, Any]]) -> dict[str, Any]:
    data = copy.deepcopy(state)
    # keys last, deepest first: a renamed gateway must not hide the path to its routes
    for target, value in sorted(mutations, key=lambda m: (m[0].key, -len(m[0].path))):
        parent: Any = data
        for part in target.path[:-1]:
            parent = parent[part]
        last = target.path[-1]
        if target.key:
            assert isinstance(parent, dict)
            items = [(value if k == last else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
        else:
            parent[last] = value
    return data


# ---- the running HAProxy ----------------------------------------------------------------


@dataclass
class Harness:
    runner: asyncio.Runner
    engine: Engine
    state: dict[str, Any]
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def settings(self) -> RenderSettings:
        return self.engine.settings

    @property
    def map_dir(self) -> str:
        return self.engine.map_dir

    def plan(self, config: Config, observed: Observed = NOTHING) -> Plan:
        return plan_changes(config, observed, self.map_dir, self.settings)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    root = Path(tempfile.mkdtemp(prefix="wb-p-", dir="/tmp"))
    paths = StatePaths(root)
    paths.map_dir.mkdir()
    process = HAProxyProcess(paths)
    engine = Engine(
        FileStore(paths.gateways),
        process,
        RuntimeClient(str(paths.admin_socket)),
        RenderSettings(str(paths.admin_socket)),
    )
    state = base_state(free_port())
    runner = asyncio.Runner()
    try:
        runner.run(engine.start(Config.model_validate(state)))
        yield Harness(runner, engine, state)
    finally:
        runner.run(engine.runtime.close())
        runner.run(process.stop())
        runner.close()
        shutil.rmtree(root, ignore_errors=True)


def _on_path(problem: str, fields: list[str]) -> bool:
    """The problem names a mutated field, something inside it, or an object around it."""
    if problem == "(body)":
        return True  # a rule across gateways (shared bind, hosts, modes)
    return any(
        problem == f or f.startswith(problem + ".") or problem.startswith(f + ".") for f in fields
    )


def _assert_refusal(problems: list[dict[str, str]], mutations: list[tuple[Target, Any]]) -> None:
    fields = _fields(mutations)
    named = [p["field"] for p in problems]
    assert named, "a refusal without problems"
    assert all(_on_path(p, [f for _, _, f in fields]) for p in named), (named, fields)
    for target, value, name in fields:
        if _own_refuses(target, value):
            assert name in named, (name, named)


def _renamed(config: Config) -> Config:
    """The same state with its gateways named as in the running HAProxy."""
    gateways = dict(zip(BASE_NAMES, config.gateways.values(), strict=False))
    return Config.model_validate({"gateways": {n: g.model_dump() for n, g in gateways.items()}})


def _observe(harness: Harness, config: Config, running: Running) -> Observed:
    """HAProxy's state of `config`'s gateways, as if it ran `config`'s structure."""
    observed = harness.runner.run(harness.engine.observer.everything(running))

    def ours(name: str | None) -> bool:
        return name in config.gateways

    backends = {
        b: s
        for b, s in observed.backends.items()
        if ours((parse_pool_backend(b) or ("",))[0]) or parse_group_backend(b)
    }
    maps = {r: e for r, e in observed.maps.items() if ours(Path(r).name.split(".", 1)[0])}
    for ref, entries in observed.maps.items():  # a bind group's: the entries of ours
        if group_of_ref(ref):
            maps[ref] = tuple((k, v) for k, v in entries if ours(_owner(ref, k, v)))
    return replace(observed, running=running, backends=backends, maps=maps)


def _new_group(reason: ReloadReason) -> bool:
    return reason.kind == "map-missing" and group_of_ref(reason.detail) is not None


def _owner(ref: str, key: str, value: str) -> str:
    found = group_of_ref(ref)
    return key.split("/", 1)[0] if found and found[1] == "routes" else value_gateway(value)


async def _apply(harness: Harness, plan: Plan) -> None:
    """The plan's commands as built, in the engine's order: fill, swap maps, edit the shared
    maps' entries, empty."""
    runtime = harness.engine.runtime
    await runtime.execute_many([step.command() for step in plan.fill])
    replies = await runtime.execute_many([swap.prepare() for swap in plan.map_swaps])
    commands = []
    for swap, reply in zip(plan.map_swaps, replies, strict=True):
        commands += swap.commands(parse_prepared_version(reply))
    await runtime.execute_many(commands)
    await runtime.execute_many(list(plan.map_edits))
    await runtime.execute_many([step.command() for step in plan.empty])


def _round_trip(harness: Harness, config: Config) -> None:
    renamed = _renamed(config)
    running = harness.plan(renamed).running
    plan = harness.plan(renamed, _observe(harness, renamed, running))
    if plan.needs_reload and all(_new_group(r) for r in plan.reload_reasons):
        # hosts on a bind HAProxy does not run: their bind group's maps are created by a
        # reload (as the engine does), which this round trip through the socket cannot show
        harness.counts["a bind group HAProxy does not run (a reload)"] += 1
        return
    assert not plan.needs_reload, plan.reload_reasons
    harness.runner.run(_apply(harness, plan))
    after = _observe(harness, renamed, running)
    for ref, entries in plan.maps.items():
        assert sorted(after.maps[ref]) == sorted(entries), ref
    again = harness.plan(renamed, after)
    assert again.is_empty, again.describe()


def _check(harness: Harness, mutations: list[tuple[Target, Any]]) -> None:
    harness.counts["examples"] += 1
    try:
        config = Config.model_validate(mutate(harness.state, mutations))
        plan = harness.plan(config)  # raises for a raw ACL the policy refuses
    except ValidationError as exc:
        _assert_refusal(validation_problems(exc), mutations)
        harness.counts["refused"] += 1
        return
    except InvalidInput as exc:
        _assert_refusal(exc.problems, mutations)
        harness.counts["refused by the ACL policy"] += 1
        return
    for target, value, name in _fields(mutations):
        assert not _own_refuses(target, value), f"accepted {name}={value!r}"
    text = render_plan(plan, harness.settings)
    try:
        harness.runner.run(harness.engine.process.validate(text, plan.maps))
    except InvalidConfig:
        raw = [
            v for t, v in mutations if t.kind == "condition" and v and raw_acls(parse_condition(v))
        ]
        assert raw, f"haproxy -c refused an accepted state:\n{text}"
        harness.counts["refused by haproxy -c (raw ACL)"] += 1
        return
    _round_trip(harness, config)
    harness.counts["accepted"] += 1
    harness.counts.update(f"accepted {t.kind}" for t, _ in mutations)


def test_any_string_in_any_field_is_refused_by_name_or_round_trips(harness: Harness) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(MUTATIONS)
    def prop(mutations: list[tuple[Target, Any]]) -> None:
        _check(harness, mutations)

    prop()
    counts = harness.counts
    print(dict(counts))  # shown with -s: how the examples split
    assert counts["examples"] >= EXAMPLES
    assert counts["accepted"] >= EXAMPLES // 10
    assert counts["refused"] >= EXAMPLES // 10
    assert counts["refused by the ACL policy"] > 0
