"""Desired state: gateways, routes, instances, weights (pure, validated by pydantic).

Every string that can reach the HAProxy configuration or the Runtime API socket is
validated here, once, with an error that names the field and the reason. Every pattern
is applied with `fullmatch` (`$` would also match before a final newline) and written
with ASCII classes (`\\d` would accept any Unicode digit).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from controller.errors import shown
from controller.health.model import OnRouteDown, RoutePolicy, mode_problems
from controller.tls.options import Duration, RouteTls, TlsTermination

BASIS_POINTS = 10_000
"""100 % in basis points: weights and strengths are exact to 0.01 %."""

NAME_PATTERN = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_NAME_RE = re.compile(NAME_PATTERN)

_BALANCE_RE = re.compile(
    r"roundrobin|static-rr|leastconn|first|random|source|uri"
    r"|url_param [A-Za-z0-9_.-]{1,64}|hdr\([A-Za-z0-9_-]{1,64}\)"
)
HTTP_ONLY_BALANCE = ("uri", "url_param", "hdr(")
HASH_BALANCE = ("source", "uri", "url_param", "hdr(")
"""Hash-based algorithms: rendered with `hash-type consistent`, so slot changes move few clients."""

_HOST_RE = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*")
_REWRITE_PATH_RE = re.compile(r"/[A-Za-z0-9._~!$&()*+,;=:@/-]{0,255}")
_PERCENT_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,2})?%?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_CANONICAL_IPV4_PORT = re.compile(rf"({_OCTET}(?:\.{_OCTET}){{3}}):([0-9]{{1,5}})")
"""A dotted quad exactly as `ipaddress` writes it (no leading zeros), and a port: the common
case, parsed without `ipaddress` (a tenth of the time: 100,000 instances load in a second)."""


def _whole(pattern: re.Pattern[str], value: Any, refusal: str) -> str:
    """`value` if `pattern` matches all of it, else ValueError(`refusal`, `{}` the value)."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    raise ValueError(refusal.format(shown(value)))


def check_name(value: Any) -> str:
    """Names become parts of HAProxy proxy names and map values: a DNS-label-like alphabet."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return _whole(
        _NAME_RE,
        value,
        "invalid name {}: use 1-63 lowercase letters, digits, '-' or '_', "
        "starting and ending with a letter or digit",
    )


Name = Annotated[str, BeforeValidator(check_name)]


def parse_percent(value: Any) -> int:
    """Parse `90`, `"90%"`, `"2.5%"` or `2.5` into basis points; refuse anything inexact.

    Text must be ASCII digits with at most two decimals and an optional `%` right after
    them (`"1e-5"`, `"NaN"`, `"+5"`, `"5 %"` and full-width digits are refused); JSON
    numbers are taken as written (`2.5`, not `2.50000001`).
    """
    if isinstance(value, bool):
        raise ValueError("must be a percentage like 90, '90%' or '2.5%', not a boolean")
    if isinstance(value, int):
        if not 0 <= value <= 100:
            raise ValueError(f"{shown(value)} is outside 0-100 %")
        return value * 100
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite percentage")
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip(" ")
    else:
        raise ValueError("must be a percentage like 90, '90%' or '2.5%'")
    if not _PERCENT_RE.fullmatch(text):
        raise ValueError(
            f"{shown(value)} is not a percentage: use 0-100 with at most two decimals, "
            "like 90, '90%' or '2.5%'"
        )
    number = Decimal(text.removesuffix("%"))
    if number > 100:
        raise ValueError(f"{shown(value)} is outside 0-100 %")
    return int(number * 100)


def format_percent(points: int) -> str:
    """Basis points back to the shortest exact text: 9000 → '90%', 250 → '2.5%'."""
    text = f"{Decimal(points) / 100:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


Percent = Annotated[
    int,
    BeforeValidator(parse_percent),
    PlainSerializer(format_percent, return_type=str),
]


def _split_host_port(value: str) -> tuple[str, str]:
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"{shown(value)} is not host:port (IPv6 as [addr]:port)")
    return host, port


def _parse_port(text: str, value: str) -> int:
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"{shown(value)}: port must be 1-65535 (ASCII digits)")
    return int(text)


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """An IP literal and a port; hostnames would need resolving before the socket accepts them.

    A slotted dataclass, not a model: 100,000 instances take a quarter of the memory, and a
    gateway validated again reuses them as they are (issue 11)."""

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_address(value: Any, *, wildcard: bool = False) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a 'host:port' string")
    canonical = _CANONICAL_IPV4_PORT.fullmatch(value)
    if canonical is not None:
        ip, port = canonical.groups()
        number = int(port)  # ASCII digits, at most five: the pattern says so
        if (wildcard or ip != "0.0.0.0") and 1 <= number <= 65535:
            return Address(ip, _PORTS.setdefault(number, number))
    if not value.isascii() or not value.isprintable() or " " in value or len(value) > 64:
        raise ValueError(f"{shown(value)} is not a valid host:port")
    host, port_text = _split_host_port(value)
    port = _parse_port(port_text, value)
    if wildcard and host == "*":
        host = "0.0.0.0"
    if "%" in host:
        # HAProxy would read a zone id as part of the address, and expand `"$VAR"` in it
        raise ValueError(f"{shown(value)}: IPv6 zone ids (%...) are not supported")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{shown(value)}: host must be an IPv4 or IPv6 address (or, for an instance, a "
            "DNS name)"
        ) from None
    if ip.is_unspecified and not wildcard:
        raise ValueError(f"{shown(value)}: an instance needs a concrete address, not {host}")
    return Address(ip=str(ip), port=port)


_PORTS: dict[int, int] = {}
"""One int object per port number (at most 65,535): 100,000 instances on a few ports."""


def _parse_bind(value: Any) -> Address:
    return parse_address(value, wildcard=True)


Instance = Annotated[Address, BeforeValidator(parse_address), PlainSerializer(str, return_type=str)]
Bind = Annotated[Address, BeforeValidator(_parse_bind), PlainSerializer(str, return_type=str)]


def _distinct_instances(instances: tuple[Address, ...]) -> tuple[Address, ...]:
    if len(set(instances)) != len(instances):
        seen: set[Address] = set()
        for address in instances:
            if address in seen:
                raise ValueError(f"instance {address} is listed twice")
            seen.add(address)
    return instances


def is_instance_name(value: object) -> bool:
    """A `name:port` instance rather than an IP literal (whose errors `parse_address` words)."""
    if not isinstance(value, str) or _CANONICAL_IPV4_PORT.fullmatch(value):
        return False  # the common case, without a look at every character (issue 11)
    host = value.rpartition(":")[0]
    return bool(host) and not host.startswith("[") and any(c.isalpha() for c in host)


def check_instance_name(value: Any) -> str:
    """`api-1.internal:8080`, canonical (lower case, no final dot)."""
    from controller.discovery.names import parse_target

    return str(parse_target(value))


def check_balance(value: Any) -> str:
    """Every HAProxy algorithm that keeps working while slots are filled and emptied live."""
    return _whole(
        _BALANCE_RE,
        value,
        "unknown balance {}: use roundrobin, static-rr, leastconn, first, random, source, uri, "
        "'url_param <name>' or 'hdr(<name>)'",
    )


Balance = Annotated[str, BeforeValidator(check_balance)]


def check_condition(value: Any) -> str:
    """Parsed once here so errors point at the position; compiled by `compile`."""
    from controller.conditions import ConditionError, parse_condition

    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        parse_condition(value)
    except ConditionError as exc:
        raise ValueError(str(exc)) from None
    return value


Condition = Annotated[str, BeforeValidator(check_condition)]


def check_host(value: Any) -> str:
    """ASCII before lower-casing: `"\\u212a".lower()` is an ASCII `k`."""
    if not isinstance(value, str) or not value.isascii() or len(value) > 253:
        raise ValueError(f"{shown(value)} is not an ASCII host name of at most 253 characters")
    return _whole(
        _HOST_RE, value.lower(), "{} is not a host name (letters, digits, '-', '.'; '*.' prefix)"
    )


Host = Annotated[str, BeforeValidator(check_host)]


def check_rewrite_path(value: Any) -> str:
    """Rendered in single quotes in `http-request set-path`: no quote, `%`, `#` or space."""
    return _whole(
        _REWRITE_PATH_RE,
        value,
        "{} is not a path: '/' then up to 255 of A-Z a-z 0-9 . _ ~ ! $ & ( ) * + , ; = : @ / -",
    )


class Rewrite(BaseModel):
    """Set the request path to `path` when `condition` holds (in the route's backend)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, BeforeValidator(check_rewrite_path)]
    condition: Condition = "true"


class Route(RoutePolicy):
    """One destination of a gateway, e.g. a service version; weight None shares the rest.

    Its health checks, ejection, timeouts, retries, limits and draining are the fields of
    `RoutePolicy` (issue 12, docs/health.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: Percent | None = None
    instances: Annotated[tuple[Instance, ...], AfterValidator(_distinct_instances)] = Field(
        default=(), max_length=4096
    )
    condition: Condition | None = None
    condition_strength: Percent | None = None
    """Share of the requests matching `condition` sent here; default 100 % with a condition."""
    balance: Balance | None = None
    """Overrides the gateway's algorithm for this route's instances."""
    rewrites: tuple[Rewrite, ...] = Field(default=(), max_length=16)
    protocol: Literal["http1", "h2", "h2c"] = "http1"
    """What HAProxy speaks to the instances: HTTP/1.1, HTTP/2 over TLS (`tls` needed), or
    cleartext HTTP/2 (gRPC servers without TLS)."""
    tls: RouteTls | None = None
    """TLS to the instances, verified unless `verify: none`."""

    @property
    def server_options(self) -> str:
        """What every server line of the route's backend adds (empty: plain HTTP/1.1)."""
        if self.tls is not None:
            return self.tls.server_options("h2" if self.protocol == "h2" else None)
        return "proto h2" if self.protocol == "h2c" else ""
    names: tuple[Annotated[str, BeforeValidator(check_instance_name)], ...] = Field(
        default=(), max_length=256
    )
    """Instances given by DNS name (`api-1.internal:8080`) in `instances`: the controller
    resolves them and fills slots with their addresses (`controller.discovery.watch`).
    Written back into `instances` when serialised, so files and the API keep one list."""

    @model_validator(mode="before")
    @classmethod
    def _names_apart(cls, data: Any) -> Any:
        """`instances` may mix IP literals and names: valid names go to `names`; anything
        else stays, so that `instances.<i>` names what is wrong with it."""
        if not isinstance(data, dict) or not isinstance(data.get("instances"), list | tuple):
            return data
        literals, names = [], []
        for item in data["instances"]:
            try:
                names.append(check_instance_name(item) if is_instance_name(item) else None)
            except ValueError:
                names.append(None)
            if names[-1] is None:
                literals.append(item)
        found = [name for name in names if name is not None]
        if not found:
            return data
        return {**data, "instances": literals, "names": [*data.get("names", ()), *found]}

    @model_serializer(mode="wrap")
    def _names_in_instances(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            names = data.pop("names", ())
            if names:
                data["instances"] = [*data.get("instances", ()), *names]
        return data

    @property
    def strength(self) -> int:
        """Basis points of matching requests this route takes (0 without a condition)."""
        if self.condition is None:
            return 0
        return BASIS_POINTS if self.condition_strength is None else self.condition_strength

    @model_validator(mode="after")
    def _field_pairs(self) -> Route:
        """Rules between fields, and names listed twice (at most 256, said of the route as
        they are written in `instances`). Instances listed twice are their field's rule:
        pydantic runs a model's own validators again on every instance of it given to a model
        (each route of a gateway whose weights change), not its fields' (O(instances): 0.44
        ms of a weight change at 1,000 instances a route)."""
        if self.condition_strength is not None and self.condition is None:
            raise ValueError("condition_strength needs a condition")
        if self.protocol == "h2" and self.tls is None:
            raise ValueError("protocol h2 is HTTP/2 over TLS: set tls, or use h2c (cleartext)")
        if len(set(self.names)) != len(self.names):
            raise ValueError("an instance name is listed twice")
        return self


class GatewayTls(TlsTermination):
    """TLS on the gateway's bind; `redirect_http`: a plain HTTP bind that redirects to it."""

    redirect_http: Bind | None = None


class Gateway(BaseModel):
    """An entry point (bind address) that splits its traffic over routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: Bind
    mode: Literal["http", "tcp"] = "http"
    balance: Balance | None = None
    """Default for routes: roundrobin for http, leastconn for tcp."""
    sticky: Literal["none", "route", "instance"] = "none"
    virtual_hosts: tuple[Host, ...] = Field(default=(), max_length=64)
    routes: dict[Name, Route] = Field(default_factory=dict, max_length=256)
    split: Literal["random", "exact"] = "random"
    """How the weights pick a route: a fresh draw per request, or `exact`, a deterministic
    sequence that holds every route's share in every window of requests (docs/routing.md)."""
    tls: GatewayTls | None = None
    """TLS termination on `bind` (http gateways): certificates chosen by SNI, ALPN h2."""
    timeout_tunnel: Duration | None = None
    """Idle time a WebSocket (or any tunnel) may stay silent; HAProxy's client and server
    timeouts (30 s) when not set."""

    @property
    def tls_key(self) -> tuple[str, ...] | None:
        """What gateways sharing a bind must agree on about TLS (not their certificates)."""
        if self.tls is None:
            return None
        return (*self.tls.bind_options(), f"redirect {self.tls.redirect_http}")
    on_route_down: OnRouteDown = "redistribute"
    """When every instance of a route is down: its share goes to the others, or 503s."""

    def route_balance(self, route: Route) -> str:
        return (
            route.balance or self.balance or ("leastconn" if self.mode == "tcp" else "roundrobin")
        )

    @model_validator(mode="after")
    def _redirect_elsewhere(self) -> Gateway:
        if self.tls is not None and self.tls.redirect_http == self.bind:
            raise ValueError("tls.redirect_http must be another address than bind")
        return self

    @model_validator(mode="after")
    def _mode_rules(self) -> Gateway:
        """TCP gateways see no HTTP: refuse what would need it, naming it."""
        if self.mode != "tcp":
            return self
        if self.tls is not None:
            raise ValueError(
                "tls terminates HTTPS on http gateways; a tcp gateway passes TLS through "
                "(route it with sni conditions)"
            )
        from controller.conditions import ConditionError, compile_condition, parse_condition

        if self.sticky != "none":
            raise ValueError("sticky needs an http gateway (tcp: use balance source)")
        if self.virtual_hosts:
            raise ValueError("virtual_hosts need an http gateway")
        for name, route in self.routes.items():
            for problem in mode_problems(route, self.mode, f"routes.{name}"):
                raise ValueError(f"{problem['field']}: {problem['message']}")
            if route.rewrites:
                raise ValueError(f"route {name!r}: rewrites need an http gateway")
            if route.protocol != "http1":
                raise ValueError(f"route {name!r}: protocol {route.protocol} needs http")
            if any(self.route_balance(route).startswith(b) for b in HTTP_ONLY_BALANCE):
                raise ValueError(
                    f"route {name!r}: balance {self.route_balance(route)!r} needs http"
                )
            if route.condition is not None:
                try:
                    compile_condition(parse_condition(route.condition), "wb_check", "tcp")
                except ConditionError as exc:
                    raise ValueError(f"route {name!r}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _weights_sum(self) -> Gateway:
        declared = sum(r.weight for r in self.routes.values() if r.weight is not None)
        open_routes = [n for n, r in self.routes.items() if r.weight is None]
        if declared > BASIS_POINTS:
            raise ValueError(f"route weights sum to {format_percent(declared)}, over 100%")
        if self.routes and not open_routes and declared != BASIS_POINTS:
            raise ValueError(
                f"route weights sum to {format_percent(declared)}, they must sum to exactly 100%"
            )
        return self

    def as_json(self) -> dict[str, Any]:
        """The gateway as the API answers it and the CLI sends it: unset fields left out, but
        `health_check: none` kept. Its value is None, which `exclude_none` drops, and a
        gateway without the field validates back with the default check: a GET → PUT round
        trip turned checks back on."""
        body = self.model_dump(mode="json", exclude_none=True)
        for name, route in self.routes.items():
            if route.health_check is None:
                body["routes"][name]["health_check"] = "none"
        return body

    @property
    def has_names(self) -> bool:
        """Whether a route lists instance names: its slots follow what the DNS watch resolves,
        not the gateway alone."""
        return any(route.names for route in self.routes.values())

    def effective_weights(self) -> dict[str, int]:
        """Basis points per route; undeclared routes share the rest, the last one the remainder."""
        declared = sum(r.weight for r in self.routes.values() if r.weight is not None)
        open_routes = [n for n, r in self.routes.items() if r.weight is None]
        rest = BASIS_POINTS - declared
        share, remainder = divmod(rest, len(open_routes)) if open_routes else (0, 0)
        weights: dict[str, int] = {}
        for name, route in self.routes.items():
            if route.weight is not None:
                weights[name] = route.weight
            else:
                weights[name] = share + (remainder if name == open_routes[-1] else 0)
        return weights

    def with_weights(self, weights: Mapping[str, int]) -> Gateway:
        """The same gateway with every route's weight declared (a whole new split)."""
        routes = {
            name: route.model_copy(update={"weight": weights.get(name, 0)})
            for name, route in self.routes.items()
        }
        return self.replaced(routes=routes)

    def replaced(self, **fields: Any) -> Gateway:
        """A copy with some fields replaced, validated as a whole gateway.

        Route values given as `Route`s are taken as they are (already valid): a weight
        change does not parse a hundred instances again.
        """
        current = {name: getattr(self, name) for name in type(self).model_fields}
        return Gateway.model_validate({**current, **fields})


class Config(BaseModel):
    """The whole desired state: what the config file and the store hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateways: dict[Name, Gateway] = Field(default_factory=dict, max_length=1024)

    @model_validator(mode="after")
    def _shared_binds(self) -> Config:
        """Gateways may share a bind only when each lists its own, distinct virtual hosts."""
        hosts: dict[Address, dict[str, str]] = {}
        owners: dict[Address, str] = {}
        for name, gateway in self.gateways.items():
            other = owners.setdefault(gateway.bind, name)
            if other != name and not (gateway.virtual_hosts and self.gateways[other].virtual_hosts):
                raise ValueError(
                    f"gateways {other!r} and {name!r} both bind {gateway.bind}: "
                    "give each its virtual_hosts to share it"
                )
            if other != name and self.gateways[other].mode != gateway.mode:
                raise ValueError(f"gateways {other!r} and {name!r} share a bind but not a mode")
            if other != name and self.gateways[other].tls_key != gateway.tls_key:
                raise ValueError(
                    f"gateways {other!r} and {name!r} share a bind but not its tls settings"
                )
            seen = hosts.setdefault(gateway.bind, {})
            for host in gateway.virtual_hosts:
                if host in seen and seen[host] != name:
                    raise ValueError(f"host {host!r} is in gateways {seen[host]!r} and {name!r}")
                seen[host] = name
        return self

    def by_bind(self) -> dict[Address, list[str]]:
        """Gateways per bind address, in declaration order: one HAProxy frontend each."""
        groups: dict[Address, list[str]] = {}
        for name, gateway in self.gateways.items():
            groups.setdefault(gateway.bind, []).append(name)
        return groups

    def with_gateway(self, name: str, gateway: Gateway | None) -> Config:
        """A new Config with one gateway replaced, added (or removed when None), re-validated."""
        gateways = {n: g.model_dump() for n, g in self.gateways.items()}
        if gateway is None:
            gateways.pop(name, None)
        else:
            gateways[name] = gateway.model_dump()
        return Config.model_validate({"gateways": gateways})


def acl_policy_problems(config: Config, *, allow_unsafe: bool) -> list[dict[str, str]]:
    """Raw ACLs this deployment refuses (see `conditions.policy`), as `{field, message}`."""
    if allow_unsafe:
        return []
    return [p for name, g in config.gateways.items() for p in gateway_acl_problems(name, g)]


def gateway_acl_problems(name: str, gateway: Gateway) -> list[dict[str, str]]:
    """The raw ACLs of one gateway that the default policy refuses."""
    from controller.conditions import ConditionError, parse_condition
    from controller.conditions.policy import check_acl_policy

    problems = []
    for route_name, route in gateway.routes.items():
        field = f"gateways.{name}.routes.{route_name}"
        conditions = [(f"{field}.condition", route.condition)]
        conditions += [
            (f"{field}.rewrites.{i}.condition", r.condition) for i, r in enumerate(route.rewrites)
        ]
        for where, condition in conditions:
            if condition is None:
                continue
            try:
                check_acl_policy(parse_condition(condition))
            except ConditionError as exc:
                problems.append({"field": where, "message": str(exc)})
    return problems


def validation_problems(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as `{field, message}` pairs a person can act on."""
    problems = []
    for error in exc.errors():
        location = ".".join(
            str(part) for part in error["loc"] if part not in ("function-after", "[key]")
        )
        field = ".".join(p for p in (prefix, location) if p)
        message = error["msg"].removeprefix("Value error, ")
        problems.append({"field": field or "(body)", "message": message})
    return problems
