"""`weighbridge run`: wire store, HAProxy, runtime client, engine and API; reconcile on a timer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from controller import heap
from controller.api.app import create_app
from controller.api.certificates import add_certificate_routes
from controller.api.connections import GUARD, ApiLimits, GuardedSite
from controller.api.security import Access, HostPolicy, is_loopback
from controller.api.tokens import Tokens
from controller.apply import ApplyResult
from controller.budget import Budget
from controller.candidate import CheckLimits
from controller.cli import package_version
from controller.config_file import (
    ConfigFileError,
    ConfigSeen,
    config_digest,
    load_config,
    read_seen,
    write_seen,
)
from controller.descriptors import default_maxconn, hard_descriptor_limit
from controller.desired import Desired
from controller.diff import Change, diff_gateway
from controller.edits import DeleteGateway, Edit, PutGateway
from controller.engine import Engine, Timing
from controller.errors import InvalidInput, WeighbridgeError
from controller.fleet.api import add_fleet_routes
from controller.fleet.rollouts import add_fleet_rollouts
from controller.fleet.run import Fleet, FleetSettings
from controller.health import memory as health_memory
from controller.health.watch import HealthWatch
from controller.metrics import Metrics, production_registry
from controller.model import Config, parse_address
from controller.process import HAProxyProcess
from controller.reconcile import reconcile_forever
from controller.render import RenderSettings
from controller.rollouts.api import add_rollout_routes
from controller.rollouts.manager import RolloutManager
from controller.rollouts.outbound import OutboundPolicy
from controller.runtime.client import RuntimeClient
from controller.state_dir import StatePaths, open_state_dir
from controller.store import FileStore, Store
from controller.tls.manager import CertificateManager
from controller.tls.metrics import register_certificate_metrics
from controller.tls.store import CertificateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attach:
    """A HAProxy the user runs with their own config, plus `-f <state-dir>/weighbridge.cfg`."""

    configs: tuple[Path, ...]
    master_socket: Path
    admin_socket: Path


@dataclass(frozen=True)
class ApiSettings:
    """Who may call the API and how much of the process it may take (docs/security.md)."""

    tokens: Tokens = field(default_factory=Tokens)
    hostnames: tuple[str, ...] = ()
    """Host names the API answers to besides its bound address (`--api-hostname`)."""
    insecure_no_token: bool = False
    """Allow binding beyond loopback without a write token (warned at every start)."""
    metrics_need_token: bool = True
    limits: ApiLimits = field(default_factory=ApiLimits)


@dataclass(frozen=True)
class RunSettings:
    config_file: Path
    state_dir: Path
    api_host: str
    api_port: int
    haproxy_bin: str = "haproxy"
    api: ApiSettings = field(default_factory=ApiSettings)
    sync_interval: float | None = None
    """Seconds within which the reconcile visits every gateway; None: by size (`reconcile`)."""
    supervise_interval: float = 0.2
    runtime_timeout: float = 5.0
    """Seconds before a Runtime API call that gets no answer counts as failed."""
    timing: Timing = field(default_factory=Timing)
    attach: Attach | None = None
    stats: str = "127.0.0.1:8404"
    """HAProxy's own Prometheus exporter; empty: none."""
    stats_page: bool = False
    """Also HAProxy's stats page at `/stats` on the `stats` address."""
    stop_haproxy_on_exit: bool = False
    allow_unsafe_acls: bool = False
    """Raw ACLs may read files or the environment or run code (`--allow-unsafe-acls`)."""
    allow_cert_paths: tuple[str, ...] = ()
    """Directories of PEM files gateways may name by path (`--allow-cert-path`)."""
    allow_outbound: tuple[str, ...] = ()
    """Where rollout webhooks and Prometheus checks may call (`--allow-outbound`); empty:
    loopback only."""
    budget: Budget = field(default_factory=Budget)
    check: CheckLimits = field(default_factory=CheckLimits)
    reseed: bool = False
    """Start over from the config file: the stored desired state and
    rollouts are discarded (the demo)."""
    config_required: bool = False
    """The config file was named (`--config`): a missing one is an error, not an empty start."""
    config_wins: bool = False
    """The config file is the desired state at start, applied as a change (`--config-wins`)."""
    hard_stop_after: str = "30s"
    """How long an old worker keeps its connections after a reload (`--hard-stop-after`)."""
    fleet: FleetSettings | None = None
    """A node of a fleet (`--store etcd://…`): the desired state lives in etcd; None: the
    file store of this one node."""
    bind_host: str | None = None
    """Bind every gateway on this address, same port (`--bind-host`)."""
    dns_servers: tuple[tuple[str, int], ...] = ()
    """Name servers for instance names (`--dns-server`); empty: the system's."""
    maxconn: int | None = None
    """HAProxy's connection limit (`--maxconn`); None: from the descriptor limit."""
    health_watch: bool = True
    """False (`--no-health-watch`): no route-down redistribution, ejection cap, drain end or
    live `maxconn`; only for measuring what the watch costs (`bench.health`)."""
    server_state: bool = True
    """Carry each server's state across reloads (`controller.server_state`); False
    (`--no-server-state`): a new worker starts its servers UP."""


def state_paths(settings: RunSettings) -> StatePaths:
    attach = settings.attach
    return StatePaths(
        settings.state_dir.resolve(),
        attached=tuple(p.resolve() for p in attach.configs) if attach else (),
        user_master_socket=attach.master_socket.resolve() if attach else None,
        user_admin_socket=attach.admin_socket.resolve() if attach else None,
    )


def build_engine(settings: RunSettings, paths: StatePaths, store: Store) -> Engine:
    """The engine on a state directory this process has checked and locked (`open_state_dir`)."""
    process = HAProxyProcess(paths, settings.haproxy_bin, settings.check)
    runtime = RuntimeClient(str(paths.admin_socket), timeout=settings.runtime_timeout)
    return Engine(
        store,
        process,
        runtime,
        RenderSettings(
            str(paths.admin_socket),
            attached=settings.attach is not None,
            stats_bind=parse_address(settings.stats, wildcard=True) if settings.stats else None,
            allow_unsafe_acls=settings.allow_unsafe_acls,
            stats_page=settings.stats_page,
            hard_stop_after=settings.hard_stop_after,
            cert_dir=str(paths.certs),
            cert_paths=settings.allow_cert_paths,
            bind_host=settings.bind_host,
            maxconn=settings.maxconn or default_maxconn(hard_descriptor_limit()),
            status_socket=str(paths.status_socket),
            server_state_file=str(paths.server_state) if settings.server_state else None,
        ),
        settings.timing,
        Metrics(production_registry()),
        settings.budget,
    )


def read_config_file(settings: RunSettings) -> Config | None:
    """The config file's desired state, read before anything starts. A file named with
    `--config` must exist: a wrong path stops the start instead of starting (and storing)
    an empty state. The default file may be absent: then the store rules alone."""
    path = settings.config_file
    if not path.exists():
        if settings.config_required:
            raise ConfigFileError(
                f"config file {path} not found (--config): nothing was started. Give the "
                "path of an existing file, or no --config to start from the stored state"
            )
        log.info("no config file %s: the desired state is the stored one (none at first)", path)
        return None
    return load_config(path, allow_unsafe_acls=settings.allow_unsafe_acls)


async def settle_config_file(engine: Engine, settings: RunSettings, config: Config) -> bool:
    """At start, the file seeded an empty store; if the store held another state, it wins
    and the log says what differs and how to apply the file, unless `--config-wins` makes
    the file the desired state (a change per gateway: live where HAProxy can take it live).
    True when the store holds what the file says (now)."""
    desired = engine.desired
    names = [*config.gateways, *(n for n in desired.names if n not in config.gateways)]
    changes = [
        change
        for name in names
        for change in diff_gateway(name, desired.get(name), config.gateways.get(name))
    ]
    if not changes:
        return True
    path = settings.config_file
    if settings.config_wins:
        edits: list[Edit] = [
            PutGateway(name, gateway) if gateway is not None else DeleteGateway(name)
            for name in dict.fromkeys(change.gateway for change in changes)
            for gateway in [config.gateways.get(name)]
        ]
        methods = {(await engine.change(edit)).method for edit in edits}
        log.info(
            "--config-wins: %s is the desired state now (revision %d), applied %s: %s",
            path,
            engine.desired.revision,
            "by a reload" if "reload" in methods else "live (runtime commands, no reload)",
            "; ".join(change.text for change in changes),
        )
        return True
    log.warning("%s", store_differs_text(settings, desired.revision, changes))
    return False


def config_seen(settings: RunSettings, paths: StatePaths) -> tuple[str | None, ConfigSeen | None]:
    """The config file's digest, and what the last start found of the same file (None when
    it must be parsed now: another file, a fresh or a shared store, `--config-wins`,
    `--reseed`). The file store must hold records: an empty one is seeded from the file."""
    digest = config_digest(
        settings.config_file,
        allow_unsafe_acls=settings.allow_unsafe_acls,
        version=package_version(),
    )
    if digest is None or settings.fleet or settings.config_wins or settings.reseed:
        return digest, None
    seen = read_seen(paths.root)
    if seen is None or seen.digest != digest or not any(paths.gateways.glob("*.json")):
        return digest, None
    return digest, seen


async def settle_seen_config(
    engine: Engine, settings: RunSettings, paths: StatePaths, seen: ConfigSeen
) -> None:
    """A config file the last start validated, not parsed at this one: if the store moved
    since, say what differs as `settle_config_file` does, after the start (off its path)."""
    if engine.desired.revision == seen.revision:
        return
    try:
        config = await asyncio.to_thread(read_config_file, settings)
    except ConfigFileError as exc:  # changed since its digest was taken: said, not fatal
        log.error("%s", exc)
        return
    if config is not None:
        await settle_config_file(engine, settings, config)


def store_differs_text(settings: RunSettings, revision: int, changes: list[Change]) -> str:
    """What applying the file would do, gateway by gateway, and the commands that do it."""
    by_gateway: dict[str, list[Change]] = {}
    for change in changes:
        by_gateway.setdefault(change.gateway, []).append(change)
    actions, prune = [], ""
    for name, of_gateway in by_gateway.items():
        if of_gateway[0].field == "gateway":  # only in the file, or only in the store
            added = of_gateway[0].before is None
            prune = prune or ("" if added else " --prune")
            actions.append(f"{'add' if added else 'remove'} gateway {name}")
            continue
        texts = [change.text for change in of_gateway]
        more = f"; and {len(texts) - 3} more" if len(texts) > 3 else ""
        actions.append(f"change gateway {name} ({'; '.join(texts[:3])}{more})")
    path, api = settings.config_file, f"{settings.api_host}:{settings.api_port}"
    return (
        f"the stored desired state (revision {revision}) differs from {path}, and the store "
        f"wins: it is what HAProxy serves. Applying the file would {', '.join(actions)}. To "
        f"apply it: `weighbridge apply {path}{prune} --api {api}` (`weighbridge plan {path}"
        f"{prune} --api {api}` shows how first), or start with --config-wins"
    )


def ready_text(desired: Desired, ready: bool, result: ApplyResult) -> str:
    """The start-up line, for a person: what HAProxy serves, and what the start changed."""
    count = len(desired.records)
    names = ", ".join(desired.names[:5]) + (", …" if count > 5 else "")
    state = (
        f"revision {desired.revision} of the desired state "
        f"({count} gateway{'' if count == 1 else 's'}{': ' + names if count else ''})"
    )
    if not ready:
        return f"waiting for HAProxy to load {state}"
    if result.method == "runtime":
        commands = len(result.steps)
        return f"HAProxy serves {state}; what differed was changed live ({commands} commands)"
    if result.method == "reload":
        return f"HAProxy serves {state}; it was reloaded to match ({'; '.join(result.steps)})"
    return f"HAProxy serves {state}"


async def supervise_forever(engine: Engine, interval: float) -> None:
    """Bring HAProxy back quickly when its master or worker dies (a cheap socket probe)."""
    while True:
        await asyncio.sleep(interval)  # the probe period, not synchronisation
        try:
            await engine.supervise()
        except Exception as exc:
            engine.state.ready = False
            engine.state.last_error = str(exc)
            log.error("could not restart HAProxy: %s", exc)


async def certificates_forever(manager: CertificateManager, interval: float) -> None:
    """Serve every stored certificate in the version stored (a change by hand, a failed
    push): the same check as the gateways' reconcile, for the certificates HAProxy holds."""
    while True:
        await asyncio.sleep(interval)  # the reconcile period, not synchronisation
        try:
            pushed = await manager.reconcile()
        except (WeighbridgeError, OSError) as exc:
            log.warning("could not check the certificates HAProxy serves: %s", exc)
            continue
        if pushed:
            log.warning("certificates served in another version, pushed again: %s", pushed)


def api_access(host: str, api: ApiSettings) -> Access:
    """The API's access rules; refuses, before anything starts, an API that anyone on the
    network could write to unless that was asked for by name."""
    if not api.tokens.write and not is_loopback(host):
        if not api.insecure_no_token:
            raise InvalidInput.for_field(
                "--api",
                f"the API would listen on {host or '*'} without a write token: anyone who "
                "reaches it could move traffic. Give --token-file (or $WEIGHBRIDGE_API_TOKEN), "
                "bind to 127.0.0.1, or pass --insecure-no-token",
            )
        log.warning(
            "INSECURE: the API listens on %s with no write token (--insecure-no-token): "
            "anyone who reaches it can change the routing",
            host or "*",
        )
    return Access(HostPolicy.build(host, api.hostnames), api.tokens, api.metrics_need_token)


def connection_limit(requested: int) -> int:
    """At most half the descriptors this process may open: the rest stay for HAProxy's
    sockets, the store and the outbound checks, whatever a flood of clients does."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or requested <= soft // 2:
        return requested
    log.warning("API connections limited to %d (half of the descriptor limit %d)", soft // 2, soft)
    return max(1, soft // 2)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed: accepting, closing and answering connections cost
    a fraction of asyncio's own loop (docs/benchmarks.md, API flood); else None (asyncio's)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(settings: RunSettings) -> None:
    """`weighbridge run`: serve until SIGINT or SIGTERM."""
    heap.limit_arenas()  # before the first thread
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(settings))


async def serve(settings: RunSettings, ready: asyncio.Event | None = None) -> None:
    access = api_access(settings.api_host, settings.api)  # refused before anything starts
    paths = state_paths(settings)
    digest, seen = config_seen(settings, paths)  # the same file as last time: valid
    # so is a config file that is missing or invalid
    config = None if seen else read_config_file(settings)
    limits = replace(
        settings.api.limits,
        max_connections=connection_limit(settings.api.limits.max_connections),
    )
    lock = open_state_dir(paths)
    parsed = [config] if config is not None else []
    del config  # `_serve` drops it once settled: 100,000 instances are tens of MB
    try:
        await _serve(settings, paths, parsed, access, limits, ready, (digest, seen))
    finally:
        lock.release()


async def _serve(
    settings: RunSettings,
    paths: StatePaths,
    parsed: list[Config],
    access: Access,
    limits: ApiLimits,
    ready: asyncio.Event | None,
    file: tuple[str | None, ConfigSeen | None] = (None, None),
) -> None:
    config = parsed.pop() if parsed else None
    fleet = Fleet(settings.fleet, paths.root) if settings.fleet else None
    store: Store = fleet.store if fleet else FileStore(paths.gateways, legacy=paths.desired)
    if settings.reseed and isinstance(store, FileStore):
        store.discard()
        paths.rollouts.unlink(missing_ok=True)
        (paths.root / health_memory.FILE).unlink(missing_ok=True)
    engine = build_engine(settings, paths, store)
    health = HealthWatch(engine)
    health.remember()  # routes down and drains from before a restart, before the first plan
    first = await fleet.first_snapshot(config) if fleet else None
    gc.disable()  # start-up builds a million objects that all live: no collection meanwhile
    try:
        # the file seeds an empty store, nothing else (a fleet's first node seeded etcd)
        result = await engine.start(None if fleet else config, first)
    finally:
        gc.enable()
    log.info("%s", ready_text(engine.desired, engine.state.ready, result))
    digest, seen = file
    if config is not None:
        equal = await settle_config_file(engine, settings, config)
        if digest is not None and not fleet:
            write_seen(paths.root, ConfigSeen(digest, engine.desired.revision if equal else -1))
        config = None  # the store holds what counts now
    gc.freeze()  # start-up objects live forever: keep them out of full collections (pauses)
    app = create_app(engine, access=access, limits=limits)
    # the engine's: crt-list changes and uploads share one lock for TLS transactions
    certificates = engine.certificates or CertificateManager(
        CertificateStore(paths.certs), engine.runtime
    )
    add_certificate_routes(app, certificates)
    register_certificate_metrics(engine.metrics.registry, certificates.store)
    outbound = OutboundPolicy.parse(settings.allow_outbound)
    rollout_store = fleet.rollout_store() if fleet else None
    rollouts = RolloutManager(engine, paths.root, outbound=outbound, store=rollout_store)
    add_rollout_routes(app, rollouts)
    if fleet is not None:  # rollouts run on the one node elected for them
        add_fleet_routes(app, fleet.start(engine, package_version()))
        add_fleet_rollouts(app, fleet.lead_rollouts(rollouts))
    # a client that goes away cancels its write if nothing was stored yet (see Engine.change)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = GuardedSite(runner, settings.api_host, settings.api_port, app[GUARD])
    await site.start()
    log.info("API on http://%s:%d/api/v1", settings.api_host, settings.api_port)
    # imported once the API answers: dnspython is not needed to be ready (issue 11: adopt)
    from controller.discovery.dns import Discovery, DnsResolver
    from controller.discovery.watch import NameWatch

    names = NameWatch(engine, Discovery(DnsResolver(settings.dns_servers or None)))
    engine.name_status = names.report
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loops = [
        asyncio.create_task(reconcile_forever(engine, settings.sync_interval)),
        asyncio.create_task(supervise_forever(engine, settings.supervise_interval)),
        asyncio.create_task(rollouts.run() if fleet is None else fleet.run_rollouts()),
        asyncio.create_task(certificates_forever(certificates, settings.sync_interval or 5.0)),
        *([asyncio.create_task(health.run())] if settings.health_watch else []),
        asyncio.create_task(names.run()),
        asyncio.create_task(heap.tend_forever()),
        *([asyncio.create_task(settle_seen_config(engine, settings, paths, seen))] if seen else []),
    ]
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for task in loops:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        if fleet is not None:
            await fleet.stop()
        await engine.runtime.close()
        if settings.stop_haproxy_on_exit:
            await engine.process.stop()
        log.info(
            "controller stopped; HAProxy %s",
            "stopped" if settings.stop_haproxy_on_exit else "keeps serving",
        )
