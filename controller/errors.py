"""The controller's expected failures, one tree: each layer raises these, the API translates.

A class says what kind of failure it is, not how HTTP answers it: `controller.api`'s
translator maps the kinds to status codes in one place. Anything that is not a
`WeighbridgeError` is a bug (a 500 with a trace id in the log).
"""

from __future__ import annotations


def shown(value: object, limit: int = 60) -> str:
    """A value as error messages quote it: `repr` (control characters escaped), bounded."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WeighbridgeError(Exception):
    """Base of every expected failure. `problems` are `{field, message}` pairs, if any."""

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class InvalidInput(WeighbridgeError):
    """The request or file is refused as written; nothing was stored or applied."""

    @classmethod
    def for_field(cls, field: str, message: str) -> InvalidInput:
        return cls(f"invalid {field}: {message}", [{"field": field, "message": message}])


class NotFound(WeighbridgeError):
    """The named object (gateway, route, rollout) does not exist."""


class ConflictingState(WeighbridgeError):
    """The change cannot apply to the current state (a concurrent write, a rollout's phase)."""


class PreconditionFailed(WeighbridgeError):
    """The caller's view is stale (If-Match did not match)."""


class TooLarge(WeighbridgeError):
    """A size bound or the overall budget would be exceeded."""


class Unavailable(WeighbridgeError):
    """HAProxy, the store or the disk cannot do it now; the desired state is unchanged."""
