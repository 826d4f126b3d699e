"""The structural check of an adopt (pure): HAProxy's file and routes maps against the store."""

from __future__ import annotations

from typing import Any

from controller.adopt import Structure, adoptable, file_pools
from controller.candidates import Candidates
from controller.compile import routes_map_ref
from controller.hostplan import plan_all
from controller.model import Gateway
from controller.render import RenderSettings, SectionCache, read_running

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
MAPS = "/x/maps"


def gateway(port: int, routes: int = 2, instances: int = 3, **route: Any) -> Gateway:
    return Gateway.model_validate(
        {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                f"r{r}": {
                    "instances": [f"127.2.{r}.{i}:8080" for i in range(1, instances + 1)],
                    **route,
                }
                for r in range(routes)
            },
        }
    )


DESIRED = {"a": gateway(8001), "b": gateway(8002, routes=3, instances=20)}


def running_file(desired: dict[str, Gateway]) -> tuple[str, dict[str, Any]]:
    """The file and maps a start of HAProxy on `desired` writes."""
    plans = plan_all(desired, {}, MAPS, SETTINGS, SectionCache(), None, {})
    text, maps = Candidates(SETTINGS).render(plans)
    return text, maps


def structure(desired: dict[str, Gateway]) -> Structure:
    text, maps = running_file(desired)
    routes = {name: tuple(maps[routes_map_ref(name, MAPS)]) for name in desired}
    return Structure(read_running(text), file_pools(text), routes)


def test_the_pools_are_read_from_the_file_without_its_slots() -> None:
    text, _ = running_file(DESIRED)
    plans = plan_all(DESIRED, {}, MAPS, SETTINGS, SectionCache(), None, {})
    expected = {
        plan.name: {i: b.slots for i, b in enumerate(plan.section.layout.backends, 1)}
        for plan in plans
        if plan.section is not None
    }
    assert file_pools(text) == expected
    assert expected["b"][1] > expected["a"][1]  # 20 instances take more slots than 3


def test_a_haproxy_running_the_stored_structure_is_adopted_with_each_section() -> None:
    adopted = adoptable(DESIRED, structure(DESIRED), MAPS, SETTINGS, SectionCache())
    assert isinstance(adopted, dict)
    running = structure(DESIRED).running
    assert running is not None
    assert {name: s.fingerprint for name, s in adopted.items()} == dict(running.sections)


def test_weights_and_instances_that_fit_are_no_structural_change() -> None:
    """What runtime steps change (weights, instances within the slots) adopts all the same:
    the visits after ready apply it."""
    changed = {**DESIRED, "a": gateway(8001, instances=4, weight="50%")}
    assert isinstance(adoptable(changed, structure(DESIRED), MAPS, SETTINGS, SectionCache()), dict)


def test_a_structure_that_differs_is_not_adopted_and_says_why() -> None:
    found = structure(DESIRED)
    cases = {
        "the structure of a differs": {**DESIRED, "a": gateway(8009)},
        "its gateways are not the stored ones": {"a": DESIRED["a"]},
        "a has virtual hosts or TLS": {
            **DESIRED,
            "a": DESIRED["a"].model_copy(update={"virtual_hosts": ("shop.example",)}),
        },
    }
    for reason, desired in cases.items():
        assert adoptable(desired, found, MAPS, SETTINGS, SectionCache()) == reason
    other = RenderSettings(admin_socket="/x/admin.sock", hard_stop_after="5s")
    assert adoptable(DESIRED, found, MAPS, other, SectionCache()) == (
        "the controller's settings differ"
    )
    assert adoptable(DESIRED, Structure(None, {}, {}), MAPS, SETTINGS, SectionCache()) == (
        "HAProxy runs no configuration of ours"
    )


def test_slots_the_file_lacks_are_a_structural_change() -> None:
    found = structure(DESIRED)
    fewer = {**found.pools, "b": {i: 2 for i in found.pools["b"]}}
    reason = adoptable(
        DESIRED, Structure(found.running, fewer, found.routes), MAPS, SETTINGS, SectionCache()
    )
    assert reason == "the structure of b differs"
