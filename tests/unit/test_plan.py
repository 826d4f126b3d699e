"""The pure planner: runtime commands when the structure holds, a typed reload when not."""

from __future__ import annotations

from typing import Any

from controller.compile import MIN_SLOTS, SPARE_BACKENDS
from controller.model import Address, Config
from controller.plan import Observed, Plan, SlotState, plan_changes, plan_gateway
from controller.render import RenderSettings
from tests.support.observed import observed_after

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
WEIGHTS = "maps/shop.map"
ROUTES = "maps/shop.routes.map"


def config(
    stable: list[int],
    canary: list[int] | None,
    weights: tuple[str, str] = ("90%", "10%"),
    stable_policy: dict[str, Any] | None = None,
    **extra: dict[str, Any],
) -> Config:
    routes: dict[str, Any] = {
        "stable": {
            "weight": weights[0],
            "instances": [f"127.0.0.1:{p}" for p in stable],
            **(stable_policy or {}),
        }
    }
    if canary is not None:
        routes["canary"] = {"weight": weights[1], "instances": [f"127.0.0.1:{p}" for p in canary]}
    routes |= extra
    return Config.model_validate(
        {"gateways": {"shop": {"bind": "127.0.0.1:8080", "routes": routes}}}
    )


def slots(
    filled: dict[int, int], size: int = MIN_SLOTS, maint: tuple[int, ...] = (), weight: int = 1
) -> list[SlotState]:
    return [
        SlotState(
            name=f"s{i}",
            address=Address(ip="127.0.0.1", port=filled.get(i, 1)),
            serving=i in filled and i not in maint,
            weight=weight,
        )
        for i in range(1, size + 1)
    ]


def plan_for(cfg: Config, observed: Observed) -> Plan:
    return plan_changes(cfg, observed, "maps", SETTINGS)


def applied(cfg: Config) -> Observed:
    """What HAProxy reports after it applied `cfg` from scratch."""
    return observed_after(plan_for(cfg, Observed(running=None, backends={}, maps={})))


STEADY = config([9001, 9002], [9101])


def test_in_sync_means_an_empty_plan() -> None:
    plan = plan_for(STEADY, applied(STEADY))
    assert plan.is_empty and plan.method == "none"
    assert plan.bindings == {"shop": {"stable": "wb.shop.b1", "canary": "wb.shop.b2"}}
    assert plan.maps[WEIGHTS] == (("0:8999", "wb.shop.b1"), ("9000:9999", "wb.shop.b2"))


def test_weight_change_is_one_map_swap() -> None:
    plan = plan_for(config([9001, 9002], [9101], ("95%", "5%")), applied(STEADY))
    assert plan.method == "runtime" and plan.map_updates == (WEIGHTS,)
    assert plan.maps[WEIGHTS] == (("0:9499", "wb.shop.b1"), ("9500:9999", "wb.shop.b2"))
    assert not plan.fill and not plan.empty


def test_added_instance_fills_a_free_slot_and_removed_one_drains() -> None:
    plan = plan_for(config([9002, 9003], [9101]), applied(STEADY))
    assert [c.text for c in plan.fill] == [
        "set server wb.shop.b1/s1 addr 127.0.0.1 port 9003",
        "set server wb.shop.b1/s1 state ready",
        # checked by default: out until it passes its checks (UP at once otherwise)
        "set server wb.shop.b1/s1 health down",
    ]
    assert plan.empty == ()  # s1 was reused for the new instance
    plan = plan_for(config([9002], [9101]), applied(STEADY))
    assert [c.text for c in plan.empty] == ["set server wb.shop.b1/s1 state drain"]
    assert plan.fill == ()
    assert plan.assignment["wb.shop.b1"] == {"s2": Address(ip="127.0.0.1", port=9002)}


def test_instances_keep_their_slots() -> None:
    plan = plan_for(config([9002, 9001, 9004], [9101]), applied(STEADY))
    assert plan.assignment["wb.shop.b1"] == {
        "s1": Address(ip="127.0.0.1", port=9001),
        "s2": Address(ip="127.0.0.1", port=9002),
        "s3": Address(ip="127.0.0.1", port=9004),
    }


def test_a_new_route_takes_a_spare_backend_without_reload() -> None:
    grown = config(
        [9001, 9002], [9101], ("90%", "5%"), dark={"weight": "5%", "instances": ["127.0.0.1:9201"]}
    )
    plan = plan_for(grown, applied(STEADY))
    assert plan.method == "runtime"
    assert plan.bindings["shop"]["dark"] == "wb.shop.b3"
    assert set(plan.map_updates) == {WEIGHTS, ROUTES}
    assert "set server wb.shop.b3/s1 addr 127.0.0.1 port 9201" in plan.describe()


def test_a_deleted_route_frees_its_backend_without_reload() -> None:
    plan = plan_for(config([9001, 9002], None, ("100%", "0%")), applied(STEADY))
    assert plan.method == "runtime"
    assert plan.maps[ROUTES] == (("stable", "wb.shop.b1"),)
    assert [c.text for c in plan.empty] == ["set server wb.shop.b2/s1 state maint"]


def test_routes_keep_their_backends_when_others_come_and_go() -> None:
    # canary stays on b2 when stable disappears and a new route arrives
    cfg = Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8080",
                    "routes": {
                        "canary": {"weight": "100%", "instances": ["127.0.0.1:9101"]},
                        "next": {"instances": []},
                    },
                }
            }
        }
    )
    plan = plan_for(cfg, applied(STEADY))
    assert plan.bindings["shop"] == {"canary": "wb.shop.b2", "next": "wb.shop.b1"}


def test_more_routes_than_the_pool_is_a_pool_reload() -> None:
    extra = {f"r{i}": {"instances": []} for i in range(SPARE_BACKENDS + 1)}
    plan = plan_for(config([9001, 9002], [9101], ("90%", "10%"), **extra), applied(STEADY))
    assert [r.kind for r in plan.reload_reasons] == ["route-pool"]


def test_drift_is_repaired_by_runtime_commands() -> None:
    observed = applied(STEADY)
    backends = dict(observed.backends)
    backends["wb.shop.b1"] = slots({1: 9001, 2: 9002}, maint=(2,))
    backends["wb.shop.b2"] = slots({1: 9101}, weight=7)
    maps = dict(observed.maps)
    maps[WEIGHTS] = (("0:9999", "wb.shop.b1"),)
    plan = plan_for(STEADY, Observed(observed.running, backends, maps))
    texts = [c.text for c in plan.fill]
    assert "set server wb.shop.b1/s2 state ready" in texts
    assert "set server wb.shop.b2/s1 weight 1" in texts
    assert plan.map_updates == (WEIGHTS,)


def test_growth_beyond_slot_capacity_is_a_capacity_reload() -> None:
    plan = plan_for(config(list(range(9001, 9002 + MIN_SLOTS)), [9101]), applied(STEADY))
    assert [r.kind for r in plan.reload_reasons] == ["capacity"]
    assert len(plan.assignment["wb.shop.b1"]) == MIN_SLOTS + 1


def test_new_gateway_and_unknown_haproxy_are_reloads() -> None:
    first = plan_for(STEADY, Observed(running=None, backends={}, maps={}))
    assert [r.kind for r in first.reload_reasons] == ["initial"]
    two = Config.model_validate(
        {
            "gateways": {
                **STEADY.model_dump(mode="json")["gateways"],
                "blue": {"bind": "127.0.0.1:8081", "routes": {}},
            }
        }
    )
    plan = plan_for(two, applied(STEADY))
    assert [str(r) for r in plan.reload_reasons] == ["gateway-added: blue"]


def test_plan_describes_steps_in_apply_order() -> None:
    steps = plan_for(config([9002, 9003], [9101], ("50%", "50%")), applied(STEADY)).describe()
    assert steps[0].startswith("set server wb.shop.b1/s1 addr")
    assert steps[-1] == "swap map maps/shop.map: 0:4999 wb.shop.b1, 5000:9999 wb.shop.b2"


def test_planning_a_large_route_against_haproxy_is_linear(monkeypatch: Any) -> None:
    """Issue 9, finding 4: 14 routes × 4,096 instances took 310 s to plan once applied, as each
    observed slot was compared with every kept address; now one set lookup per slot."""
    instances = [f"127.{r}.{i // 256}.{i % 256}:8080" for r in range(4) for i in range(4096)]
    routes = {f"r{r}": {"instances": instances[r * 4096 : (r + 1) * 4096]} for r in range(4)}
    big = Config.model_validate({"gateways": {"big": {"bind": "127.0.0.1:8080", "routes": routes}}})
    applied = observed_after(plan_changes(big, Observed(None, {}, {}), "maps", SETTINGS))
    comparisons = 0
    original = Address.__eq__

    def counting(self: Address, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        assert comparisons <= 4 * len(instances), "quadratic: was ~4096²/2 per route"
        return original(self, other)

    monkeypatch.setattr(Address, "__eq__", counting)
    assert plan_changes(big, applied, "maps", SETTINGS).is_empty


def test_a_plan_knows_what_haproxy_reports_once_it_is_applied() -> None:
    """`after(parked=True)` stands in for looking (a write that need not observe): it is
    what HAProxy reports after the plan, parked slots included, so planning again against it
    is empty, and a new split against it is one map swap, as against a real observation."""
    [first] = plan_for(STEADY, Observed(running=None, backends={}, maps={})).gateways
    assert first.after(parked=True) == applied(STEADY).by_gateway()["shop"]
    [steady] = plan_for(STEADY, applied(STEADY)).gateways
    gateway = STEADY.gateways["shop"]
    assert plan_gateway("shop", gateway, steady.after(parked=True), "maps", SETTINGS).is_empty
    shifted = config([9001, 9002], [9101], weights=("50%", "50%")).gateways["shop"]
    swap = plan_gateway("shop", shifted, steady.after(parked=True), "maps", SETTINGS)
    assert not swap.needs_reload and not swap.fill and not swap.empty
    assert [s.ref for s in swap.map_swaps] == [WEIGHTS]


def test_route_policy_decides_health_down_and_drain() -> None:
    """`health_check: none` fills with no `health down`; `drain_timeout: 0s` parks at once."""
    unchecked = {"health_check": "none", "drain_timeout": "0s"}
    steady = applied(config([9001, 9002], [9101], stable_policy=unchecked))
    plan = plan_for(config([9001, 9002, 9003], [9101], stable_policy=unchecked), steady)
    assert not plan.needs_reload
    assert [c.text for c in plan.fill] == [
        "set server wb.shop.b1/s3 addr 127.0.0.1 port 9003",
        "set server wb.shop.b1/s3 state ready",
    ]
    plan = plan_for(config([9001], [9101], stable_policy=unchecked), steady)
    assert [c.text for c in plan.empty] == ["set server wb.shop.b1/s2 state maint"]


def test_a_draining_slot_is_the_last_one_taken() -> None:
    observed = applied(STEADY)
    backend = "wb.shop.b1"
    drained = [
        SlotState(s.name, s.address, False, s.weight, draining=s.name == "s1")
        if s.name == "s1"
        else s
        for s in observed.backends[backend]
    ]
    observed = Observed(observed.running, {**observed.backends, backend: drained}, observed.maps)
    plan = plan_for(config([9002, 9005], [9101]), observed)
    assert plan.assignment[backend]["s3"] == Address("127.0.0.1", 9005)


def test_live_policy_values_need_no_reload() -> None:
    """max_connections, drain_timeout and the ejection cap are applied by the controller."""
    base = {"health_check": {"path": "/h"}, "outlier_ejection": {"error_limit": 3}}
    ejection = {"error_limit": 3, "max_ejected": "25%"}
    live = {**base, "max_connections": 7, "drain_timeout": "5s", "outlier_ejection": ejection}
    steady = applied(config([9001], [9101], stable_policy=base))
    assert plan_for(config([9001], [9101], stable_policy=live), steady).method == "none"
    fewer = {**base, "retries": {"count": 1}}
    assert plan_for(config([9001], [9101], stable_policy=fewer), steady).needs_reload


def test_new_instances_wait_for_their_checks_only_beside_serving_ones() -> None:
    """Beside serving instances a new one waits for `rise` checks (`health down`); a route
    serving nothing yet takes its first instances at once rather than answer 503."""
    steady = applied(config([9001], [], weights=("100%", "0%")))
    added = plan_for(config([9001, 9002], [], weights=("100%", "0%")), steady)
    assert "set server wb.shop.b1/s2 health down" in [c.text for c in added.fill]
    fresh = plan_for(config([9001], [9101], weights=("100%", "0%")), steady)
    texts = [c.text for c in fresh.fill if "wb.shop.b2/" in c.text]
    assert "set server wb.shop.b2/s1 state ready" in texts
    assert not any("health down" in t for t in texts)
