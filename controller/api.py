"""REST API under /api/v1 (aiohttp): gateways, weights, instances, status, health.

Handlers only translate HTTP to engine changes; every write is validated, planned and
checked before anything is stored or applied, so an error leaves HAProxy untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from controller.apply import ApplyResult
from controller.engine import Engine
from controller.errors import ConflictingState, TooLarge, Unavailable
from controller.metrics import CONTENT_TYPE
from controller.model import Config, Gateway, check_name, parse_percent, validation_problems
from controller.offload import BIG_TEXT, offload
from controller.process import InvalidConfig
from controller.status import gateway_status
from controller.store import StoreError

log = logging.getLogger(__name__)

ENGINE = web.AppKey("engine", Engine)
TOKEN = web.AppKey("token", str)
MAX_BODY = 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as JSON: status, message and the fields at fault."""

    def __init__(self, status: int, message: str, problems: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []


def _error_response(status: int, message: str, problems: list[dict[str, str]]) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=status)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[ENGINE].metrics.api_request(
            request.method, route, status, time.perf_counter() - started
        )


async def get_metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.metrics.ready(engine.state.ready)
    response = web.Response(body=engine.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.message, exc.problems)
    except ValidationError as exc:
        problems = validation_problems(exc)
        return _error_response(400, f"invalid {problems[0]['field']}", problems)
    except InvalidConfig as exc:
        return _error_response(400, f"HAProxy refused the configuration: {exc.message}", [])
    except TooLarge as exc:
        return _error_response(413, exc.message, exc.problems)
    except ConflictingState as exc:
        return _error_response(409, f"concurrent change: {exc}", [])
    except Unavailable as exc:
        if isinstance(exc, StoreError):
            request.app[ENGINE].metrics.store_error()
        log.warning("%s %s failed: %s", request.method, request.path, exc)
        return _error_response(503, f"not applied: {exc}", [])
    except web.HTTPRequestEntityTooLarge:
        return _error_response(413, f"body larger than {MAX_BODY} bytes", [])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(exc.status, exc.reason, [])


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if token and request.method not in ("GET", "HEAD", "OPTIONS"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ApiError(401, "a valid bearer token is required for writes")
    return await handler(request)


def etag(gateway: Gateway) -> str:
    canonical = json.dumps(gateway.model_dump(mode="json"), sort_keys=True)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:20] + '"'


def _name(request: web.Request, key: str) -> str:
    try:
        return check_name(request.match_info[key])
    except ValueError as exc:
        raise ApiError(400, f"invalid {key}", [{"field": key, "message": str(exc)}]) from None


def _gateway(config: Config, name: str) -> Gateway:
    gateway = config.gateways.get(name)
    if gateway is None:
        raise ApiError(404, f"no gateway {name!r}", [{"field": "gateway", "message": "unknown"}])
    return gateway


def _check_if_match(request: web.Request, current: Gateway | None) -> None:
    wanted = request.headers.get("If-Match")
    if wanted is None:
        return
    if current is None or (wanted.strip() != "*" and etag(current) not in _etags(wanted)):
        raise ApiError(412, "the gateway changed since it was read (If-Match does not match)")


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",")}


async def read_json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, f"body is not valid JSON: {exc}", [{"field": "(body)", "message": "not JSON"}]
        ) from None


def _big_body(request: web.Request) -> bool:
    """A big body makes a big change: the engine computes it off the event loop."""
    return (request.content_length or 0) > BIG_TEXT


def dry_run_flag(request: web.Request) -> bool:
    value = request.query.get("dry_run", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(
            400, "dry_run must be true or false", [{"field": "dry_run", "message": "not a boolean"}]
        )
    return value in ("true", "1")


def _applied(result: ApplyResult, gateway: Gateway | None, status: int = 200) -> web.Response:
    response = web.json_response(result.as_json(), status=status)
    if gateway is not None and not result.dry_run:
        response.headers["ETag"] = etag(gateway)
    return response


def _dump(gateway: Gateway) -> dict[str, Any]:
    return gateway.model_dump(mode="json", exclude_none=True)


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
        raise ApiError(400, "invalid gateway", validation_problems(exc, "gateway")) from None
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
    body = await read_json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError(
            400,
            "body must be an object of route: weight",
            [{"field": "weights", "message": "expected a non-empty object"}],
        )
    weights: dict[str, int] = {}
    problems = []
    for route, value in _WEIGHTS.validate_python(body).items():
        try:
            weights[check_name(route)] = parse_percent(value)
        except ValueError as exc:
            problems.append({"field": f"weights.{route}", "message": str(exc)})
    if problems:
        raise ApiError(400, f"invalid {problems[0]['field']}", problems)
    updated: Gateway | None = None

    def compute(config: Config) -> Config:
        nonlocal updated
        gateway = _gateway(config, name)
        _check_if_match(request, gateway)
        unknown = sorted(set(weights) - set(gateway.routes))
        if unknown:
            raise ApiError(
                404,
                f"gateway {name!r} has no route {unknown[0]!r}",
                [{"field": f"weights.{r}", "message": "unknown route"} for r in unknown],
            )
        updated = _validated(lambda: gateway.with_weights(weights), "weights")
        return config.with_gateway(name, updated)

    result = await request.app[ENGINE].change(compute, dry_run=dry_run_flag(request))
    return _applied(result, updated)


async def put_instances(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    if not isinstance(body, list):
        raise ApiError(
            400,
            "body must be a list of 'host:port'",
            [{"field": "instances", "message": "expected a list"}],
        )
    return await _change_route(request, lambda fields: {**fields, "instances": body})


async def patch_route(request: web.Request) -> web.Response:
    """Change some fields of one route, e.g. `{"condition_strength": "20%"}` (live)."""
    body = await read_json_body(request)
    if not isinstance(body, dict) or not body:
        raise ApiError(
            400,
            "body must be an object of route fields",
            [{"field": "route", "message": "expected a non-empty object"}],
        )
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
            raise ApiError(
                404,
                f"gateway {name!r} has no route {route!r}",
                [{"field": "route", "message": "unknown route"}],
            )
        data = gateway.model_dump(mode="json")
        data["routes"][route] = edit(data["routes"][route])
        updated = _validated(lambda: Gateway.model_validate(data), "")
        return config.with_gateway(name, updated)

    result = await request.app[ENGINE].change(
        compute, dry_run=dry_run_flag(request), heavy=_big_body(request)
    )
    return _applied(result, updated)


def _validated(build: Callable[[], Any], prefix: str) -> Any:
    try:
        return build()
    except ValidationError as exc:
        problems = validation_problems(exc, prefix)
        raise ApiError(400, f"invalid {problems[0]['field']}", problems) from None


async def get_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = _name(request, "gateway")
    gateway = _gateway(engine.desired.config, name)
    return web.json_response(await gateway_status(engine, name, gateway))


async def get_controller(request: web.Request) -> web.Response:
    """The controller's own state: readiness, reloads with reasons and results, drift repairs."""
    engine = request.app[ENGINE]
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
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[ENGINE].state
    body = {"ready": state.ready, "last_sync": state.last_sync, "last_error": state.last_error}
    return web.json_response(body, status=200 if state.ready else 503)


def create_app(engine: Engine, *, token: str = "") -> web.Application:
    app = web.Application(
        middlewares=[metrics_middleware, errors_middleware, auth_middleware],
        client_max_size=MAX_BODY,
    )
    app[ENGINE] = engine
    app[TOKEN] = token
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
    return app
