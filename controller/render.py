"""Layouts → HAProxy configuration text, one section per gateway, and their fingerprints (pure).

Each gateway's part (its backends with every slot parked, its frontend rules) is a `Section`,
rendered once per structure and fingerprinted; the whole file is only assembled when HAProxy
must reload, from the sections and each gateway's filled slots. The file's first lines name
the fingerprint of the settings and of every section, so that a restarted controller knows,
gateway by gateway, which structure HAProxy runs.

Rule order in a frontend (the documented order in which routes are chosen):
1. an unknown Host on a gateway with `virtual_hosts`: 404;
2. sticky gateways: a client's route cookie, if that route still has weight;
3. routes with a condition, in declaration order: a matching request goes to the route with
   probability `condition_strength` (a fresh draw per route), else it falls through;
4. the weights: `rand(10000)` (or, `split: exact`, the gateway's request counter through a
   fixed order, `weights_choice`) over the map of basis-point ranges.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.compile import (
    PLACEHOLDER,
    BackendLayout,
    BindTls,
    GatewayLayout,
    MapEntries,
    frontend_name,
    no_route_backend,
)
from controller.errors import InvalidInput, shown
from controller.hosts import (
    GROUP_PREFIX,
    GroupLayout,
    group_name,
    host_rules,
    pool_choice_rules,
    pool_use,
)
from controller.model import BASIS_POINTS, Address

STRUCTURE_MARK = "# weighbridge-structure: "
SETTINGS_MARK = "# weighbridge-settings: "
GATEWAY_MARK = "# weighbridge-gateway: "
BIND_MARK = "# weighbridge-bind: "
ROUTE_COOKIE_PREFIX = "wb_"
EXACT_COUNTER = 2
"""The sticky counter `split: exact` tracks (sc0 and sc1 are left to users' own rules)."""
STATUS_URI = "/wb-stats"
"""Where the private status listener serves the stats page (`status_listener`)."""


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
    cert_dir: str = ""
    """Where store certificates and crt-lists live (`<state-dir>/certs`); not rendered."""
    cert_paths: tuple[str, ...] = ()
    """Directories whose PEM files gateways may name by path (`--allow-cert-path`); none by
    default: a writer could otherwise make HAProxy load (or probe for) any file it can read."""
    bind_host: str | None = None
    """Every gateway bound on this address instead of its own host, same port
    (`--bind-host`: several fleet nodes on one machine, or a host with several addresses)."""
    maxconn: int = 4096
    """HAProxy's process-wide connection limit, always explicit (`controller.descriptors`)."""
    status_socket: str | None = None
    """A private unix socket (in the state directory, mode 0600) where HAProxy serves its stats
    page as CSV for the controller's own reads (`controller.runtime.stats_page`)."""
    server_state_file: str | None = None
    """Where a new worker reads the old one's server states (`controller.server_state`);
    None: every reload starts servers UP. Only in our own `global` (not attached)."""


Filled = Mapping[str, Address]
"""slot → instance address, for the slots of one backend that are filled."""
Assignment = Mapping[str, Filled]
"""backend → its filled slots."""


def render_map(entries: MapEntries) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


def route_cookie(gateway: str) -> str:
    return f"{ROUTE_COOKIE_PREFIX}{gateway}"


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


# ---- settings: global, defaults, the stats frontend ---------------------------------------


def _render_global(settings: RenderSettings) -> list[str]:
    """Attached to a user's HAProxy, their `global` rules; our `defaults` cover only ours."""
    path = state_file_of(settings)
    state_file = [f"    server-state-file {path}"] if path else []
    load_state = ["    load-server-state-from-file global"] if path else []
    own_global = [
        "global",
        f"    stats socket {settings.admin_socket} mode 600 level admin expose-fd listeners",
        "    noreuseport",  # a port already in use fails loudly instead of being shared
        f"    maxconn {settings.maxconn}",
        "    no strict-limits",  # descriptors reserved for parked slots' checks: a warning
        f"    hard-stop-after {settings.hard_stop_after}",
        f"    mworker-max-reloads {settings.max_reloads}",
        *state_file,
        "",
    ]
    return [
        *([] if settings.attached else own_global),
        "defaults",
        *load_state,
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


def state_file_of(settings: RenderSettings) -> str | None:
    """The server-state file HAProxy loads at each reload: never attached (the `global`
    section is the user's)."""
    return None if settings.attached else settings.server_state_file


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


def status_listener(settings: RenderSettings) -> list[str]:
    """The stats page on a unix socket only the controller's user can open: one read gives
    the counters of all of a gateway's backends (`controller.runtime.stats_page`). No admin
    actions, no legends, no listener beyond the socket."""
    if settings.status_socket is None:
        return []
    return [
        "listen wb-status",
        f"    bind unix@{settings.status_socket} mode 600",
        "    stats enable",
        f"    stats uri {STATUS_URI}",
        "",
    ]


def settings_text(settings: RenderSettings) -> str:
    return _joined(
        [*_render_global(settings), *_render_stats(settings), *status_listener(settings)]
    )


def settings_fingerprint(settings: RenderSettings) -> str:
    return _fingerprint(settings_text(settings))


# ---- a gateway's section ------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A gateway's part of the configuration, every slot parked; equal layouts, equal sections.

    `fingerprint` covers everything only a reload can change: its backends, its rules in the
    frontend of its bind, its default certificate. Weights, strengths, instances and the
    other certificates of its crt-list are not in it: they are live.
    """

    layout: GatewayLayout
    rules: tuple[str, ...]
    uses: tuple[str, ...]
    cookie_lines: tuple[str, ...]
    backends: str
    fingerprint: str = field(compare=False)

    @property
    def name(self) -> str:
        return self.layout.name


def render_section(layout: GatewayLayout) -> Section:
    """Render and check one gateway's lines (`UnsafeLine`), and fingerprint them."""
    rules, uses = _gateway_rules(layout)
    cookie_lines: tuple[str, ...] = ()
    if layout.maps.backends:
        chosen = f"be_name,map({layout.maps.backends})"
        cookie = f"{route_cookie(layout.name)}=%[{chosen}]; Path=/; HttpOnly; SameSite=Lax"
        cookie_lines = (
            f'    http-response add-header Set-Cookie "{cookie}" if {{ {chosen} -m found }}',
        )
    backends = _joined(_render_backends(layout, {}))
    # its frontend's own lines (the bind among them) are checked here, before anything is
    # stored, though the file holds them only once the gateways of the bind are assembled
    bind = bind_line([layout])
    if layout.mode == "tcp" and any("req.ssl_sni" in line for line in rules):
        rules.insert(0, f"    tcp-request inspect-delay {SNI_INSPECT_DELAY}")
    redirect = redirect_frontend(layout)
    frontend = _joined([bind, f"    mode {layout.mode}", *rules, *uses, *cookie_lines, *redirect])
    # a crt-list's other lines change live; its default (first) line only with a reload
    default = layout.tls.certificates[:1] if layout.tls else ()
    fingerprint = _fingerprint(frontend, backends, *default)
    return Section(layout, tuple(rules), tuple(uses), cookie_lines, backends, fingerprint)


class SectionCache:
    """Sections by layout: a change that keeps a gateway's structure renders nothing."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._sections: OrderedDict[GatewayLayout, Section] = OrderedDict()

    def section(self, layout: GatewayLayout) -> Section:
        found = self._sections.get(layout)
        if found is None:
            found = self._sections[layout] = render_section(layout)
            while len(self._sections) > self.size:
                self._sections.popitem(last=False)
        else:
            self._sections.move_to_end(layout)
        return found

    def resize(self, gateways: int) -> None:
        """Room for every gateway's current and previous structure."""
        self.size = max(self.size, 2 * gateways)


SNI_INSPECT_DELAY = "5s"
"""How long a TCP gateway that routes by SNI waits for the client's TLS hello."""


def bind_line(layouts: Sequence[GatewayLayout]) -> str:
    """The `bind` line of a frontend: plain, or TLS with each gateway's crt-list, in gateway
    name order: the default certificate of the gateway first by name is the bind's default
    (whatever order gateways were created in), and the options they share."""
    first = layouts[0]
    tls = [layout.tls for layout in sorted(layouts, key=lambda g: g.name) if layout.tls]
    if not tls:
        return f"    bind {first.bind}"
    lists = " ".join(f"crt-list {t.crt_list}" for t in tls)
    return f"    bind {first.bind} ssl {lists} {' '.join(tls[0].options)}"


HOST_WITHOUT_PORT = "regsub(:[0-9]+$,)"
"""A Host header's name without its port; `[::1]:8080` keeps its brackets (not `field(1,:)`)."""


def redirect_frontend(first: GatewayLayout) -> list[str]:
    """A plain HTTP listener answering every request with a redirect to the TLS bind."""
    tls: BindTls | None = first.tls
    if tls is None or tls.redirect is None:
        return []
    bind = first.bind
    port = "" if bind.port == 443 else f":{bind.port}"
    return [
        "",
        f"frontend {group_name(tls.redirect).replace(GROUP_PREFIX, 'wb.redirect.', 1)}",
        "    mode http",
        f"    bind {tls.redirect}",
        "    http-request redirect location "
        f"https://%[req.hdr(host),{HOST_WITHOUT_PORT}]{port}%[capture.req.uri] code 301",
    ]


def _gateway_rules(gateway: GatewayLayout) -> tuple[list[str], list[str]]:
    """(ACLs and variable rules, `use_backend` choices in the order they are tried).

    The weights map is loaded first and the routes map last. HAProxy finds a map named on its
    socket by walking the list of every map it loaded, in the order it loaded them
    (`pat_ref_lookup` in 2.6): ~57 ns a map passed, three times a weight change
    (`prepare`, `add`, `commit`). A map named in a rule is loaded while the file is parsed;
    one named only in a `use_backend %[...]`, once the whole file was read. The weights map,
    which every weight change swaps, used to be loaded last (by its `use_backend`) and the
    routes map first (by a rule of the fallback backend): at 1,000 gateways each weight change
    walked past 1,000 routes maps, which change only when a route is added. Now the fallback
    backend's rule names the weights map, loaded while the file is parsed, and a `use_backend`
    after the weights' one (with the same condition, so never reached) names the routes map,
    loaded after every weights map. Not `if FALSE`: each such condition is one more entry in
    the same list (docs/benchmarks.md; the order is checked on a real HAProxy:
    tests/integration/test_map_order.py)."""
    rule = "http-request" if gateway.mode == "http" else "tcp-request content"
    host = f" if {gateway.host_test}" if gateway.host_test else ""
    also_host = f"{gateway.host_test} " if gateway.host_test else ""
    fallback = no_route_backend(gateway.name)
    rules: list[str] = []
    uses: list[str] = []
    if gateway.maps.sticky:
        pin = f"txn.wb_pin{gateway.key}"
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
    choice, tracking = weights_choice(gateway)
    rules += [f"    {rule} {line}{host}" for line in tracking]
    uses.append(f"    use_backend %[{choice},map_int({gateway.maps.weights},{fallback})]{host}")
    # loads the routes map once the file is parsed; never reached (see the docstring)
    uses.append(f"    use_backend %[str(-),map({gateway.maps.routes},{fallback})]{host}")
    return rules, uses


def weights_choice(gateway: GatewayLayout) -> tuple[str, tuple[str, ...]]:
    """(the bucket in 0..9999 the weights map turns into a backend, the request rules it needs).

    `random`: a fresh draw. `exact`: the gateway's request counter (gpc0 of the one entry of
    its own stick table, incremented and read under the entry's lock, so that requests on
    every thread get distinct numbers) through the shared bucket order. Evaluated only when
    the weights decide (after sticky pins and conditions), so only those requests count.
    The order is looked up as a string: HAProxy keeps string keys in a tree but integer keys
    in a list (`map_int_int` over 10,000 keys cost 2 ms a request, measured on 2.6.12)."""
    if gateway.maps.order is None:
        return f"rand({BASIS_POINTS})", ()
    table = no_route_backend(gateway.name)
    return (
        f"sc{EXACT_COUNTER}_inc_gpc0,mod({BASIS_POINTS}),map_str_int({gateway.maps.order})",
        (f"track-sc{EXACT_COUNTER} int(0) table {table}",),
    )


def _render_backends(gateway: GatewayLayout, assignment: Assignment) -> list[str]:
    http = gateway.mode == "http"
    counter = ["    stick-table type integer size 1 store gpc0"] if gateway.maps.order else []
    lines = [
        f"backend {no_route_backend(gateway.name)}",
        f"    mode {gateway.mode}",
        *counter,
        # loads the weights map while the file is parsed (see `_gateway_rules`)
        f"    {'http-request' if http else 'tcp-request content'} set-var(txn.wb_weights) "
        f"int(0),map_int({gateway.maps.weights},-)",
        '    http-request return status 503 content-type text/plain string "no route"'
        if http
        else "    tcp-request content reject",
        "",
    ]
    for backend in gateway.backends:
        lines += _render_backend(backend, assignment.get(backend.name, {}))
    return lines


def _render_backend(backend: BackendLayout, filled: Filled) -> list[str]:
    lines = [
        f"backend {backend.name}",
        f"    mode {backend.mode}",
        f"    balance {backend.balance}",
    ]
    if backend.balance.startswith(("source", "uri", "url_param", "hdr(")):
        lines.append("    hash-type consistent")
    if backend.tunnel:
        lines.append(f"    timeout tunnel {backend.tunnel}")
    if backend.cookie:
        lines.append(f"    cookie {backend.cookie} insert indirect nocache httponly")
    lines += [f"    {rule}" for rule in backend.rules]
    lines += [f"    {line}" for line in backend.policy]
    index = backend.name.rsplit(".", 1)[1]
    # on every slot, filled or parked: HAProxy sizes a server's hash ring points at load time
    weight = f" weight {backend.server_weight}" if backend.server_weight != 1 else ""
    for slot in backend.slot_names():
        address = filled.get(slot)
        extra = (f" cookie {index}{slot}" if backend.cookie else "") + weight
        extra += f" {backend.server_options}" if backend.server_options else ""
        lines.append(
            f"    server {slot} {address}{extra}"
            if address
            else f"    server {slot} {PLACEHOLDER} disabled{extra}"
        )
    return [*lines, ""]


def filled_backends(section: Section, assignment: Assignment) -> str:
    """The section's backends with its instances in their slots, as a reload writes them
    (none for a pooled gateway: its bind group renders them).

    Addresses are validated IP literals and ports: nothing here can break a line."""
    if section.layout.pooled or not any(assignment.values()):
        return section.backends
    return "\n".join(_render_backends(section.layout, assignment))


# ---- frontends and the whole file --------------------------------------------------------


def render_frontend(group: Sequence[Section]) -> list[str]:
    """One frontend per bind address: a gateway's own, or its bind group's when it has
    virtual hosts (`render_hosted_frontend`)."""
    first = group[0].layout
    if first.hosts is not None:
        return render_hosted_frontend(group)
    lines = [f"frontend {frontend_name(first.name)}", f"    mode {first.mode}", bind_line([first])]
    if first.mode == "tcp":
        lines.append("    no option idle-close-on-response")
    return [*lines, *route_choice(group), *redirect_frontend(first), ""]


def route_choice(group: Sequence[Section]) -> list[str]:
    """The rules that choose a route, gateway by gateway. HAProxy runs every `http-request`
    rule before any `use_backend`, whatever their order, so all rules come first: ACLs and
    variables, then the choices in their real order."""
    lines: list[str] = []
    for section in group:
        lines += section.rules
    for section in group:
        lines += section.uses
    for section in group:
        lines += section.cookie_lines
    return lines


def render_hosted_frontend(group: Sequence[Section]) -> list[str]:
    """A bind group's frontend: the gateway from the Host (a 404 if none), the rules of the
    gateways with their own backends, then the pooled gateways' choice from their host's
    map value. Nothing in it grows with the number of hosts or pooled gateways."""
    first = group[0].layout
    assert first.hosts is not None
    own = [s for s in group if not s.layout.pooled]
    bind = bind_line([s.layout for s in group])
    lines = [f"frontend {first.hosts.group}", f"    mode {first.mode}", bind]
    lines += host_rules(first.hosts)
    for section in own:
        lines += section.rules
    lines += pool_choice_rules()
    for section in own:
        lines += section.uses
    lines += pool_use(first.hosts.group)
    for section in own:
        lines += section.cookie_lines
    return [*lines, *redirect_frontend(first), ""]


@dataclass(frozen=True)
class Running:
    """The structure a configuration file holds: its settings' and its sections' fingerprints.

    Read back from the file HAProxy loaded (its first lines), kept in memory after each
    reload: a gateway whose section fingerprint is unchanged needs no reload."""

    settings: str
    sections: Mapping[str, str]
    binds: Mapping[str, str] = field(default_factory=dict)
    """Bind group → the fingerprint of its pool (`hosts.GroupLayout`). Pooled gateways have
    no section: what they need of HAProxy is their group."""

    @property
    def fingerprint(self) -> str:
        """One fingerprint of the whole structure (the file's first line)."""
        parts = (f"{n} {f}" for n, f in sorted(self.sections.items()))
        binds = (f"{n} {f}" for n, f in sorted(self.binds.items()))
        return _fingerprint(self.settings, *parts, *binds)


def render_config(
    settings: RenderSettings,
    sections: Iterable[Section],
    filled: Mapping[str, str],
    pools: Mapping[str, tuple[GroupLayout, str]] | None = None,
) -> str:
    """The whole file: marks, settings, a frontend per bind, each gateway's filled backends,
    each bind group's pool.

    `filled` is each gateway's `filled_backends` (a gateway missing from it runs parked);
    `pools` each bind group's layout and filled backends (`hosts.render_group_backends`)."""
    ordered = list(sections)
    pools = pools or {}
    running = running_of(settings, ordered, {g: layout for g, (layout, _) in pools.items()})
    groups: dict[Address, list[Section]] = {}
    for section in ordered:
        groups.setdefault(section.layout.bind, []).append(section)
    frontends = [_joined(render_frontend(group)) for group in groups.values()]
    parts = [
        f"{STRUCTURE_MARK}{running.fingerprint}",
        f"{SETTINGS_MARK}{running.settings}",
        *(f"{GATEWAY_MARK}{name} {fp}" for name, fp in running.sections.items()),
        *(f"{BIND_MARK}{name} {fp}" for name, fp in running.binds.items()),
        settings_text(settings),
        *frontends,
        *(filled.get(s.name, s.backends) for s in ordered if not s.layout.pooled),
        *(text for _, text in pools.values()),
    ]
    return "\n".join(parts) + "\n"


def running_of(
    settings: RenderSettings, sections: Iterable[Section], pools: Mapping[str, GroupLayout]
) -> Running:
    """The structure of a file: pooled gateways are not in it, their bind groups are."""
    own = {s.name: s.fingerprint for s in sections if not s.layout.pooled}
    binds = {name: layout.fingerprint for name, layout in pools.items()}
    return Running(settings_fingerprint(settings), own, binds)


def read_running(config_text: str) -> Running | None:
    """The structure a file rendered by `render_config` holds; None for anything else."""
    settings: str | None = None
    sections: dict[str, str] = {}
    binds: dict[str, str] = {}
    for line in config_text.split("\n"):
        if line.startswith(SETTINGS_MARK):
            settings = line.removeprefix(SETTINGS_MARK)
        elif line.startswith(GATEWAY_MARK):
            name, _, fingerprint = line.removeprefix(GATEWAY_MARK).partition(" ")
            sections[name] = fingerprint
        elif line.startswith(BIND_MARK):
            name, _, fingerprint = line.removeprefix(BIND_MARK).partition(" ")
            binds[name] = fingerprint
        elif not line.startswith("#"):
            break
    return Running(settings, sections, binds) if settings is not None else None


# ---- the last line of defence --------------------------------------------------------------


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
