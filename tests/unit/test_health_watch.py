"""The health watch's pass (pure part): maxconn kept, drains parked, the ejection cap held,
routes counted healthy; and the weights a route down leaves."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.compile import applied_weights
from controller.health.watch import Pass, plan_pass, unproven
from controller.model import Config, Route
from controller.plan import NOTHING_RUNS, plan_gateway
from controller.render import RenderSettings
from controller.runtime.parse import ServerHealth

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")


def gateway(**route: object) -> Config:
    return Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8080",
                    "routes": {
                        "stable": {"weight": "90%", "instances": ["127.0.0.1:9001"], **route},
                        "canary": {"weight": "10%", "instances": ["127.0.0.1:9101"]},
                    },
                }
            }
        }
    )


def server(name: str, state: str = "UP", **fields: Any) -> ServerHealth:
    base = ServerHealth(
        "wb.shop.b1", name, state, True, "L4OK", False, None, "", 0, 2, 3, 0, 0, None, 5, 0
    )
    return replace(base, **fields)


def one_pass(
    config: Config,
    servers: list[ServerHealth],
    draining: dict[tuple[str, str], float],
    now: float = 100.0,
) -> Pass:
    shop = config.gateways["shop"]
    plan = plan_gateway("shop", shop, NOTHING_RUNS, "/m", SETTINGS)
    return plan_pass(shop, plan, {"wb.shop.b1": servers}, draining, now)


def test_maxconn_follows_the_route_and_zero_lifts_it() -> None:
    found = one_pass(gateway(max_connections=5), [server("s1"), server("s2", "MAINT")], {})
    assert [c.text for c in found.commands] == [
        "set maxconn server wb.shop.b1/s1 5",
        "set maxconn server wb.shop.b1/s2 5",
    ]
    limited = [server("s1", max_connections=5)]
    assert one_pass(gateway(max_connections=5), limited, {}).commands == []
    assert [c.text for c in one_pass(gateway(), limited, {}).commands] == [
        "set maxconn server wb.shop.b1/s1 0"
    ]


def test_a_draining_slot_is_parked_when_idle_or_at_its_timeout() -> None:
    draining: dict[tuple[str, str], float] = {}
    busy = server("s2", "DRAIN", sessions=1)
    config = gateway(drain_timeout="10s")
    assert one_pass(config, [busy], draining, now=100.0).commands == []
    assert draining == {("wb.shop.b1", "s2"): 100.0}
    assert one_pass(config, [busy], draining, now=105.0).parked == []
    timed_out = one_pass(config, [busy], draining, now=110.5)
    assert [c.text for c in timed_out.commands] == ["set server wb.shop.b1/s2 state maint"]
    idle = one_pass(config, [server("s3", "DRAIN")], {}, now=1.0)
    assert idle.parked == ["wb.shop.b1/s3"]


def test_ejections_beyond_the_cap_are_put_back_and_health_is_counted() -> None:
    ejected: dict[str, Any] = {"state": "DOWN", "check_status": "HANA"}
    servers = [
        server("s1", **ejected, seconds_since_change=9),
        server("s2", **ejected, seconds_since_change=1),
        server("s3", **ejected, seconds_since_change=5),
        server("s4"),
    ]
    config = gateway(outlier_ejection={"error_limit": 3, "max_ejected": "50%"})
    found = one_pass(config, servers, {})
    assert [c.text for c in found.commands] == ["set server wb.shop.b1/s2 health up"]
    assert found.health["stable"].healthy == 1 and found.health["stable"].total == 4


def test_a_route_down_gives_its_share_to_the_others_unless_the_gateway_fails() -> None:
    shop = gateway().gateways["shop"]
    assert applied_weights(shop, frozenset({"canary"})) == {"stable": 10000, "canary": 0}
    assert applied_weights(shop, frozenset()) == {"stable": 9000, "canary": 1000}
    failing = shop.replaced(on_route_down="fail")
    assert applied_weights(failing, frozenset({"canary"})) == {"stable": 9000, "canary": 1000}


def test_names_are_instances_kept_apart_and_written_back() -> None:
    route = Route.model_validate({"instances": ["127.0.0.1:80", "Api.Internal:8080"]})
    assert [str(a) for a in route.instances] == ["127.0.0.1:80"]
    assert route.names == ("api.internal:8080",)
    dumped = route.model_dump(mode="json")
    assert dumped["instances"] == ["127.0.0.1:80", "api.internal:8080"]
    assert Route.model_validate(dumped) == route


def test_a_route_that_was_down_stays_down_until_an_instance_passes_a_check() -> None:
    bindings = {"canary": "wb.shop.b1"}

    def still_down(*servers: ServerHealth) -> bool:
        return unproven(["canary"], bindings, {"wb.shop.b1": list(servers)}) == {"canary"}

    # a new worker: UP before any check, or after a failed one that has not reached `fall`
    assert still_down(server("s1", check_status="INI"), server("s2", check_status=None))
    assert still_down(server("s1", check_status="L4CON"), server("s2", "DOWN"))
    assert still_down()  # its backend not read: nothing proves it
    # a passed check (or no checks at all: HAProxy counts the server UP) brings it back
    assert not still_down(server("s1", check_status="L7OK"), server("s2", check_status="INI"))
    assert not still_down(server("s1", checked=False, check_status=None))
    assert not still_down(server("s1", "DOWN"), server("s2", check_status="L4OK"))
