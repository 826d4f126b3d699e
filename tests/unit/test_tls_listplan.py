"""A gateway's crt-list planned as runtime steps against what HAProxy runs (pure)."""

from __future__ import annotations

from typing import Any

from controller.compile import BindTls
from controller.model import Config
from controller.plan import GatewayObserved, Observed, plan_changes, plan_gateway
from controller.render import RenderSettings
from controller.runtime.parse import parse_crt_list
from controller.tls.crtlist import CrtList
from controller.tls.listplan import gateway_crt_list, plan_crt_list

CERTS = "/s/certs"
LIST = f"{CERTS}/shop.crt-list"
MAIN, A, B = f"{CERTS}/main.pem", f"{CERTS}/a.pem", f"{CERTS}/b.pem"
SETTINGS = RenderSettings("/s/admin.sock", cert_dir=CERTS)


def tls(*certificates: str) -> BindTls:
    text = "".join(f"{cert}\n" for cert in certificates)
    return BindTls(LIST, text, ("ssl-min-ver TLSv1.2",), certificates)


def live(*lines: str) -> list[Any]:
    numbered = "".join(
        f"{line.split()[0]}:{i} {' '.join(line.split()[1:])}\n" for i, line in enumerate(lines, 1)
    )
    return parse_crt_list(f"# {LIST}\n{numbered}")


def test_a_gateway_s_list_is_its_default_then_its_other_certificates_unfiltered() -> None:
    crt = gateway_crt_list(tls(MAIN, A, B))
    assert crt.lines == ((MAIN, ()), (A, ()), (B, ())) and crt.certificates == {MAIN, A, B}


def test_an_added_certificate_is_loaded_if_haproxy_lacks_it_then_added() -> None:
    plan = plan_crt_list(tls(MAIN, A, B), live(MAIN, A), frozenset({MAIN, A}))
    assert plan.load == (B,) and plan.changes.add == ((B, None),)
    assert plan.changes.delete == () and plan.unload == ()
    assert plan.describe() == [
        f"new ssl cert {B} (set, commit)",
        f"add ssl crt-list {LIST} {B}",
    ]
    assert plan.command_count == 4 and plan.text == f"{MAIN}\n{A}\n{B}\n"
    held = plan_crt_list(tls(MAIN, A, B), live(MAIN, A), frozenset({MAIN, A, B}))
    assert held.load == () and held.changes.add == ((B, None),)  # uploaded, not yet listed


def test_a_removed_certificate_is_deleted_by_line_then_forgotten() -> None:
    plan = plan_crt_list(tls(MAIN), live(MAIN, A, B), frozenset({MAIN, A, B}))
    assert plan.changes.add == () and plan.changes.delete == ((A, 2), (B, 3))
    assert plan.unload == (A, B) and plan.load == ()
    assert f"del ssl crt-list {LIST} {A}:2" in plan.describe()
    assert plan.before == ((MAIN, ()), (A, ()), (B, ()))


def test_lines_not_ours_and_duplicates_are_deleted_but_a_kept_certificate_stays_loaded() -> None:
    observed = live(MAIN, A, A, f"{B} x.test", f"{A} [alpn h2]")
    plan = plan_crt_list(tls(MAIN, A), observed, frozenset({MAIN, A, B}))
    assert plan.changes.delete == ((A, 3), (B, 4), (A, 5))
    assert plan.unload == (B,)  # A is still listed


def test_the_same_list_plans_nothing() -> None:
    plan = plan_crt_list(tls(MAIN, A), live(MAIN, A), frozenset({MAIN, A}))
    assert plan.empty and plan.describe() == [] and plan.command_count == 0


def test_another_default_or_no_list_is_left_to_a_reload() -> None:
    for observed in (live(A, MAIN), []):
        plan = plan_crt_list(tls(MAIN, A), observed, frozenset({MAIN, A}))
        assert plan.changes.default_changed and plan.load == () and plan.unload == ()


def test_a_failed_change_goes_back_to_the_lines_haproxy_ran() -> None:
    before = ((MAIN, ()), (A, ()), (B, ("b.test",)), (B, ("x", "y")))
    assert CrtList.of_lines(before) == CrtList(MAIN, (("b.test", B),), (A,))


def _gateway(*certificates: str, default: str | None = None) -> Config:
    spec: dict[str, Any] = {"certificates": list(certificates)}
    if default:
        spec["default"] = default
    return Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8443",
                    "tls": spec,
                    "routes": {"app": {"instances": ["127.0.0.1:9001"]}},
                }
            }
        }
    )


def _running(config: Config, lines: list[Any]) -> GatewayObserved:
    """What HAProxy reports once `config` was loaded, its crt-list as `lines`."""
    plan = plan_changes(config, Observed(None, {}, {}), "/s/maps", SETTINGS)
    after = plan.gateways[0].after(parked=True)
    return GatewayObserved(
        after.running, after.backends, after.maps, tuple(lines), frozenset({MAIN, A})
    )


def test_the_gateway_plan_adds_a_certificate_live_and_a_new_default_reloads() -> None:
    running = _running(_gateway("main", "a"), live(MAIN, A))
    added = plan_gateway(
        "shop", _gateway("main", "a", "b").gateways["shop"], running, "/s/maps", SETTINGS
    )
    assert not added.needs_reload and not added.is_empty
    assert added.crt_list is not None and added.crt_list.load == (B,)
    same = plan_gateway(
        "shop", _gateway("main", "a").gateways["shop"], running, "/s/maps", SETTINGS
    )
    assert same.is_empty and same.crt_list is None
    other = _gateway("main", "a", default="a").gateways["shop"]
    moved = plan_gateway("shop", other, running, "/s/maps", SETTINGS)
    assert moved.needs_reload and moved.crt_list is None
    unread = GatewayObserved(running.running, running.backends, running.maps)
    assert (
        plan_gateway(
            "shop", _gateway("main", "a", "b").gateways["shop"], unread, "/s/maps", SETTINGS
        ).crt_list
        is None
    )  # never planned without looking
