"""Gateway endpoints under /api/v1, the controller's state, health and metrics.

Handlers only translate HTTP to engine changes; every write is validated, planned and
checked before anything is stored or applied, so an error leaves HAProxy untouched.
Failures are raised as `controller.errors` kinds; `controller.api.errors` answers them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from controller.api.body import dry_run_flag, read_json_body
from controller.api.connections import GUARD
from controller.apply import ApplyResult
from controller.engine import Engine
from controller.errors import InvalidInput, NotFound, PreconditionFailed
from controller.metrics import CONTENT_TYPE
from controller.model import Config, Gateway, check_name, parse_percent, validation_problems
from controller.offload import BIG_TEXT, offload
from controller.status import gateway_status

ENGINE = web.AppKey("engine", Engine)


def etag(gateway: Gateway) -> str:
    canonical = json.dumps(gateway.model_dump(mode="json"), sort_keys=True)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:20] + '"'


def _name(request: web.Request, key: str) -> str:
    try:
        return check_name(request.match_info[key])
    except ValueError as exc:
        raise InvalidInput(f"invalid {key}", [{"field": key, "message": str(exc)}]) from None


def _gateway(config: Config, name: str) -> Gateway:
    gateway = config.gateways.get(name)
    if gateway is None:
        raise NotFound(f"no gateway {name!r}", [{"field": "gateway", "message": "unknown"}])
    return gateway


def _unknown_route(gateway: str, routes: list[str], field: Callable[[str], str]) -> NotFound:
    return NotFound(
        f"gateway {gateway!r} has no route {routes[0]!r}",
        [{"field": field(r), "message": "unknown route"} for r in routes],
    )


def _check_if_match(request: web.Request, current: Gateway | None) -> None:
    wanted = request.headers.get("If-Match")
    if wanted is None:
        return
    if current is None or (wanted.strip() != "*" and etag(current) not in _etags(wanted)):
        raise PreconditionFailed(
            "the gateway changed since it was read (If-Match does not match)",
            [{"field": "If-Match", "message": "stale"}],
        )


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",")}


def _big_body(request: web.Request) -> bool:
    """A big body makes a big change: the engine computes it off the event loop."""
    return (request.content_length or 0) > BIG_TEXT


def _applied(result: ApplyResult, gateway: Gateway | None, status: int = 200) -> web.Response:
    response = web.json_response(result.as_json(), status=status)
    if gateway is not None and not result.dry_run:
        response.headers["ETag"] = etag(gateway)
    return response


def _dump(gateway: Gateway) -> dict[str, Any]:
    return gateway.model_dump(mode="json", exclude_none=True)


def _validated(build: Callable[[], Any], prefix: str) -> Any:
    try:
        return build()
    except ValidationError as exc:
        problems = validation_problems(exc, prefix)
        raise InvalidInput(f"invalid {problems[0]['field']}", problems) from None


def _object_body(body: Any, field: str, what: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not body:
        raise InvalidInput(
            f"body must be {what}", [{"field": field, "message": "expected a non-empty object"}]
        )
    return body


async def list_gateways(request: web.Request) -> web.Response:
    config = request.app[ENGINE].desired.config
    return web.json_response({"gateways": {n: _dump(g) for n, g in config.gateways.items()}})


async def get_gateway(request: web.Request) -> web.Response:
    gateway = _gateway(request.app[ENGINE].desired.config, _name(request, "gateway"))
    return web.json_response(_dump(gateway), headers={"ETag": etag(gateway)})


async def put_gateway(request: web.Request) -> web.Response:
    name = _name(request, "gateway")
    body = await read_json_body(request)
    try:
        gateway = await offload(_big_body(request), Gateway.model_validate, body)
    except ValidationError as exc:
        problems = validation_problems(exc, "gateway")
        raise InvalidInput(f"invalid {problems[0]['field']}", problems) from None
    created = False

    def compute(config: Config) -> Config:
        nonlocal created
        current = config.gateways.get(name)
        _check_if_match(request, current)
        created = current is None
        updated: Config = _validated(lambda: config.with_gateway(name, gateway), "gateways." + name)
        return updated

    result = await request.app[ENGINE].change(
        compute, dry_run=dry_run_flag(request), heavy=_big_body(request)
    )
    return _applied(result, gateway, 201 if created and not result.dry_run else 200)


async def delete_gateway(request: web.Request) -> web.Response:
    name = _name(request, "gateway")

    def compute(config: Config) -> Config:
        _check_if_match(request, _gateway(config, name))
        return config.with_gateway(name, None)

    return _applied(await request.app[ENGINE].change(compute, dry_run=dry_run_flag(request)), None)


_WEIGHTS = TypeAdapter(dict[str, Any])


async def patch_weights(request: web.Request) -> web.Response:
    name = _name(request, "gateway")
    body = _object_body(await read_json_body(request), "weights", "an object of route: weight")
    weights: dict[str, int] = {}
    problems = []
    for route, value in _WEIGHTS.validate_python(body).items():
        try:
            weights[check_name(route)] = parse_percent(value)
        except ValueError as exc:
            problems.append({"field": f"weights.{route}", "message": str(exc)})
    if problems:
        raise InvalidInput(f"invalid {problems[0]['field']}", problems)
    updated: Gateway | None = None

    def compute(config: Config) -> Config:
        nonlocal updated
        gateway = _gateway(config, name)
        _check_if_match(request, gateway)
        unknown = sorted(set(weights) - set(gateway.routes))
        if unknown:
            raise _unknown_route(name, unknown, lambda r: f"weights.{r}")
        updated = _validated(lambda: gateway.with_weights(weights), "weights")
        return config.with_gateway(name, updated)

    result = await request.app[ENGINE].change(compute, dry_run=dry_run_flag(request))
    return _applied(result, updated)


async def put_instances(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    if not isinstance(body, list):
        raise InvalidInput(
            "body must be a list of 'host:port'",
            [{"field": "instances", "message": "expected a list"}],
        )
    return await _change_route(request, lambda fields: {**fields, "instances": body})


async def patch_route(request: web.Request) -> web.Response:
    """Change some fields of one route, e.g. `{"condition_strength": "20%"}` (live)."""
    body = _object_body(await read_json_body(request), "route", "an object of route fields")
    return await _change_route(request, lambda fields: {**fields, **body})


async def _change_route(
    request: web.Request, edit: Callable[[dict[str, Any]], dict[str, Any]]
) -> web.Response:
    """Apply `edit` to one route's fields (as in the config file) and revalidate the gateway."""
    name, route = _name(request, "gateway"), _name(request, "route")
    updated: Gateway | None = None

    def compute(config: Config) -> Config:
        nonlocal updated
        gateway = _gateway(config, name)
        _check_if_match(request, gateway)
        if route not in gateway.routes:
            raise _unknown_route(name, [route], lambda _: "route")
        data = gateway.model_dump(mode="json")
        data["routes"][route] = edit(data["routes"][route])
        updated = _validated(lambda: Gateway.model_validate(data), "")
        return config.with_gateway(name, updated)

    result = await request.app[ENGINE].change(
        compute, dry_run=dry_run_flag(request), heavy=_big_body(request)
    )
    return _applied(result, updated)


async def get_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = _name(request, "gateway")
    gateway = _gateway(engine.desired.config, name)
    return web.json_response(await gateway_status(engine, name, gateway))


async def get_controller(request: web.Request) -> web.Response:
    """The controller's own state: readiness, reloads, drift repairs, API connections."""
    engine, guard = request.app[ENGINE], request.app[GUARD]
    state = engine.state
    return web.json_response(
        {
            "ready": state.ready,
            "revision": engine.desired.revision,
            "last_sync": state.last_sync,
            "last_error": state.last_error,
            "reloads": state.reloads,
            "drift_repairs": dict(state.drift_repairs),
            "haproxy_restarts": state.haproxy_restarts,
            "api_connections": {
                "open": guard.open_connections,
                **dataclasses.asdict(guard.counts),
            },
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.metrics.ready(engine.state.ready)
    response = web.Response(body=engine.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[ENGINE].state
    body = {"ready": state.ready, "last_sync": state.last_sync, "last_error": state.last_error}
    return web.json_response(body, status=200 if state.ready else 503)


def add_gateway_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/api/v1/controller", get_controller)
    api = "/api/v1/gateways"
    app.router.add_get(api, list_gateways)
    app.router.add_get(api + "/{gateway}", get_gateway)
    app.router.add_put(api + "/{gateway}", put_gateway)
    app.router.add_delete(api + "/{gateway}", delete_gateway)
    app.router.add_patch(api + "/{gateway}/weights", patch_weights)
    app.router.add_put(api + "/{gateway}/routes/{route}/instances", put_instances)
    app.router.add_patch(api + "/{gateway}/routes/{route}", patch_route)
    app.router.add_get(api + "/{gateway}/status", get_status)
