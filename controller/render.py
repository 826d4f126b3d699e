"""Layout → HAProxy configuration text, and the fingerprint of its structure (pure).

Rule order in a frontend (the documented order in which routes are chosen):
1. an unknown Host on a gateway with `virtual_hosts`: 404;
2. sticky gateways: a client's route cookie, if that route still has weight;
3. routes with a condition, in declaration order: a matching request goes to the route with
   probability `condition_strength` (a fresh draw per route), else it falls through;
4. the weights: `rand(10000)` over the map of basis-point ranges.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from controller.compile import (
    PLACEHOLDER,
    BackendLayout,
    GatewayLayout,
    Layout,
    MapEntries,
    frontend_name,
    no_route_backend,
)
from controller.errors import InvalidInput, shown
from controller.model import BASIS_POINTS, Address

STRUCTURE_MARK = "# weighbridge-structure: "
ROUTE_COOKIE_PREFIX = "wb_"


@dataclass(frozen=True)
class RenderSettings:
    """Process-level paths and limits; validated by the shell before they get here."""

    admin_socket: str
    attached: bool = False
    stats_bind: Address | None = None
    """Where HAProxy serves its own Prometheus exporter (`/metrics`)."""
    stats_page: bool = False
    """Also HAProxy's stats page (`/stats`) there: it shows every backend and server, so only
    when asked for by name (`--stats-page`)."""
    hard_stop_after: str = "30s"
    max_reloads: int = 50
    timeout_connect: str = "5s"
    timeout_client: str = "30s"
    timeout_server: str = "30s"
    allow_unsafe_acls: bool = False
    """Raw ACLs may read files or the environment or run code (`conditions.policy`)."""


Assignment = Mapping[str, Mapping[str, Address]]
"""backend → slot → instance address, for the slots that are filled."""


def render_map(entries: MapEntries) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


def route_cookie(gateway: str) -> str:
    return f"{ROUTE_COOKIE_PREFIX}{gateway}"


def _render_global(settings: RenderSettings) -> list[str]:
    """Attached to a user's HAProxy, their `global` rules; our `defaults` cover only ours."""
    own_global = [
        "global",
        f"    stats socket {settings.admin_socket} mode 600 level admin expose-fd listeners",
        "    noreuseport",  # a port already in use fails loudly instead of being shared
        f"    hard-stop-after {settings.hard_stop_after}",
        f"    mworker-max-reloads {settings.max_reloads}",
        "",
    ]
    return [
        *([] if settings.attached else own_global),
        "defaults",
        "    mode http",
        f"    timeout connect {settings.timeout_connect}",
        f"    timeout client {settings.timeout_client}",
        f"    timeout server {settings.timeout_server}",
        "    timeout http-keep-alive 10s",
        "    option idle-close-on-response",
        "    option redispatch",
        "    retries 3",
        "",
    ]


def _render_stats(settings: RenderSettings) -> list[str]:
    if settings.stats_bind is None:
        return []
    page = ["    stats enable", "    stats uri /stats", "    stats refresh 5s"]
    elsewhere = " !{ path_beg /stats }" if settings.stats_page else ""
    return [
        "frontend wb-stats",
        f"    bind {settings.stats_bind}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        *(page if settings.stats_page else []),
        "    http-request return status 404 content-type text/plain "
        f'string "HAProxy metrics are at /metrics" if !{{ path /metrics }}{elsewhere}',
        "",
    ]


def shared_frontend_name(bind: Address) -> str:
    return f"wb.bind.{bind.port}.{bind.ip.replace('.', '-').replace(':', '-')}"


def _render_frontend(gateways: list[GatewayLayout]) -> list[str]:
    """One frontend per bind address; gateways sharing it are told apart by Host.

    HAProxy runs every `http-request` rule before any `use_backend`, whatever their order,
    so all rules come first: ACLs and variables, then the choices in their real order.
    """
    first = gateways[0]
    name = frontend_name(first.name) if len(gateways) == 1 else shared_frontend_name(first.bind)
    lines = [f"frontend {name}", f"    mode {first.mode}", f"    bind {first.bind}"]
    if first.mode == "tcp":
        lines.append("    no option idle-close-on-response")
    host_acls = [g.host_acl for g in gateways if g.host_acl]
    for gateway in gateways:
        for host in gateway.virtual_hosts:
            match = f"-m end {host[1:]}" if host.startswith("*.") else f"-m str {host}"
            lines.append(f"    acl {gateway.host_acl} req.hdr(host),field(1,:),lower {match}")
    if host_acls and len(host_acls) == len(gateways):
        unknown = " ".join(f"!{acl}" for acl in host_acls)
        lines.append(
            "    http-request return status 404 content-type text/plain "
            f'string "no gateway for this host" if {unknown}'
        )
    choices: list[str] = []
    for gateway in gateways:
        rules, uses = _gateway_rules(gateway)
        lines += rules
        choices += uses
    lines += choices
    for gateway in gateways:
        if gateway.maps.backends:
            chosen = f"be_name,map({gateway.maps.backends})"
            cookie = f"{route_cookie(gateway.name)}=%[{chosen}]; Path=/; HttpOnly; SameSite=Lax"
            lines.append(
                f'    http-response add-header Set-Cookie "{cookie}" if {{ {chosen} -m found }}'
            )
    return [*lines, ""]


def _gateway_rules(gateway: GatewayLayout) -> tuple[list[str], list[str]]:
    """(ACLs and variable rules, `use_backend` choices in the order they are tried)."""
    rule = "http-request" if gateway.mode == "http" else "tcp-request content"
    host = f" if {gateway.host_acl}" if gateway.host_acl else ""
    also_host = f"{gateway.host_acl} " if gateway.host_acl else ""
    fallback = no_route_backend(gateway.name)
    rules: list[str] = []
    uses: list[str] = []
    if gateway.maps.sticky:
        pin = f"txn.wb_pin{gateway.index}"
        cookie = f"req.cook({route_cookie(gateway.name)})"
        rules.append(f"    http-request set-var({pin}) {cookie},map({gateway.maps.sticky}){host}")
        uses.append(f"    use_backend %[var({pin})] if {{ var({pin}) -m found }}")
    for condition in gateway.conditions:
        rules += [f"    {line}" for line in condition.compiled.setup]
        rules.append(
            f"    {rule} set-var({condition.var}) str({condition.route}),"
            f"map_str_int({gateway.maps.strengths},0) if {also_host}{condition.compiled.test}"
        )
        backend = f"%[str({condition.route}),map({gateway.maps.routes},{fallback})]"
        matched = f"{{ var({condition.var}) -m found }}"
        if gateway.maps.sticky:  # pinned here and still matching: no new draw
            cookie = f"req.cook({route_cookie(gateway.name)})"
            uses.append(
                f"    use_backend {backend} if {matched} {{ {cookie} -m str {condition.route} }}"
            )
        uses.append(
            f"    use_backend {backend} if {matched} "
            f"{{ rand({BASIS_POINTS}),sub({condition.var}) -m int lt 0 }}"
        )
    uses.append(
        f"    use_backend %[rand({BASIS_POINTS}),map_int({gateway.maps.weights},{fallback})]{host}"
    )
    return rules, uses


def _render_backends(gateway: GatewayLayout, assignment: Assignment) -> list[str]:
    http = gateway.mode == "http"
    fallback = [
        f"backend {no_route_backend(gateway.name)}",
        f"    mode {gateway.mode}",
        # keeps the routes map loaded (HAProxy only loads maps that a rule uses)
        f"    {'http-request' if http else 'tcp-request content'} set-var(txn.wb_routes) "
        f"str(-),map({gateway.maps.routes},-)",
        '    http-request return status 503 content-type text/plain string "no route"'
        if http
        else "    tcp-request content reject",
        "",
    ]
    lines = fallback
    for backend in gateway.backends:
        lines += _render_backend(backend, assignment.get(backend.name, {}))
    return lines


def _render_backend(backend: BackendLayout, filled: Mapping[str, Address]) -> list[str]:
    lines = [
        f"backend {backend.name}",
        f"    mode {backend.mode}",
        f"    balance {backend.balance}",
    ]
    if backend.balance.startswith(("source", "uri", "url_param", "hdr(")):
        lines.append("    hash-type consistent")
    if backend.cookie:
        lines.append(f"    cookie {backend.cookie} insert indirect nocache httponly")
    lines += [f"    {rule}" for rule in backend.rules]
    index = backend.name.rsplit(".", 1)[1]
    # on every slot, filled or parked: HAProxy sizes a server's hash ring points at load time
    weight = f" weight {backend.server_weight}" if backend.server_weight != 1 else ""
    for slot in backend.slot_names():
        address = filled.get(slot)
        extra = (f" cookie {index}{slot}" if backend.cookie else "") + weight
        lines.append(
            f"    server {slot} {address}{extra}"
            if address
            else f"    server {slot} {PLACEHOLDER} disabled{extra}"
        )
    return [*lines, ""]


def _render_body(layout: Layout, settings: RenderSettings, assignment: Assignment) -> list[str]:
    lines = [*_render_global(settings), *_render_stats(settings)]
    by_bind: dict[Address, list[GatewayLayout]] = {}
    for gateway in layout.gateways:
        by_bind.setdefault(gateway.bind, []).append(gateway)
    for group in by_bind.values():
        lines += _render_frontend(group)
    for gateway in layout.gateways:
        lines += _render_backends(gateway, assignment)
    return lines


class UnsafeLine(InvalidInput):
    """A rendered line would hold a line break, a control or a non-ASCII character.

    The model refuses such values first: this is the second line of defence, so that a
    value that slipped through can never become a configuration line of its own.
    """


_UNSAFE_CHAR = re.compile(r"[^\n\x20-\x7e]")


def _joined(lines: list[str]) -> str:
    text = "\n".join(lines)
    if text.count("\n") != len(lines) - 1:
        number = next(i for i, line in enumerate(lines, 1) if "\n" in line)
        raise UnsafeLine(
            f"configuration line {number} would hold a line break",
            [{"field": "(configuration)", "message": f"line {number} holds a line break"}],
        )
    if found := _UNSAFE_CHAR.search(text):
        number = text.count("\n", 0, found.start()) + 1
        raise UnsafeLine(
            f"configuration line {number} would hold {shown(found.group())}",
            [
                {
                    "field": "(configuration)",
                    "message": f"line {number} holds a control or non-ASCII character",
                }
            ],
        )
    return text


def render_config(layout: Layout, settings: RenderSettings, assignment: Assignment) -> str:
    """The full configuration; its first line fingerprints the structure (see below)."""
    structure = structure_fingerprint(layout, settings)
    lines = [f"{STRUCTURE_MARK}{structure}", *_render_body(layout, settings, assignment)]
    return _joined(lines) + "\n"


def structure_fingerprint(layout: Layout, settings: RenderSettings) -> str:
    """Hash of what only a reload can change: the config rendered with every slot empty.

    Every plan computes it, so every structural line is checked (`UnsafeLine`) before a
    change is stored, also when it applies without a reload.
    """
    body = _joined(_render_body(layout, settings, {}))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def read_fingerprint(config_text: str) -> str | None:
    first = config_text.split("\n", 1)[0]
    return first.removeprefix(STRUCTURE_MARK) if first.startswith(STRUCTURE_MARK) else None
