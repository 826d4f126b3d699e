"""The API application: middlewares in order, routes, and the settings handlers read."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from controller.api.body import MAX_BODY
from controller.api.connections import (
    GUARD,
    LIMITS,
    ApiLimits,
    ConnectionGuard,
    track_connections,
)
from controller.api.errors import Handler, translator
from controller.api.gateways import ENGINE, add_gateway_routes
from controller.api.openapi import add_openapi_route
from controller.api.security import ACCESS, Access, HostPolicy, access_middleware
from controller.engine import Engine

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Any other method is counted as `other`: a client must not create metric series at will."""


CLIENT_CLOSED = 499
"""Counted for a request whose client went away (its handler is cancelled), as nginx does."""


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # the client went away: not a server error
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "other"
        request.app[ENGINE].metrics.api_request(
            method, route, status, time.perf_counter() - started
        )


def _count_store_error(request: web.Request) -> None:
    request.app[ENGINE].metrics.store_error()


def create_app(
    engine: Engine,
    *,
    access: Access | None = None,
    limits: ApiLimits | None = None,
) -> web.Application:
    """Middlewares, outermost first: connection tracking (the header deadline stops while a
    handler runs), metrics (they see the final status), the error translator, then access."""
    app = web.Application(
        middlewares=[
            track_connections,
            metrics_middleware,
            translator(_count_store_error),
            access_middleware,
        ],
        client_max_size=MAX_BODY,
    )
    app[ENGINE] = engine
    app[ACCESS] = access or Access(HostPolicy.build("127.0.0.1"))
    app[LIMITS] = limits or ApiLimits()
    app[GUARD] = ConnectionGuard(app[LIMITS])
    add_gateway_routes(app)
    add_openapi_route(app)
    return app
