"""Vamp gateway definitions → our gateways (pure), with a note for all that does not carry over.

Accepted: what Vamp's gateway API and blueprints accept (magneticio/vamp, model/src/main/
scala/io/vamp/model/reader/GatewayReader.scala): a gateway (`name`, `port` as `9050`,
`"9050/http"` or `"9050/tcp"`, `sticky`, `virtual_hosts`, `routes`), a list of them (the API's
listing), or a blueprint's `gateways` (port → route name or gateway). Routes come as a map of
names, a list of names or one-entry maps, or a single name; a route has `weight`,
`condition` (a string, or an object with `condition`), `condition_strength`, `rewrites`
(`"NEW_PATH if CONDITION"`), `balance`, older `filters`/`filter_strength`, and in the API's
output `instances`/`targets`. Conditions are kept as written: our grammar reads Vamp's.

Vamp routes name deployments or services, not addresses: their instances come from the
caller (`instances`, by Vamp route name or by our name), or from a `[ip:port]` route name.
A note with `lost=True` means routing here may differ from Vamp's until it is dealt with.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from controller.conditions import ConditionError, Expr, Kind, format_condition, parse_condition
from controller.conditions.syntax import atoms
from controller.errors import InvalidInput
from controller.model import Config, Rewrite, check_balance, validation_problems

__all__ = ["Note", "VampImport", "import_vamp", "slug"]

_GATEWAY_FIELDS = {"name", "port", "sticky", "virtual_hosts", "routes", "service"}
_ROUTE_FIELDS = {"weight", "condition", "condition_strength", "filters", "filter_strength"}
_ROUTE_FIELDS |= {"rewrites", "balance", "instances", "targets"}
_BOOKKEEPING = {"kind", "lookup_name", "active", "deployed", "internal", "metadata", "name"}
"""What Vamp's API adds to what it returns: nothing to route by."""
_STICKY = {None: "none", "none": "none", "route": "route", "service": "route"}
_STICKY |= {"instance": "instance"}
_PORT = re.compile(r"([0-9]{1,5})(/(http|tcp))?", re.IGNORECASE)
_EXTERNAL = re.compile(r"\[(.+):([0-9]{1,5})\]")
_REWRITE = re.compile(r"(\S+)\s+if\s+(.+)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Note:
    where: str
    message: str
    lost: bool
    """True: something Vamp routed by is not carried over (routing may differ)."""

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class VampImport:
    config: Config
    notes: tuple[Note, ...]

    @property
    def complete(self) -> bool:
        return not any(note.lost for note in self.notes)


def slug(name: str, taken: Iterable[str] = ()) -> str:
    """`name` in our alphabet (lower-case letters, digits, `-`, `_`), not one of `taken`."""
    base = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:60].strip("-_") or "route"
    candidate, n = base, 1
    while candidate in set(taken):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def import_vamp(
    documents: Sequence[Any],
    *,
    instances: Mapping[str, Sequence[str]] | None = None,
    bind_host: str = "127.0.0.1",
    default_name: str = "gateway",
) -> VampImport:
    """Our gateways for Vamp's `documents` (YAML/JSON documents of one file).

    Raises InvalidInput when nothing sensible can be produced: a document that is not a
    Vamp gateway, a gateway without a port, a result our model refuses (e.g. weights that
    do not sum to 100 %), or `instances` for a route the file does not have.
    """
    importer = _Importer(dict(instances or {}), bind_host)
    for vamp_name, body in _gateway_bodies(documents, default_name, importer.notes):
        importer.gateway(vamp_name, body)
    unused = set(importer.instances) - importer.used_instances
    if unused:
        raise InvalidInput.for_field("instances", f"no route {sorted(unused)[0]!r} in the file")
    try:
        config = Config.model_validate({"gateways": importer.gateways})
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise InvalidInput("the imported gateways are invalid here", problems) from exc
    return VampImport(config, tuple(importer.notes))


def _gateway_bodies(
    documents: Sequence[Any], default_name: str, notes: list[Note]
) -> list[tuple[str, Any]]:
    """(Vamp name, gateway body) for every gateway the documents define."""
    found: list[tuple[str, Any]] = []
    for number, document in enumerate(documents, 1):
        items = document if isinstance(document, list) else [document]
        for item in items:
            if not isinstance(item, dict) or not ({"port", "routes", "gateways"} & set(item)):
                raise InvalidInput(
                    f"document {number} is not a Vamp gateway (a mapping with port and routes)"
                )
            if "gateways" in item and "port" not in item:  # a blueprint
                found += _blueprint_gateways(item, default_name, notes)
            else:
                name = item.get("name")
                found.append((name if isinstance(name, str) else default_name, item))
    if not found:
        raise InvalidInput("the file holds no Vamp gateway")
    return found


def _blueprint_gateways(
    blueprint: dict[str, Any], default_name: str, notes: list[Note]
) -> list[tuple[str, Any]]:
    gateways = blueprint["gateways"]
    if not isinstance(gateways, dict):
        raise InvalidInput.for_field("gateways", "expected a mapping of ports to gateways")
    name = blueprint.get("name") if isinstance(blueprint.get("name"), str) else default_name
    clusters = blueprint.get("clusters")
    if isinstance(clusters, dict):
        where = f"blueprint {name!r}"
        notes.append(Note(where, "clusters (what Vamp deploys) are not imported", lost=False))
        for cluster, body in clusters.items():
            if isinstance(body, dict) and body.get("gateways"):
                message = "its gateway (the split between its services) is not imported"
                notes.append(Note(f"{where} cluster {cluster!r}", message, lost=True))
    found: list[tuple[str, Any]] = []
    for port, body in gateways.items():
        if isinstance(body, str):  # `9050/http: sava/port`
            body = {"routes": {body: {"weight": "100%"}}}
        if not isinstance(body, dict):
            raise InvalidInput.for_field(f"gateways.{port}", "expected a route or a gateway")
        found.append((f"{name}/{str(port).partition('/')[0]}", {**body, "port": port}))
    return found


class _Importer:
    def __init__(self, instances: dict[str, Sequence[str]], bind_host: str) -> None:
        self.instances = instances
        self.used_instances: set[str] = set()
        self.bind_host = bind_host
        self.gateways: dict[str, dict[str, Any]] = {}
        self.notes: list[Note] = []

    def note(self, where: str, message: str, *, lost: bool) -> None:
        self.notes.append(Note(where, message, lost))

    def gateway(self, vamp_name: str, body: dict[str, Any]) -> None:
        name = slug(vamp_name, self.gateways)
        where = f"gateway {vamp_name!r}"
        if name != vamp_name:
            self.note(where, f"named {name!r} here", lost=False)
        port, mode = _port(body.get("port"), where)
        sticky = body.get("sticky")
        if sticky not in _STICKY:
            raise InvalidInput.for_field(f"{where}.sticky", "expected none, route or instance")
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        gateway: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "mode": mode,
            "sticky": _STICKY[sticky],
            "routes": {},
        }
        if mode == "tcp" and gateway["sticky"] != "none":
            raise InvalidInput.for_field(f"{where}.sticky", "sticky needs an http port")
        self.virtual_hosts(vamp_name, body.get("virtual_hosts"), where)
        if "service" in body:
            self.note(where, "service (Vamp's address for the gateway) is not imported", lost=False)
        self.unknown(body, _GATEWAY_FIELDS, where)
        for route_name, route in _routes(body.get("routes"), where):
            our_name = slug(route_name, gateway["routes"])
            route_where = f"{where} route {route_name!r}"
            if our_name != route_name:
                self.note(route_where, f"named {our_name!r} here", lost=False)
            gateway["routes"][our_name] = self.route(route_name, our_name, route, route_where)
        self.gateways[name] = gateway

    def virtual_hosts(self, vamp_name: str, hosts: Any, where: str) -> None:
        hosts = [hosts] if isinstance(hosts, str) else hosts or []
        derived = ".".join(reversed(vamp_name.split("/"))) + "."
        for host in hosts:
            origin = (
                "Vamp derived it from the gateway name" if str(host).startswith(derived) else ""
            )
            self.note(
                f"{where} virtual host {host!r}",
                "not imported: Vamp served it on its shared port 80 besides the gateway's own "
                "port, which answered every host; here virtual_hosts would refuse other hosts"
                + (f" ({origin})" if origin else ""),
                lost=True,
            )

    def unknown(self, body: dict[str, Any], known: set[str], where: str) -> None:
        for field in sorted(set(body) - known - _BOOKKEEPING, key=str):
            self.note(where, f"unknown field {field!r} not imported", lost=True)

    def route(self, vamp_name: str, name: str, body: Any, where: str) -> dict[str, Any]:
        if isinstance(body, str):
            self.note(where, f"refers to a stored route {body!r}: not imported", lost=True)
            body = {}
        body = body or {}
        if not isinstance(body, dict):
            raise InvalidInput.for_field(where, "expected a mapping")
        self.unknown(body, _ROUTE_FIELDS, where)
        route: dict[str, Any] = {"instances": self.route_instances(vamp_name, name, body, where)}
        if body.get("weight") is not None:
            route["weight"] = body["weight"]
        if body.get("balance") == "default":
            self.note(f"{where} balance", "'default': the gateway's default applies", lost=False)
        elif body.get("balance") is not None:
            try:
                route["balance"] = check_balance(body["balance"])
            except ValueError as exc:
                self.note(f"{where} balance", f"not imported: {exc}", lost=True)
        condition = self.route_condition(body, where)
        strength = body.get("condition_strength", body.get("filter_strength"))
        if condition:
            route["condition"] = condition
            if strength is not None:
                route["condition_strength"] = strength
        elif strength is not None and condition is None:
            self.note(where, "condition_strength without a condition: ignored", lost=False)
        route["rewrites"] = self.rewrites(body.get("rewrites"), f"{where} rewrite")
        return route

    def route_condition(self, body: dict[str, Any], where: str) -> str | Literal[False] | None:
        """The condition as written; older `filters` are ANDed, as Vamp did. False: lost."""
        found: list[tuple[str, Expr]] = []
        for key in ("condition", "filters"):
            value = body.get(key)
            for item in value if key == "filters" and isinstance(value, list) else [value]:
                if key == "filters" and isinstance(item, str) and len(item.split()) == 1:
                    self.note(f"{where} filters", f"refers to a stored filter {item!r}", lost=True)
                    return False
                condition = self.condition(item, f"{where} {key}")
                if condition is False:
                    return False
                if condition is not None:
                    found.append(condition)
        if len(found) > 1:
            return " and ".join(f"({format_condition(expr)})" for _, expr in found)
        return found[0][0] if found else None

    def condition(self, value: Any, where: str) -> tuple[str, Expr] | Literal[False] | None:
        """The text and its meaning; None if there is none; False if it cannot be carried."""
        if isinstance(value, dict):
            if "condition" not in value:
                self.note(where, "refers to a stored condition: not imported", lost=True)
                return False
            value = value["condition"]
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidInput.for_field(where, "expected a condition string")
        try:
            expr = parse_condition(value)
        except ConditionError as exc:
            self.note(where, f"not imported: {exc}", lost=True)
            return False
        self.explain(expr, where)
        return value, expr

    def explain(self, expr: Expr, where: str) -> None:
        kinds = {atom.kind for atom in atoms(expr)}
        if Kind.BROWSER in kinds:
            self.note(
                where,
                "a browser name means that browser here (docs/routing.md); Vamp tested a "
                "substring, so e.g. Edge and Opera were also Chrome",
                lost=False,
            )
        if Kind.RAW in kinds:
            self.note(where, "holds a raw HAProxy ACL, passed through as written", lost=False)

    def rewrites(self, value: Any, where: str) -> list[dict[str, str]]:
        """Vamp's `NEW_PATH if CONDITION`, where our path and condition can say it."""
        found: list[dict[str, str]] = []
        for item in value if isinstance(value, list) else [] if value is None else [value]:
            text = item.get("path") if isinstance(item, dict) else item
            match = _REWRITE.fullmatch(text.strip()) if isinstance(text, str) else None
            if match is None:
                self.note(where, "not imported: expected 'NEW_PATH if CONDITION'", lost=True)
                continue
            condition = self.condition(match.group(2), where)
            if not condition:
                continue
            try:
                rewrite = Rewrite(path=match.group(1), condition=condition[0])
            except ValidationError as exc:
                reason = validation_problems(exc)[0]["message"]
                self.note(where, f"not imported: path {match.group(1)!r}: {reason}", lost=True)
                continue
            found.append(rewrite.model_dump())
        return found

    def route_instances(
        self, vamp_name: str, name: str, body: dict[str, Any], where: str
    ) -> list[str]:
        for key in (vamp_name, name):
            if key in self.instances:
                self.used_instances.add(key)
                return list(self.instances[key])
        external = _EXTERNAL.fullmatch(vamp_name)
        if external:
            address = _address(external.group(1), external.group(2))
            if address:
                return [address]
            self.note(where, "a host name: give its address with --instances", lost=True)
            return []
        listed = [*_as_list(body.get("instances")), *_as_list(body.get("targets"))]
        addresses = [_instance(item) for item in listed]
        if listed and all(addresses):
            return [a for a in addresses if a]
        self.note(
            where,
            "Vamp routes to a deployment or service here; give its instances with "
            f"--instances '{vamp_name}=IP:PORT,…' (it has none: its requests get a 503)",
            lost=True,
        )
        return []


def _port(value: Any, where: str) -> tuple[int, str]:
    match = _PORT.fullmatch(str(value).strip()) if value is not None else None
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise InvalidInput.for_field(f"{where}.port", "expected a port like 9050 or '9050/http'")
    return int(match.group(1)), (match.group(3) or "http").lower()


def _routes(value: Any, where: str) -> list[tuple[str, Any]]:
    """(name, body) pairs from Vamp's shapes: a map, a list of names or maps, one name."""
    if value is None:
        return []
    if isinstance(value, str):
        return [(value, None)]
    if isinstance(value, dict):
        return [(str(name), body) for name, body in value.items()]
    if isinstance(value, list):
        found: list[tuple[str, Any]] = []
        for item in value:
            found += _routes(item, where)
        return found
    raise InvalidInput.for_field(f"{where}.routes", "expected a map, a list or a name")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _address(host: str, port: str) -> str | None:
    host = "127.0.0.1" if host == "localhost" else host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _instance(item: Any) -> str | None:
    """`{host, port}` or `"host:port"` from Vamp's output, if the host is an address."""
    if isinstance(item, dict):
        return _address(str(item.get("host")), str(item.get("port")))
    if isinstance(item, str):
        host, _, port = item.rpartition(":")
        return _address(host, port) if port.isdigit() else None
    return None
