"""The one translator from failures to HTTP answers, and the shape every error answer has.

Expected failures are `controller.errors` kinds; their HTTP status is decided here and only
here. Anything else is a bug: it answers 500 with a trace id that is also logged with the
traceback, and never with the exception's text (it may hold paths, file contents or worse).
Every JSON answer ends with a newline, whoever built it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

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
from controller.process import InvalidConfig
from controller.store import StoreError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Problems = list[dict[str, str]]

# Order matters: a class may be two kinds (InvalidConfig is Unavailable and InvalidInput);
# the first kind listed wins, so the caller's fault goes before "try again later".
STATUS_BY_KIND: tuple[tuple[type[WeighbridgeError], int], ...] = (
    (InvalidInput, 400),
    (NotFound, 404),
    (ConflictingState, 409),
    (PreconditionFailed, 412),
    (TooLarge, 413),
    (Unavailable, 503),
)

# Answers after which the rest of the request is not worth reading (an unread body would
# otherwise be drained for up to aiohttp's lingering time).
_CLOSE_AFTER = frozenset({408, 413})


class ApiError(WeighbridgeError):
    """A refusal only HTTP has words for (401, 403, 408, 415, 421), with its own status."""

    def __init__(
        self,
        status: int,
        message: str,
        problems: Problems | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, problems)
        self.status = status
        self.headers = dict(headers or {})


def http_status(exc: WeighbridgeError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    for kind, status in STATUS_BY_KIND:
        if isinstance(exc, kind):
            return status
    return 500  # a WeighbridgeError of no kind: a bug in the code that raised it


def dumps(body: Any) -> str:
    """JSON text as every answer carries it: ending with a newline, for terminals and `jq`."""
    return json.dumps(body) + "\n"


def error_response(
    status: int,
    message: str,
    problems: Problems | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The documented error shape: `{"error": …, "problems": [{"field", "message"}]}`."""
    response = web.json_response(
        {"error": message, "problems": problems or []}, status=status, dumps=dumps
    )
    response.headers.update(headers or {})
    if status in _CLOSE_AFTER:
        response.force_close()
    return response


def _http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) in our shape."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    field, message = {
        404: ("(path)", "no such endpoint"),
        413: ("(body)", "too large"),
        405: ("(method)", f"allowed: {exc.headers.get('Allow', 'none')}"),
    }.get(exc.status, ("(request)", exc.reason))
    return error_response(exc.status, exc.reason, [{"field": field, "message": message}], headers)


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    trace = secrets.token_hex(8)
    log.error("%s %r failed (trace %s)", request.method, request.path, trace, exc_info=exc)
    return error_response(
        500,
        f"internal error, trace id {trace}: the controller's log has the details",
        [{"field": "(server)", "message": f"trace id {trace}"}],
    )


def end_with_newline(response: web.StreamResponse) -> web.StreamResponse:
    """Make a JSON answer built elsewhere (e.g. `web.json_response`) end with a newline."""
    if (
        isinstance(response, web.Response)
        and response.content_type == "application/json"
        and isinstance(response.body, bytes)
        and not response.body.endswith(b"\n")
    ):
        response.body = response.body + b"\n"
    return response


def translator(on_store_error: Callable[[web.Request], None]) -> Callable[..., Any]:
    """The errors middleware; `on_store_error` counts store failures for the metrics."""

    @web.middleware
    async def translate_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return end_with_newline(await handler(request))
        except WeighbridgeError as exc:
            status = http_status(exc)
            if status == 500:
                return _unexpected(request, exc)
            if status == 503:
                if isinstance(exc, StoreError):
                    on_store_error(request)
                log.warning("%s %r not applied: %s", request.method, request.path, exc.message)
            headers = exc.headers if isinstance(exc, ApiError) else None
            message = exc.message
            if isinstance(exc, InvalidConfig):  # its message is HAProxy's words: say whose
                message = f"HAProxy refused the configuration: {message}"
            return error_response(status, message, exc.problems, headers)
        except ValidationError as exc:
            problems = validation_problems(exc)
            return error_response(400, f"invalid {problems[0]['field']}", problems)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_exception(exc)
        except Exception as exc:  # every other failure is a bug: say so, log it, keep serving
            return _unexpected(request, exc)

    return translate_errors
