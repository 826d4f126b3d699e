"""Desired state: gateways, routes, instances, weights (pure, validated by pydantic).

Every string that can reach the HAProxy configuration or the Runtime API socket is
validated here, once, with an error that names the field and the reason.
"""

from __future__ import annotations

import ipaddress
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

BASIS_POINTS = 10_000
"""100 % in basis points: weights and strengths are exact to 0.01 %."""

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

BALANCE_ALGORITHMS = ("roundrobin", "leastconn", "random", "first", "source", "uri")
"""Algorithms that keep working while the controller fills and empties server slots live."""


def check_name(value: Any) -> str:
    """Names become parts of HAProxy proxy names and map values: a DNS-label-like alphabet."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid name {value!r}: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit"
        )
    return value


Name = Annotated[str, BeforeValidator(check_name)]


def parse_percent(value: Any) -> int:
    """Parse `90`, `"90%"`, `"2.5%"` or `2.5` into basis points; refuse anything inexact."""
    if isinstance(value, bool):
        raise ValueError("must be a percentage like 90, '90%' or '2.5%', not a boolean")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite percentage")
    if isinstance(value, int | float):
        text = repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
    else:
        raise ValueError("must be a percentage like 90, '90%' or '2.5%'")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a percentage") from None
    if not number.is_finite():
        raise ValueError("must be a finite percentage")
    if number < 0 or number > 100:
        raise ValueError(f"{value!r} is outside 0-100 %")
    points = number * 100
    if points != points.to_integral_value():
        raise ValueError(f"{value!r} has more than two decimals (precision is 0.01 %)")
    return int(points)


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
        raise ValueError(f"{value!r} is not host:port (IPv6 as [addr]:port)")
    return host, port


def _parse_port(text: str, value: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return int(text)


class Address(BaseModel):
    """An IP literal and a port; hostnames would need resolving before the socket accepts them."""

    model_config = ConfigDict(frozen=True)

    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_address(value: Any, *, wildcard: bool = False) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a 'host:port' string")
    if not value.isascii() or any(c.isspace() for c in value) or len(value) > 64:
        raise ValueError(f"{value!r} is not a valid host:port")
    host, port_text = _split_host_port(value)
    port = _parse_port(port_text, value)
    if wildcard and host == "*":
        host = "0.0.0.0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: host must be an IPv4 or IPv6 address") from None
    if ip.is_unspecified and not wildcard:
        raise ValueError(f"{value!r}: an instance needs a concrete address, not {host}")
    return Address(ip=str(ip), port=port)


def _parse_bind(value: Any) -> Address:
    return parse_address(value, wildcard=True)


Instance = Annotated[Address, BeforeValidator(parse_address), PlainSerializer(str, return_type=str)]
Bind = Annotated[Address, BeforeValidator(_parse_bind), PlainSerializer(str, return_type=str)]
Balance = Literal["roundrobin", "leastconn", "random", "first", "source", "uri"]


class Route(BaseModel):
    """One destination of a gateway, e.g. a service version; weight None shares the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: Percent | None = None
    instances: tuple[Instance, ...] = Field(default=(), max_length=4096)

    @model_validator(mode="after")
    def _unique_instances(self) -> Route:
        seen: set[Address] = set()
        for address in self.instances:
            if address in seen:
                raise ValueError(f"instance {address} is listed twice")
            seen.add(address)
        return self


class Gateway(BaseModel):
    """An entry point (bind address) that splits its traffic over routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: Bind
    mode: Literal["http"] = "http"
    balance: Balance = "roundrobin"
    routes: dict[Name, Route] = Field(default_factory=dict, max_length=256)

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

    def with_weights(self, weights: dict[str, int]) -> Gateway:
        """The same gateway with every route's weight declared (a whole new split)."""
        routes = {
            name: route.model_copy(update={"weight": weights.get(name, 0)})
            for name, route in self.routes.items()
        }
        return Gateway.model_validate({**self.model_dump(), "routes": _dump_routes(routes)})

    def with_instances(self, route: str, instances: list[Any]) -> Gateway:
        data = self.model_dump()
        data["routes"][route]["instances"] = instances
        return Gateway.model_validate(data)


def _dump_routes(routes: dict[str, Route]) -> dict[str, Any]:
    return {name: route.model_dump() for name, route in routes.items()}


class Config(BaseModel):
    """The whole desired state: what the config file and the store hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateways: dict[Name, Gateway] = Field(default_factory=dict, max_length=1024)

    @model_validator(mode="after")
    def _unique_binds(self) -> Config:
        owners: dict[Address, str] = {}
        for name, gateway in self.gateways.items():
            if gateway.bind in owners:
                raise ValueError(
                    f"gateways {owners[gateway.bind]!r} and {name!r} both bind {gateway.bind}"
                )
            owners[gateway.bind] = name
        return self

    def with_gateway(self, name: str, gateway: Gateway | None) -> Config:
        """A new Config with one gateway replaced, added (or removed when None), re-validated."""
        gateways = {n: g.model_dump() for n, g in self.gateways.items()}
        if gateway is None:
            gateways.pop(name, None)
        else:
            gateways[name] = gateway.model_dump()
        return Config.model_validate({"gateways": gateways})


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
