"""The desired state as per-gateway records: the rules between gateways are checked through
the bind index, as `Config` checks them over every gateway, and say which field is at fault."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.desired import Desired, Record
from controller.errors import InvalidInput
from controller.model import Config, Gateway


def gateway(port: int, hosts: tuple[str, ...] = (), mode: str = "http") -> Gateway:
    data: dict[str, Any] = {"bind": f"127.0.0.1:{port}", "virtual_hosts": hosts, "mode": mode}
    return Gateway.model_validate(data)


def desired(**gateways: Gateway) -> Desired:
    return Desired.of({n: Record(g, 1) for n, g in gateways.items()}, 1)


def test_a_write_replaces_one_record_and_moves_the_revision() -> None:
    state = desired(a=gateway(1), b=gateway(2))
    after = state.with_gateway("a", gateway(3), 7)
    assert after.records["a"] == Record(gateway(3), 7)
    assert after.records["b"] is state.records["b"]
    assert after.revision == 7 and state.revision == 1
    gone = after.with_gateway("b", None, 8)
    assert list(gone.gateways) == ["a"] and gone.revision == 8


@pytest.mark.parametrize(
    ("other", "field", "words"),
    [
        (gateway(1), "gateways.b.bind", "both bind"),
        (gateway(1, mode="tcp"), "gateways.b.bind", "both bind"),
        (gateway(1, ("a.test",)), "gateways.b.virtual_hosts", "is in gateways"),
    ],
)
def test_sharing_a_bind_is_checked_against_that_bind_only(
    other: Gateway, field: str, words: str
) -> None:
    state = desired(a=gateway(1, ("a.test",)), c=gateway(2))
    with pytest.raises(InvalidInput) as refused:
        state.with_gateway("b", other, 2)
    assert refused.value.problems[0]["field"] == field
    assert words in refused.value.message
    state.check("b", gateway(1, ("b.test",)))  # distinct hosts on both: allowed
    shared = state.with_gateway("b", gateway(1, ("b.test",)), 2)
    assert [s.name for s in shared.binds.on(gateway(1).bind)] == ["a", "b"]


def test_a_gateway_moving_off_a_bind_frees_it() -> None:
    state = desired(a=gateway(1))
    moved = state.with_gateway("a", gateway(5), 2)
    assert moved.binds.on(gateway(1).bind) == ()
    moved.with_gateway("b", gateway(1), 3)  # no longer taken


def test_pages_in_name_order() -> None:
    state = desired(**{f"g{i:02d}": gateway(100 + i) for i in (5, 1, 3, 2, 4)})
    assert state.after(None, 2) == ["g01", "g02"]
    assert state.after("g02", 2) == ["g03", "g04"]
    assert state.after("g04", 2) == ["g05"]
    assert state.after("g05", 2) == []


BINDS = st.sampled_from([1, 2])
HOSTS = st.lists(st.sampled_from(["x.test", "y.test", "z.test"]), max_size=2, unique=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), BINDS, HOSTS, st.booleans()), max_size=8))
def test_the_index_agrees_with_config_over_any_sequence_of_writes(
    writes: list[tuple[str, int, list[str], bool]],
) -> None:
    """Whatever the order of writes, a write is refused exactly when the whole `Config` would
    refuse the state it makes."""
    state = Desired()
    for revision, (name, port, hosts, delete) in enumerate(writes, 1):
        new = None if delete else gateway(port, tuple(hosts))
        gateways = dict(state.gateways)
        if new is None:
            gateways.pop(name, None)
        else:
            gateways[name] = new
        try:
            Config.model_validate({"gateways": gateways})
            allowed = True
        except ValidationError:
            allowed = False
        try:
            state = state.with_gateway(name, new, revision)
            assert allowed, (name, new, dict(state.gateways))
        except InvalidInput:
            assert not allowed
