"""Runtime commands of instance health: exact texts, refused arguments."""

from __future__ import annotations

from typing import Any

import pytest

from controller.runtime import commands as c
from controller.runtime.commands import CommandKind
from controller.runtime.errors import InvalidArgument


def test_texts() -> None:
    assert c.set_server_health("be", "s1", "up").text == "set server be/s1 health up"
    assert c.set_server_health("be", "s1", "down").text == "set server be/s1 health down"
    assert c.enable_health("be", "s1").text == "enable health be/s1"
    assert c.disable_health("be", "s1").text == "disable health be/s1"
    assert c.set_server_maxconn("be", "s1", 0).text == "set maxconn server be/s1 0"
    assert c.set_server_maxconn("be", "s1", 100).kind is CommandKind.WRITE


@pytest.mark.parametrize("health", ["UP", "ready", "up;show info", "up\n", "", None, 1])
def test_health_states_are_a_whitelist(health: Any) -> None:
    with pytest.raises(InvalidArgument):
        c.set_server_health("be", "s1", health)


@pytest.mark.parametrize("value", [-1, 1_000_001, True, "5", 2.0])
def test_maxconn_is_a_bounded_integer(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        c.set_server_maxconn("be", "s1", value)


@pytest.mark.parametrize("name", ["s1;show info", "s 1", "s1\n", "", "s/1"])
def test_names_cannot_inject(name: str) -> None:
    for build in (c.enable_health, c.disable_health):
        with pytest.raises(InvalidArgument):
            build("be", name)
    with pytest.raises(InvalidArgument):
        c.set_server_health(name, "s1", "up")
