"""Changes to one gateway, as typed values (pure).

The API, the rollout runner and `apply` all say what they want as an edit; the engine applies
it to the gateway's current record under that gateway's lock. An edit raises the kinds of
`controller.errors` (NotFound, InvalidInput naming the field, PreconditionFailed): nothing in
the engine speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from controller.desired import Record
from controller.errors import InvalidInput, NotFound, PreconditionFailed
from controller.model import Gateway, Route, validation_problems

T = TypeVar("T")


@dataclass(frozen=True)
class IfMatch:
    """A precondition on the gateway's revision (its ETag): any of `revisions`, or, with
    `exists`, any revision at all (`If-Match: *`)."""

    revisions: frozenset[int] = frozenset()
    exists: bool = False

    def check(self, record: Record | None) -> None:
        if record is not None and (self.exists or record.revision in self.revisions):
            return
        raise PreconditionFailed(
            "the gateway changed since it was read (If-Match does not match)",
            [{"field": "If-Match", "message": "stale"}],
        )


class Edit(Protocol):
    """What every edit has: the gateway it changes, and an optional precondition."""

    @property
    def gateway(self) -> str: ...

    @property
    def if_match(self) -> IfMatch | None: ...

    def apply(self, current: Gateway | None) -> Gateway | None:
        """The gateway after the edit (None: deleted); raises to refuse it."""


def edited(edit: Edit, record: Record | None) -> Gateway | None:
    """Check the edit's precondition against the stored record, then apply it."""
    if edit.if_match is not None:
        edit.if_match.check(record)
    return edit.apply(record.gateway if record else None)


def existing(name: str, current: Gateway | None) -> Gateway:
    if current is None:
        raise NotFound(f"no gateway {name!r}", [{"field": "gateway", "message": "unknown"}])
    return current


def validated(build: Callable[[], T], prefix: str) -> T:
    """`build()`, its pydantic errors as InvalidInput whose fields start with `prefix`."""
    try:
        return build()
    except ValidationError as exc:
        problems = validation_problems(exc, prefix)
        raise InvalidInput(f"invalid {problems[0]['field']}", problems) from None


def _unknown_routes(gateway: str, routes: list[str], field: Callable[[str], str]) -> NotFound:
    return NotFound(
        f"gateway {gateway!r} has no route {routes[0]!r}",
        [{"field": field(r), "message": "unknown route"} for r in routes],
    )


@dataclass(frozen=True)
class PutGateway:
    """Create or replace a gateway (already validated as a gateway on its own)."""

    gateway: str
    value: Gateway
    if_match: IfMatch | None = None

    def apply(self, current: Gateway | None) -> Gateway | None:
        return self.value


@dataclass(frozen=True)
class DeleteGateway:
    gateway: str
    if_match: IfMatch | None = None

    def apply(self, current: Gateway | None) -> Gateway | None:
        existing(self.gateway, current)
        return None


@dataclass(frozen=True)
class SetWeights:
    """The whole new split in basis points; routes left out get 0 %."""

    gateway: str
    weights: Mapping[str, int]
    if_match: IfMatch | None = None

    def apply(self, current: Gateway | None) -> Gateway | None:
        gateway = existing(self.gateway, current)
        unknown = sorted(set(self.weights) - set(gateway.routes))
        if unknown:
            raise _unknown_routes(self.gateway, unknown, lambda r: f"weights.{r}")
        return validated(lambda: gateway.with_weights(self.weights), "weights")


@dataclass(frozen=True)
class EditRoute:
    """Some fields of one route, in the config file's shape (`{"condition_strength": "20%"}`)."""

    gateway: str
    route: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    if_match: IfMatch | None = None

    def apply(self, current: Gateway | None) -> Gateway | None:
        gateway = existing(self.gateway, current)
        route = gateway.routes.get(self.route)
        if route is None:
            raise _unknown_routes(self.gateway, [self.route], lambda _: "route")
        return replace_route(gateway, self.route, route, dict(self.fields), "")


@dataclass(frozen=True)
class SetInstances:
    """A route's whole list of instances (`["host:port", …]`)."""

    gateway: str
    route: str
    instances: tuple[Any, ...]
    if_match: IfMatch | None = None

    def apply(self, current: Gateway | None) -> Gateway | None:
        edit = EditRoute(self.gateway, self.route, {"instances": self.instances})
        return edit.apply(current)


def replace_route(
    gateway: Gateway, name: str, route: Route, changes: dict[str, Any], prefix: str
) -> Gateway:
    """`gateway` with some fields of route `name` changed, both validated again (errors named
    `routes.<name>.<field>` after `prefix`); the other routes are kept as they are. The route
    is taken in the config file's shape (percentages as text), its instances as parsed."""
    instances = (*route.instances, *route.names)  # names are instances too, by name
    current = {**route.model_dump(mode="json", exclude={"instances"}), "instances": instances}
    where = ".".join(p for p in (prefix, "routes", name) if p)
    updated = validated(lambda: Route.model_validate({**current, **changes}), where)
    routes = {**gateway.routes, name: updated}
    return validated(lambda: gateway.replaced(routes=routes), prefix)
