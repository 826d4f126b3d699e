"""The pure planner: runtime commands when the structure holds, a typed reload when not."""

from __future__ import annotations

from controller.compile import MIN_SLOTS, RenderSettings, layout, structure_fingerprint
from controller.model import Address, Config
from controller.plan import Observed, SlotState, plan_changes

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")


def config(
    stable: list[int], canary: list[int], weights: tuple[str, str] = ("90%", "10%")
) -> Config:
    return Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8080",
                    "routes": {
                        "stable": {
                            "weight": weights[0],
                            "instances": [f"127.0.0.1:{p}" for p in stable],
                        },
                        "canary": {
                            "weight": weights[1],
                            "instances": [f"127.0.0.1:{p}" for p in canary],
                        },
                    },
                }
            }
        }
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


def observed_for(
    cfg: Config,
    backends: dict[str, list[SlotState]],
    maps: dict[str, tuple[tuple[str, str], ...]] | None = None,
) -> Observed:
    wanted = layout(cfg, "maps")
    return Observed(
        fingerprint=structure_fingerprint(wanted, SETTINGS),
        backends=backends,
        maps=maps if maps is not None else wanted.maps(),
    )


def plan_for(cfg: Config, observed: Observed):  # type: ignore[no-untyped-def]
    capacities = {n: len(s) for n, s in observed.backends.items()}
    wanted = layout(cfg, "maps", capacities)
    return plan_changes(cfg, wanted, structure_fingerprint(wanted, SETTINGS), observed)


def steady(cfg: Config) -> Observed:
    return observed_for(
        cfg, {"wb.shop.stable": slots({1: 9001, 2: 9002}), "wb.shop.canary": slots({1: 9101})}
    )


def test_in_sync_means_an_empty_plan() -> None:
    cfg = config([9001, 9002], [9101])
    plan = plan_for(cfg, steady(cfg))
    assert plan.is_empty and plan.method == "none"


def test_weight_change_is_one_map_swap() -> None:
    before = config([9001, 9002], [9101])
    after = config([9001, 9002], [9101], ("95%", "5%"))
    plan = plan_for(after, steady(before))
    assert plan.method == "runtime"
    assert plan.maps == {
        "maps/shop.map": (("0:9499", "wb.shop.stable"), ("9500:9999", "wb.shop.canary"))
    }
    assert not plan.fill and not plan.empty


def test_added_instance_fills_a_free_slot_and_removed_one_goes_to_maintenance() -> None:
    before = config([9001, 9002], [9101])
    after = config([9002, 9003], [9101])
    plan = plan_for(after, steady(before))
    assert [c.text for c in plan.fill] == [
        "set server wb.shop.stable/s1 addr 127.0.0.1 port 9003",
        "set server wb.shop.stable/s1 state ready",
    ]
    assert plan.empty == ()  # s1 was reused for the new instance, nothing left to empty
    after = config([9002], [9101])
    plan = plan_for(after, steady(before))
    assert [c.text for c in plan.empty] == ["set server wb.shop.stable/s1 state maint"]
    assert plan.fill == () and plan.assignment["wb.shop.stable"] == {
        "s2": Address(ip="127.0.0.1", port=9002)
    }


def test_instances_keep_their_slots() -> None:
    before = config([9001, 9002], [9101])
    after = config([9002, 9001, 9004], [9101])
    plan = plan_for(after, steady(before))
    assert plan.assignment["wb.shop.stable"] == {
        "s1": Address(ip="127.0.0.1", port=9001),
        "s2": Address(ip="127.0.0.1", port=9002),
        "s3": Address(ip="127.0.0.1", port=9004),
    }


def test_drift_is_repaired_by_runtime_commands() -> None:
    cfg = config([9001, 9002], [9101])
    drifted = observed_for(
        cfg,
        {
            "wb.shop.stable": slots({1: 9001, 2: 9002}, maint=(2,)),
            "wb.shop.canary": slots({1: 9101}, weight=7),
        },
        maps={"maps/shop.map": (("0:9999", "wb.shop.stable"),)},
    )
    plan = plan_for(cfg, drifted)
    texts = [c.text for c in plan.fill]
    assert "set server wb.shop.stable/s2 state ready" in texts
    assert "set server wb.shop.canary/s1 weight 1" in texts
    assert "maps/shop.map" in plan.maps
    assert plan.method == "runtime"


def test_growth_beyond_capacity_is_a_capacity_reload() -> None:
    before = config([9001, 9002], [9101])
    after = config(list(range(9001, 9001 + MIN_SLOTS + 1)), [9101])
    plan = plan_for(after, steady(before))
    assert plan.needs_reload
    assert [r.kind for r in plan.reload_reasons] == ["capacity"]
    assert len(plan.assignment["wb.shop.stable"]) == MIN_SLOTS + 1


def test_new_route_and_unknown_haproxy_are_reloads() -> None:
    cfg = config([9001], [9101])
    first = plan_for(cfg, Observed(fingerprint=None, backends={}, maps={}))
    assert [r.kind for r in first.reload_reasons] == ["initial"]
    only_stable = observed_for(cfg, {"wb.shop.stable": slots({1: 9001})})
    plan = plan_for(cfg, only_stable)
    assert [str(r) for r in plan.reload_reasons] == ["route-added: wb.shop.canary"]


def test_plan_describes_steps_in_apply_order() -> None:
    before = config([9001, 9002], [9101])
    after = config([9002, 9003], [9101], ("50%", "50%"))
    steps = plan_for(after, steady(before)).describe()
    assert steps[0].startswith("set server wb.shop.stable/s1 addr")
    assert steps[-1].startswith("swap map maps/shop.map: 0:4999 wb.shop.stable")
