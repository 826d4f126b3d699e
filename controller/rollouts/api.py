"""REST endpoints under /api/v1/rollouts; handlers only translate HTTP to the manager.

| method and path | what |
|---|---|
| `POST /rollouts` | start one (`?dry_run=true`: validate and show the plan) → 201 |
| `GET /rollouts` | all (`?gateway=NAME`, `?active=true`) |
| `GET /rollouts/{id}` | one: phase, step, weights, last check, events |
| `POST /rollouts/{id}/pause`, `…/resume`, `…/promote`, `…/abort` | commands, at any time |
"""

from __future__ import annotations

import re
from typing import Literal, cast

from aiohttp import web
from pydantic import ValidationError

from controller.api import ApiError, dry_run_flag, read_json_body
from controller.errors import (
    ConflictingState,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unavailable,
    WeighbridgeError,
)
from controller.model import validation_problems
from controller.rollouts.manager import RolloutManager
from controller.rollouts.spec import RolloutSpec

ROLLOUTS = web.AppKey("rollouts", RolloutManager)
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
ACTIONS = ("pause", "resume", "promote", "abort")
_STATUS: tuple[tuple[type[WeighbridgeError], int], ...] = (
    (InvalidInput, 400),
    (NotFound, 404),
    (ConflictingState, 409),
    (PreconditionFailed, 412),
    (TooLarge, 413),
    (Unavailable, 503),
)
"""Until controller.api translates the tree of controller/errors.py itself (then: remove)."""


def _api_error(exc: WeighbridgeError) -> ApiError:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    return ApiError(status, exc.message, exc.problems)


def _rollout_id(request: web.Request) -> str:
    value = request.match_info["rollout"]
    if not _ID.fullmatch(value):
        raise ApiError(400, "invalid rollout id", [{"field": "rollout", "message": "not an id"}])
    return value


async def create_rollout(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    dry_run = dry_run_flag(request)
    try:
        spec = RolloutSpec.model_validate(body)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ApiError(400, f"invalid {problems[0]['field']}", problems) from None
    try:
        view = await request.app[ROLLOUTS].create(spec, dry_run=dry_run)
    except WeighbridgeError as exc:
        raise _api_error(exc) from None
    return web.json_response(view, status=200 if dry_run else 201)


async def list_rollouts(request: web.Request) -> web.Response:
    manager = request.app[ROLLOUTS]
    gateway = request.query.get("gateway")
    active = request.query.get("active", "").lower() in ("true", "1")
    selected = [
        r
        for r in manager.rollouts()
        if (gateway is None or r.gateway == gateway) and not (active and r.terminal)
    ]
    return web.json_response({"rollouts": await manager.views(selected)})


async def get_rollout(request: web.Request) -> web.Response:
    try:
        return web.json_response(await request.app[ROLLOUTS].view(_rollout_id(request)))
    except WeighbridgeError as exc:
        raise _api_error(exc) from None


async def command_rollout(request: web.Request) -> web.Response:
    rollout_id = _rollout_id(request)
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise ApiError(404, f"no action {action!r}: use one of {', '.join(ACTIONS)}")
    kind = cast(Literal["pause", "resume", "promote", "abort"], action)
    try:
        view = await request.app[ROLLOUTS].command(rollout_id, kind)
    except TimeoutError:
        raise ApiError(
            503, f"rollout {rollout_id} has not handled {action} yet: it stays queued"
        ) from None
    except WeighbridgeError as exc:
        error = _api_error(exc)
        error.message = f"{action} refused: {exc.message}"
        raise error from None
    return web.json_response(view)


def add_rollout_routes(app: web.Application, manager: RolloutManager) -> None:
    app[ROLLOUTS] = manager
    base = "/api/v1/rollouts"
    app.router.add_post(base, create_rollout)
    app.router.add_get(base, list_rollouts)
    app.router.add_get(base + "/{rollout}", get_rollout)
    app.router.add_post(base + "/{rollout}/{action}", command_rollout)
