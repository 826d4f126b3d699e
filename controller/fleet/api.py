"""The fleet's API: `GET /api/v1/nodes`, and `?wait=applied[&timeout=S]` on writes.

A write answers once etcd committed it (and this node applied it); with `wait=applied` it
answers once every live node reports that revision applied, or when `timeout` passed, with
the nodes still lagging (202: the write stands, some nodes have not caught up yet).
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from controller.api.errors import Handler
from controller.errors import InvalidInput
from controller.fleet.nodes import Nodes

NODES = web.AppKey("nodes", Nodes)
WRITES = frozenset({"PUT", "PATCH", "DELETE", "POST"})
DEFAULT_WAIT = 10.0
MAX_WAIT = 300.0


def wait_timeout(request: web.Request) -> float | None:
    """None: no waiting asked; else the seconds to wait at most."""
    wait = request.query.get("wait")
    timeout = request.query.get("timeout")
    if wait is None:
        if timeout is not None:
            raise InvalidInput.for_field("timeout", "timeout needs wait=applied")
        return None
    if wait != "applied":
        raise InvalidInput.for_field("wait", "must be applied")
    if timeout is None:
        return DEFAULT_WAIT
    if not re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,3})?", timeout) or not (
        0 < float(timeout) <= MAX_WAIT
    ):
        raise InvalidInput.for_field(
            "timeout", f"must be seconds, more than 0, at most {MAX_WAIT:g}"
        )
    return float(timeout)


@web.middleware
async def wait_applied(request: web.Request, handler: Handler) -> web.StreamResponse:
    timeout = wait_timeout(request) if request.method in WRITES else None
    response = await handler(request)
    if timeout is None or not 200 <= response.status < 300:
        return response
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    body = json.loads(response.body)
    revision = body.get("revision") if isinstance(body, dict) else None
    if not isinstance(revision, int) or body.get("dry_run"):
        return response
    lagging = await request.app[NODES].wait_applied(revision, timeout)
    body["applied"] = {"everywhere": not lagging, "lagging": lagging}
    answer = web.json_response(body, status=202 if lagging else response.status)
    for header in ("ETag", "Location"):
        if header in response.headers:
            answer.headers[header] = response.headers[header]
    return answer


async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response(await request.app[NODES].current_view())


def add_fleet_routes(app: web.Application, nodes: Nodes) -> None:
    app[NODES] = nodes
    app.middlewares.append(wait_applied)
    app.router.add_get("/api/v1/nodes", list_nodes)
