"""`weighbridge run` and `weighbridge demo`: the commands that start the controller.

Their options show the engine's defaults, so they are added only when one of these commands
is used (`Parser(populate=…)`): the client commands never import the engine or HAProxy code.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from controller.api.tokens import READ_TOKEN_ENV, WRITE_TOKEN_ENV
from controller.cli.client import DEFAULT_API, refuse_token_argument

if TYPE_CHECKING:
    from controller.fleet.run import FleetSettings
    from controller.service import RunSettings

DEFAULT_CONFIG = "weighbridge.yaml"
STORE_ENV = "WEIGHBRIDGE_STORE"


def _duration(text: str) -> str:
    """An HAProxy time for the configuration, checked whole (argparse reports the error)."""
    from controller.tls.options import check_duration

    try:
        return check_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _maxconn(text: str) -> int:
    """`--maxconn`: a whole number within what HAProxy takes."""
    from controller.descriptors import MAX_MAXCONN, MIN_MAXCONN

    if not re.fullmatch(r"[0-9]{1,7}", text) or not MIN_MAXCONN <= int(text) <= MAX_MAXCONN:
        raise argparse.ArgumentTypeError(
            f"--maxconn must be a whole number from {MIN_MAXCONN} to {MAX_MAXCONN}"
        )
    return int(text)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not re.fullmatch(r"[0-9]{1,5}", port):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):  # [::1]:9900
        host = host[1:-1]
    return host, int(port)


def _outbound_rule(text: str) -> str:
    from controller.rollouts.outbound import parse_rule

    try:
        parse_rule(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _traffic_rate(text: str) -> float:
    from controller.demo import traffic_rate

    return traffic_rate(text)


def run_settings(args: argparse.Namespace) -> RunSettings:
    from controller.api.connections import ApiLimits
    from controller.api.tokens import load_tokens
    from controller.budget import BOUNDS, Budget
    from controller.candidate import CheckLimits
    from controller.engine import Timing
    from controller.service import ApiSettings, Attach, RunSettings

    attach = None
    if getattr(args, "attach", None):
        if not (args.master_socket and args.admin_socket):
            raise SystemExit("--attach needs --master-socket and --admin-socket")
        attach = Attach(
            configs=tuple(Path(p) for p in args.attach),
            master_socket=Path(args.master_socket),
            admin_socket=Path(args.admin_socket),
        )
    host, port = args.api
    api = ApiSettings(
        tokens=load_tokens(args.token_file, args.read_token_file),
        hostnames=tuple(args.api_hostname),
        insecure_no_token=args.insecure_no_token,
        metrics_need_token=not args.metrics_without_token,
        limits=ApiLimits(args.api_max_connections, args.api_timeout, args.api_timeout),
    )
    config = getattr(args, "config", None)
    return RunSettings(
        fleet=fleet_settings(args),
        bind_host=getattr(args, "bind_host", None),
        config_file=Path(config or DEFAULT_CONFIG),
        config_required=config is not None,
        config_wins=getattr(args, "config_wins", False),
        state_dir=Path(args.state_dir),
        api_host=host,
        api_port=port,
        haproxy_bin=args.haproxy_bin,
        api=api,
        sync_interval=args.sync_interval,
        supervise_interval=args.supervise_interval,
        runtime_timeout=args.runtime_timeout,
        timing=Timing(debounce=args.reload_debounce, min_reload_interval=args.min_reload_interval),
        stats=args.stats,
        stats_page=args.stats_page,
        attach=attach,
        allow_unsafe_acls=args.allow_unsafe_acls,
        allow_cert_paths=tuple(args.allow_cert_path),
        allow_outbound=tuple(getattr(args, "allow_outbound", None) or ()),
        budget=Budget(**{b.name: getattr(args, f"max_{b.name}") for b in BOUNDS}),
        check=CheckLimits(
            timeout=args.check_timeout, memory_mb=args.check_memory, env=tuple(args.haproxy_env)
        ),
        hard_stop_after=args.hard_stop_after,
        dns_servers=tuple(getattr(args, "dns_servers", None) or ()),
        maxconn=args.maxconn,
        health_watch=not getattr(args, "no_health_watch", False),
        server_state=not getattr(args, "no_server_state", False),
    )


def fleet_settings(args: argparse.Namespace) -> FleetSettings | None:
    """`--store etcd://…` (or $WEIGHBRIDGE_STORE) and `--node`: a node of a fleet."""
    import os
    import socket

    from controller.fleet.etcd import parse_store_url
    from controller.fleet.run import FleetSettings, check_node_name

    if not hasattr(args, "store_prefix"):  # `demo`: always the file store of one node
        return None
    store = args.store or os.environ.get(STORE_ENV) or "file"
    if store == "file":
        return None
    try:
        etcd = parse_store_url(store, args.store_prefix)
        node = check_node_name(args.node or socket.gethostname().lower())
    except ValueError as exc:
        raise SystemExit(f"--store/--node: {exc}") from None
    return FleetSettings(etcd, node)


def _bind_host(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an IP address") from None


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from controller.service import run

    run(run_settings(args))
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from controller.demo import run_demo

    return run_demo(
        run_settings(args), gateway_port=args.port, console=console, traffic=args.traffic
    )


def controller_options(p: argparse.ArgumentParser, state_dir: str) -> None:
    """What every controller start takes: its state, its API, HAProxy, timing and bounds."""
    from controller.budget import BOUNDS, Budget
    from controller.candidate import CheckLimits
    from controller.engine import Timing

    p.add_argument(
        "--state-dir",
        default=state_dir,
        metavar="DIR",
        help="the controller's files: desired state, HAProxy's config, maps and sockets",
    )
    p.add_argument(
        "--api",
        type=host_port,
        default=DEFAULT_API,
        metavar="HOST:PORT",
        help="where the REST API listens (beyond loopback it needs a write token)",
    )
    api_options(p)
    p.add_argument("--haproxy-bin", default="haproxy", metavar="PATH", help="the HAProxy binary")
    p.add_argument(
        "--dns-server",
        dest="dns_servers",
        action="append",
        type=host_port,
        default=[],
        metavar="HOST:PORT",
        help="a name server for instance names (repeatable; default: the system's)",
    )
    p.add_argument(
        "--no-health-watch",
        action="store_true",
        help="no health watch: a dead route keeps its share (to measure the watch's cost)",
    )
    p.add_argument(
        "--no-server-state",
        action="store_true",
        help="a reload starts every server UP, before its first check, instead of as the "
        "old worker last saw it (to measure what the server-state file saves)",
    )
    p.add_argument(
        "--sync-period",
        "--sync-interval",
        dest="sync_interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds within which every gateway is checked for drift "
        "(default: 5, more with over 800 routes: 6 ms a route)",
    )
    p.add_argument(
        "--supervise-interval",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="seconds between HAProxy probes",
    )
    p.add_argument(
        "--hard-stop-after",
        type=_duration,
        default="30s",
        metavar="TIME",
        help="how long an old HAProxy worker keeps the connections it had (WebSockets, "
        "long downloads) after a reload before closing them (docs/tls.md); e.g. 30s, 10m, 1h",
    )
    p.add_argument(
        "--maxconn",
        type=_maxconn,
        default=None,
        metavar="N",
        help="HAProxy's process-wide connection limit (default: a quarter of the hard "
        "file-descriptor limit; HAProxy reserves one per checked server slot, docs/health.md)",
    )
    p.add_argument(
        "--runtime-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds before an unanswered Runtime API call fails",
    )
    p.add_argument(
        "--reload-debounce",
        type=float,
        default=Timing.debounce,
        metavar="SECONDS",
        help="seconds to gather structural changes into one reload",
    )
    p.add_argument(
        "--min-reload-interval",
        type=float,
        default=Timing.min_reload_interval,
        metavar="SECONDS",
        help="seconds between two reloads at least",
    )
    p.add_argument(
        "--stats",
        default="127.0.0.1:8404",
        metavar="HOST:PORT",
        help="HAProxy's Prometheus exporter (/metrics); '' for none",
    )
    p.add_argument(
        "--stats-page",
        action="store_true",
        help="also HAProxy's stats page (/stats) on the --stats address (it shows everything)",
    )
    budget = Budget()
    for bound in BOUNDS:
        p.add_argument(
            f"--max-{bound.name}",
            type=int,
            default=getattr(budget, bound.name),
            metavar="N",
            help=f"budget: {bound.what} in all gateways together",
        )
    limits = CheckLimits()
    p.add_argument(
        "--check-timeout",
        type=float,
        default=limits.timeout,
        metavar="SECONDS",
        help="seconds (wall and CPU) a `haproxy -c` of a candidate may take",
    )
    p.add_argument(
        "--check-memory",
        type=int,
        default=limits.memory_mb,
        metavar="MB",
        help="MB of address space a `haproxy -c` of a candidate may use",
    )
    p.add_argument(
        "--haproxy-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this environment variable to HAProxy (none is by default); repeatable",
    )
    p.add_argument(
        "--allow-cert-path",
        action="append",
        default=[],
        metavar="DIR",
        help="let gateways name PEM files (certificates, CA files) in DIR by path; repeatable "
        "(none by default: certificates are uploaded through the API)",
    )
    p.add_argument(
        "--allow-unsafe-acls",
        action="store_true",
        help="let raw ACLs in conditions read files (-f, map) or the environment (env) "
        "or run Lua: only if everyone who may write routes may do that",
    )


def api_options(p: argparse.ArgumentParser) -> None:
    """Who may call the API and how much it may take: docs/security.md."""
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"the write token (every write; reads too); default: ${WRITE_TOKEN_ENV}, "
        "none when unset (then the API must listen on loopback)",
    )
    p.add_argument(
        "--read-token-file",
        type=Path,
        metavar="PATH",
        help=f"a read token: then every read needs a token; default: ${READ_TOKEN_ENV}, "
        "none when unset (reads open)",
    )
    refuse_token_argument(p, "--api-token")
    p.add_argument(
        "--api-hostname",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the API answers to besides its address; repeatable",
    )
    p.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="allow an API beyond loopback without a write token (unsafe)",
    )
    p.add_argument(
        "--metrics-without-token",
        action="store_true",
        help="GET /metrics needs no token even when a read token is set",
    )
    p.add_argument(
        "--api-max-connections",
        type=int,
        default=256,
        metavar="N",
        help="open API connections at most (the oldest idle one makes room)",
    )
    p.add_argument(
        "--api-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="to send a request's headers (and again its body); idle connections close",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"the desired state to start from (default: {DEFAULT_CONFIG} if it exists). "
        "It seeds an empty store; when the store already holds a different state, the "
        "store wins and the start says what differs (see --config-wins). A FILE given "
        "here must exist",
    )
    p.add_argument(
        "--config-wins",
        action="store_true",
        help="make the config file the desired state at start: what differs from the store "
        "is applied as a normal change (live where possible)",
    )
    controller_options(p, ".weighbridge")
    p.add_argument(
        "--attach",
        action="append",
        metavar="HAPROXY_CFG",
        help="attach to your HAProxy (started by you with -f HAPROXY_CFG "
        "-f STATE_DIR/weighbridge.cfg); repeat for several files",
    )
    p.add_argument(
        "--master-socket", metavar="PATH", help="attach mode: your HAProxy's master CLI socket"
    )
    p.add_argument(
        "--admin-socket", metavar="PATH", help="attach mode: your stats socket at level admin"
    )
    p.add_argument(
        "--allow-outbound",
        action="append",
        type=_outbound_rule,
        metavar="HOST|CIDR|HOST:PORT",
        help="where rollout webhooks and Prometheus checks may call; repeat for several "
        "(default: loopback only, 127.0.0.0/8 and ::1; docs/security.md)",
    )
    fleet_options(p)
    p.set_defaults(func=cmd_run)


def fleet_options(p: argparse.ArgumentParser) -> None:
    """A node of a fleet: docs/fleet.md."""
    p.add_argument(
        "--store",
        metavar="URL",
        help="where the desired state lives: 'file' (this node's state dir, the default) or "
        f"etcd://HOST:PORT[,HOST:PORT…] for a fleet of nodes sharing it (default: ${STORE_ENV})",
    )
    p.add_argument(
        "--store-prefix",
        default="/weighbridge/",
        metavar="PREFIX",
        help="the etcd keys' prefix (several fleets may share one etcd)",
    )
    p.add_argument(
        "--node",
        metavar="NAME",
        help="this node's name in the fleet (default: the host name)",
    )
    p.add_argument(
        "--bind-host",
        type=_bind_host,
        metavar="ADDR",
        help="bind every gateway on this address instead of its own host, same port "
        "(several nodes on one machine, or a host with several addresses)",
    )


def _demo_options(p: argparse.ArgumentParser) -> None:
    controller_options(p, ".weighbridge-demo")
    p.add_argument("--port", type=int, default=8080, help="the demo gateway's port")
    p.add_argument(
        "--traffic",
        type=_traffic_rate,
        metavar="RATE",
        help="send RATE requests/s (at most 500) to the demo gateway, to watch rollouts "
        "(default: none)",
    )
    p.set_defaults(func=cmd_demo)


def add_controller_commands(sub: Any) -> None:
    """`run` and `demo`, their options added when used (see the module's docstring)."""
    sub.add_parser(
        "run",
        help="run the controller (and HAProxy)",
        description="Run the controller: it starts (or adopts) HAProxy, serves the REST API "
        "and keeps HAProxy in line with the desired state.",
        populate=_run_options,
    )
    sub.add_parser(
        "demo",
        help="HAProxy, controller and demo services, ready to try",
        description="A demo: gateway shop in front of demo services (stable ×4 at 90 %%, "
        "canary ×8 at 10 %%), from a fresh state every time.",
        populate=_demo_options,
    )
