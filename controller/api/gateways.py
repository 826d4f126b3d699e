"""Gateway endpoints under /api/v1, the controller's state, health and metrics.

Handlers only translate HTTP to engine changes; every write is validated, planned and
checked before anything is stored or applied, so an error leaves HAProxy untouched.
Failures are raised as `controller.errors` kinds; `controller.api.errors` answers them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from aiohttp import web

from controller.api.body import dry_run_flag, read_json_body
from controller.api.connections import GUARD
from controller.apply import ApplyResult
from controller.desired import Record
from controller.edits import (
    DeleteGateway,
    Edit,
    EditRoute,
    IfMatch,
    PutGateway,
    SetInstances,
    SetWeights,
    validated,
)
from controller.engine import Engine
from controller.errors import InvalidInput, NotFound
from controller.metrics import CONTENT_TYPE
from controller.model import Gateway, check_name, parse_percent
from controller.offload import BIG_TEXT, offload
from controller.status import gateway_status

ENGINE = web.AppKey("engine", Engine)
MAX_PAGE = 1000
_ETAG = re.compile(r'(?:W/)?"([0-9]{1,18})"')


def etag(revision: int) -> str:
    """A gateway's ETag is its revision: the global revision of its last write."""
    return f'"{revision}"'


def if_match(request: web.Request) -> IfMatch | None:
    """`If-Match` as a precondition on the gateway's revision (`*`: it exists)."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    parts = [part.strip() for part in header.split(",")]
    if "*" in parts:
        return IfMatch(exists=True)
    return IfMatch(frozenset(int(m.group(1)) for p in parts if (m := _ETAG.fullmatch(p))))


def _name(request: web.Request, key: str) -> str:
    try:
        return check_name(request.match_info[key])
    except ValueError as exc:
        raise InvalidInput(f"invalid {key}", [{"field": key, "message": str(exc)}]) from None


def _record(engine: Engine, name: str) -> Record:
    record = engine.desired.records.get(name)
    if record is None:
        raise NotFound(f"no gateway {name!r}", [{"field": "gateway", "message": "unknown"}])
    return record


def _big_body(request: web.Request) -> bool:
    """A big body makes a big change: the engine computes it off the event loop."""
    return (request.content_length or 0) > BIG_TEXT


def _applied(result: ApplyResult, *, etagged: bool = True) -> web.Response:
    status = 201 if result.created and not result.dry_run else 200
    response = web.json_response(result.as_json(), status=status)
    if etagged and not result.dry_run:
        response.headers["ETag"] = etag(result.revision)
    return response


def _object_body(body: Any, field: str, what: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not body:
        raise InvalidInput(
            f"body must be {what}", [{"field": field, "message": "expected a non-empty object"}]
        )
    return body


def _page(request: web.Request) -> tuple[int, str | None] | None:
    """`?limit=N[&after=NAME]`: gateways in name order, N at most, after NAME."""
    limit = request.query.get("limit")
    after = request.query.get("after")
    if limit is None:
        if after is not None:
            raise InvalidInput.for_field("limit", "after needs a limit")
        return None
    if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_PAGE:
        raise InvalidInput.for_field("limit", f"must be a whole number from 1 to {MAX_PAGE}")
    if after is not None:
        try:
            check_name(after)
        except ValueError as exc:
            raise InvalidInput.for_field("after", str(exc)) from None
    return int(limit), after


async def list_gateways(request: web.Request) -> web.Response:
    """All gateways; with `?limit=` one page in name order, and the name to continue after."""
    desired = request.app[ENGINE].desired
    page = _page(request)
    if page is None:
        gateways = desired.gateways
        return web.json_response({"gateways": {n: g.as_json() for n, g in gateways.items()}})
    limit, after = page
    names = desired.after(after, limit + 1)
    more = len(names) > limit
    names = names[:limit]
    body = {
        "gateways": {name: desired.records[name].gateway.as_json() for name in names},
        "next": names[-1] if more else None,
    }
    return web.json_response(body)


async def get_gateway(request: web.Request) -> web.Response:
    record = _record(request.app[ENGINE], _name(request, "gateway"))
    return web.json_response(record.gateway.as_json(), headers={"ETag": etag(record.revision)})


async def put_gateway(request: web.Request) -> web.Response:
    name = _name(request, "gateway")
    body = await read_json_body(request)
    gateway = await offload(
        _big_body(request), validated, lambda: Gateway.model_validate(body), "gateway"
    )
    edit = PutGateway(name, gateway, if_match(request))
    result = await request.app[ENGINE].change(
        edit, dry_run=dry_run_flag(request), heavy=_big_body(request)
    )
    return _applied(result)


async def delete_gateway(request: web.Request) -> web.Response:
    edit = DeleteGateway(_name(request, "gateway"), if_match(request))
    result = await request.app[ENGINE].change(edit, dry_run=dry_run_flag(request))
    return _applied(result, etagged=False)


async def patch_weights(request: web.Request) -> web.Response:
    name = _name(request, "gateway")
    body = _object_body(await read_json_body(request), "weights", "an object of route: weight")
    weights: dict[str, int] = {}
    problems = []
    for route, value in body.items():  # JSON object keys: always strings
        try:
            weights[check_name(route)] = parse_percent(value)
        except ValueError as exc:
            problems.append({"field": f"weights.{route}", "message": str(exc)})
    if problems:
        raise InvalidInput(f"invalid {problems[0]['field']}", problems)
    edit = SetWeights(name, weights, if_match(request))
    return _applied(await request.app[ENGINE].change(edit, dry_run=dry_run_flag(request)))


async def put_instances(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    if not isinstance(body, list):
        raise InvalidInput(
            "body must be a list of 'host:port'",
            [{"field": "instances", "message": "expected a list"}],
        )
    name, route = _name(request, "gateway"), _name(request, "route")
    edit = SetInstances(name, route, tuple(body), if_match(request))
    return await _change(request, edit)


async def patch_route(request: web.Request) -> web.Response:
    """Change some fields of one route, e.g. `{"condition_strength": "20%"}` (live)."""
    body = _object_body(await read_json_body(request), "route", "an object of route fields")
    name, route = _name(request, "gateway"), _name(request, "route")
    return await _change(request, EditRoute(name, route, body, if_match(request)))


async def _change(request: web.Request, edit: Edit) -> web.Response:
    result = await request.app[ENGINE].change(
        edit, dry_run=dry_run_flag(request), heavy=_big_body(request)
    )
    return _applied(result)


async def get_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    name = _name(request, "gateway")
    return web.json_response(await gateway_status(engine, name, _record(engine, name)))


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
            # adopted on their structure, still to be read and compared (`controller.adopt`)
            "unverified_gateways": len(engine.unverified),
            "budget": engine.budget_report(),  # checks: active health checks a second
            "api_connections": {
                "open": guard.open_connections,
                **dataclasses.asdict(guard.counts),
            },
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.metrics.ready(engine.state.ready)
    response = web.Response(body=await engine.metrics.render_soon(engine.foreground.give_way))
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[ENGINE].state
    body = {"ready": state.ready, "last_sync": state.last_sync, "last_error": state.last_error}
    if state.store_error is not None:  # HAProxy serves on: ready, but say why writes fail
        body["store_error"] = state.store_error
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
