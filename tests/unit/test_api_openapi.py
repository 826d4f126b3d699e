"""The OpenAPI description: valid OpenAPI 3.1, every route in it, bodies the API takes in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import jsonschema_rs
import pytest
import schemathesis
import yaml

from controller.api.app import create_app
from controller.api.certificates import add_certificate_routes
from controller.api.openapi import openapi_document
from controller.engine import Engine
from controller.fleet.api import add_fleet_routes
from controller.fleet.nodes import Nodes
from controller.model import Config, Gateway
from controller.rollouts.api import add_rollout_routes
from controller.rollouts.manager import RolloutManager
from controller.tls.manager import CertificateManager

ROOT = Path(__file__).resolve().parents[2]
DOC = openapi_document()
SPEC = {
    "gateway": "shop",
    "from_route": "stable",
    "to_route": "canary",
    "strategy": {"type": "canary", "steps": ["10%", "25%", 50, "100%"]},
    "interval": 0.5,
    "checks": {"success_rate": "99%", "max_response_ms": 100, "min_requests": 50},
    "webhooks": {"pre_step": [{"url": "http://127.0.0.1:9/gate"}]},
}


def test_it_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(DOC).validate()


@pytest.mark.parametrize(("certificates", "fleet"), [(False, False), (True, False), (False, True)])
def test_it_describes_every_route_and_nothing_else(certificates: bool, fleet: bool) -> None:
    app = create_app(cast(Engine, None))  # only the routes are read
    add_rollout_routes(app, cast(RolloutManager, None))
    if certificates:  # described once registered (`run` will, with the TLS wiring)
        add_certificate_routes(app, cast(CertificateManager, None))
    if fleet:  # a fleet node (`--store etcd://…`)
        add_fleet_routes(app, cast(Nodes, None))
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    doc = openapi_document(certificates, fleet)
    schemathesis.openapi.from_dict(doc).validate()
    described = {(method, path) for path, item in doc["paths"].items() for method in item}
    served_rollout_actions = ("post", "/api/v1/rollouts/{rollout}/{action}")
    assert served_rollout_actions in served
    assert served == described


def body_schema(path: str, method: str) -> dict[str, Any]:
    schema = DOC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return {**schema, "components": DOC["components"]}


def valid(path: str, method: str, body: Any) -> bool:
    """JSON Schema patterns are ECMA-262 (`$` is the very end), as in jsonschema_rs; Python's
    `jsonschema` uses `re.search`, whose `$` also matches before a final newline."""
    return bool(jsonschema_rs.Draft202012Validator(body_schema(path, method)).is_valid(body))


def test_the_bodies_the_api_takes_are_described() -> None:
    seed = yaml.safe_load((ROOT / "deploy/weighbridge.yaml").read_text())
    config = Config.model_validate(seed)
    gateway = "/api/v1/gateways/{gateway}"
    for name, gw in config.gateways.items():
        for body in (seed["gateways"][name], gw.model_dump(mode="json", exclude_none=True)):
            assert valid(gateway, "put", body), body
            Gateway.model_validate(body)
    assert valid(gateway + "/weights", "patch", {"stable": "95%", "canary": 5})
    assert valid(gateway + "/routes/{route}/instances", "put", ["127.0.0.1:9001", "[::1]:80"])
    assert valid(gateway + "/routes/{route}", "patch", {"condition_strength": "20%"})
    assert valid("/api/v1/rollouts", "post", SPEC)


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/api/v1/gateways/{gateway}/weights", "patch", {"evil\n": "100%"}),
        ("/api/v1/gateways/{gateway}/weights", "patch", {"stable": "101%"}),
        ("/api/v1/gateways/{gateway}/weights", "patch", {}),
        ("/api/v1/gateways/{gateway}/routes/{route}/instances", "put", ["example_com:80"]),
        ("/api/v1/gateways/{gateway}/routes/{route}/instances", "put", ["127.0.0.1:80\n"]),
        ("/api/v1/gateways/{gateway}/routes/{route}", "patch", {"nosuch": 1}),
        ("/api/v1/gateways/{gateway}", "put", {"bind": "127.0.0.1:80", "extra": 1}),
        ("/api/v1/rollouts", "post", {**SPEC, "gateway": "Shop"}),
    ],
)
def test_the_description_refuses_what_the_api_refuses(path: str, method: str, body: Any) -> None:
    assert not valid(path, method, body)
