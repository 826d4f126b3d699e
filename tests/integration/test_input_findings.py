"""Issue 9's input findings, reproduced against a real controller and HAProxy.

Finding 1: a route named "evil\\n" was stored, then every live write to every gateway answered
503 and /readyz stayed 503. Finding 10: "1e-99999999" silently became 0 %, full-width digits
were accepted, IPv6 zone ids gave 503 (and `"$VAR"` in one was expanded by HAProxy).
Finding 3 (input part): raw ACLs read files and the environment into error texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

G = "/api/v1/gateways/shop"
OTHER = "/api/v1/gateways/other"


def two_gateways(backends: BackendProcess) -> dict[str, Any]:
    config = shop_config(backends)
    config["gateways"]["other"] = {
        "bind": f"127.0.0.1:{free_port()}",
        "routes": {
            "blue": {"weight": "100%", "instances": addresses(backends, "spare")[:2]},
            "green": {"weight": "0%", "instances": addresses(backends, "spare")[2:]},
        },
    }
    return config


def snapshot(stack: Stack) -> dict[str, str]:
    """The store and every file HAProxy reads: all must stay as they were after a refusal."""
    paths = [*sorted((stack.state_dir / "gateways").iterdir()), stack.state_dir / "haproxy.cfg"]
    paths += sorted((stack.state_dir / "maps").iterdir())
    return {path.name: path.read_text() for path in paths}


def fields(response: Any) -> list[str]:
    return [p["field"] for p in response.body.get("problems", [])]


def assert_refused(stack: Stack, before: dict[str, str], response: Any, field: str) -> None:
    assert response.status == 400, response.body
    assert field in fields(response), response.body
    assert snapshot(stack) == before


def test_a_route_named_evil_newline_is_refused_and_wedges_nothing(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, two_gateways(backends)) as stack:
        before = snapshot(stack)
        gateway = stack.request("GET", G).body
        gateway["routes"]["evil\n"] = {"instances": addresses(backends, "spare")[:1]}
        response = stack.request("PUT", G, gateway)
        assert_refused(stack, before, response, "gateway.routes.evil\n")

        # the same trailing newline in host names and balance parameters
        for key, value in (
            ("virtual_hosts", ["shop.example\n"]),
            ("balance", "url_param id\n"),
            ("balance", "hdr(x-user)\n"),
        ):
            response = stack.request("PUT", G, {**stack.request("GET", G).body, key: value})
            assert_refused(
                stack, before, response, f"gateway.{key}" + (".0" if key[0] == "v" else "")
            )

        # every gateway is still writable live, and the controller is ready
        moved = stack.request("PATCH", f"{OTHER}/weights", {"blue": "50%", "green": "50%"})
        assert moved.status == 200 and moved.body["method"] == "runtime", moved.body
        moved = stack.request("PATCH", f"{G}/weights", {"stable": "80%", "canary": "20%"})
        assert moved.status == 200 and moved.body["method"] == "runtime", moved.body
        assert stack.request("GET", "/readyz").status == 200
        assert "evil" not in "".join(snapshot(stack).values())


def test_virtual_host_with_a_newline_cannot_share_a_bind(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Before: "shop.example\\n" passed the uniqueness check beside "shop.example"."""
    config = two_gateways(backends)
    shop = config["gateways"]["shop"]
    config["gateways"]["other"]["bind"] = shop["bind"]
    shop["virtual_hosts"] = ["shop.example"]
    config["gateways"]["other"]["virtual_hosts"] = ["other.example"]
    with running_stack(short_tmp, config) as stack:
        before = snapshot(stack)
        other = stack.request("GET", OTHER).body
        response = stack.request(
            "PUT", OTHER, {**other, "virtual_hosts": ["other.example", "shop.example\n"]}
        )
        assert_refused(stack, before, response, "gateway.virtual_hosts.1")


@pytest.mark.parametrize(
    "weight", ["1e-99999999", "５０%", "NaN", "+5", "5 %", "50%\n", "٥٠", "0x32", 1e-5]
)
def test_percentages_are_plain_ascii_numbers(shop_stack: Stack, weight: Any) -> None:
    before = snapshot(shop_stack)
    response = shop_stack.request("PATCH", f"{G}/weights", {"stable": weight, "canary": "100%"})
    assert_refused(shop_stack, before, response, "weights.stable")
    assert "percentage" in response.body["problems"][0]["message"]


@pytest.mark.parametrize("instance", ["[fe80::1%eth0]:9000", "[::1%lo]:9000", "127.0.0.1:９０００"])
def test_instance_zone_ids_and_unicode_ports_are_400(shop_stack: Stack, instance: str) -> None:
    before = snapshot(shop_stack)
    response = shop_stack.request("PUT", f"{G}/routes/canary/instances", [instance])
    assert_refused(shop_stack, before, response, "routes.canary.instances.0")


def test_bind_zone_id_never_reaches_haproxy(
    backends: BackendProcess, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: HAProxy expanded `"$WEIGHBRIDGE_API_TOKEN"` and `haproxy -c` quoted it back."""
    token = "tok-" + "7f3a9c" * 4
    monkeypatch.setenv("WEIGHBRIDGE_API_TOKEN", token)
    with running_stack(short_tmp, shop_config(backends), token=token) as stack:
        before = snapshot(stack)
        body = {
            "bind": '[::1%"$WEIGHBRIDGE_API_TOKEN"]:8080',
            "routes": {"a": {"instances": addresses(backends, "spare")[:1]}},
        }
        for dry_run in ("?dry_run=true", ""):
            response = stack.request("PUT", f"/api/v1/gateways/leak{dry_run}", body)
            assert_refused(stack, before, response, "gateway.bind")
            assert token not in str(response.body)


def _acl_gateway(stack: Stack, condition: str) -> dict[str, Any]:
    gateway = stack.request("GET", G).body
    gateway["routes"]["canary"]["condition"] = condition
    return dict(gateway)


@pytest.mark.parametrize("dry_run", ["?dry_run=true", ""])
def test_raw_acl_reading_a_file_leaks_nothing(
    shop_stack: Stack, short_tmp: Path, dry_run: str
) -> None:
    """Before: `-f <file>` made `haproxy -c` quote the file's first line in the 400 body."""
    secret = short_tmp / "secret.txt"
    secret.write_text("SECRET-LINE-not-an-ip\n")
    before = snapshot(shop_stack)
    for condition in (
        f"< req.hdr(x) -m ip -f {secret} >",
        f"< req.hdr(x),map_str({secret}) -m found >",
        "< env(WEIGHBRIDGE_API_TOKEN) -m found >",
    ):
        response = shop_stack.request("PUT", f"{G}{dry_run}", _acl_gateway(shop_stack, condition))
        assert response.status not in (200, 201), response.body
        assert "SECRET-LINE" not in str(response.body)
        assert snapshot(shop_stack) == before
    assert shop_stack.request("GET", "/readyz").status == 200


def test_raw_acl_refusal_is_a_400_naming_the_condition(shop_stack: Stack) -> None:
    response = shop_stack.request(
        "PUT", G, _acl_gateway(shop_stack, "< req.hdr(x) -m ip -f /etc/passwd >")
    )
    assert response.status == 400, response.body
    assert fields(response) == ["gateways.shop.routes.canary.condition"]
    assert "--allow-unsafe-acls" in response.body["problems"][0]["message"]


async def test_allow_unsafe_acls_is_the_operators_choice(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """With `--allow-unsafe-acls` a pattern file works: header values listed in it go to canary."""
    patterns = short_tmp / "beta-users.lst"
    patterns.write_text("alice\nbob\n")
    config = shop_config(backends, "100%", "0%")
    config["gateways"]["shop"]["routes"]["canary"]["condition"] = (
        f"< req.hdr(x-user) -m str -f {patterns} >"
    )
    with running_stack(short_tmp, config, extra=["--allow-unsafe-acls"]) as stack:
        url = gateway_url(stack)
        assert (await send(url, 20, headers={"x-user": "bob"})).routes == {"canary": 20}
        assert (await send(url, 20, headers={"x-user": "eve"})).routes == {"stable": 20}


def test_a_config_file_with_an_unsafe_acl_does_not_start(short_tmp: Path) -> None:
    """Without the option the seed is refused before anything is stored or started."""
    config = {
        "gateways": {
            "shop": {
                "bind": f"127.0.0.1:{free_port()}",
                "routes": {"a": {"condition": "< env(HOME) -m found >"}},
            }
        }
    }
    config_file = short_tmp / "weighbridge.yaml"
    config_file.write_text(yaml.safe_dump(config))
    stack = Stack(state_dir=short_tmp / "state", api_port=free_port())
    try:
        stack.start_controller(config_file, wait_ready=False)
        assert stack.process is not None
        assert stack.process.wait(30) == 1
        assert "gateways.shop.routes.a.condition" in stack.controller_log()
        assert "--allow-unsafe-acls" in stack.controller_log()
        assert not list((stack.state_dir / "gateways").glob("*.json"))  # nothing stored
        assert stack.haproxy_pid() is None
    finally:
        stack.stop()
