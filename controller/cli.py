"""Command line: `run` and `demo` start the controller; the rest are REST API clients."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.api.tokens import READ_TOKEN_ENV, WRITE_TOKEN_ENV, token_from
from controller.budget import Budget
from controller.candidate import CheckLimits
from controller.cli_import import add_import_commands
from controller.cli_rollout import add_rollout_commands
from controller.engine import Timing
from controller.errors import WeighbridgeError

if TYPE_CHECKING:
    from controller.model import Config

DEFAULT_API = "127.0.0.1:9900"


class ApiClientError(Exception):
    pass


def _host_port(text: str) -> tuple[str, int]:
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


def call_api(
    api: str, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, Any]:
    """One JSON request to the controller; returns status and decoded body."""
    url = api if api.startswith("http") else f"http://{api}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/api/v1{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError as exc:
        raise ApiClientError(f"cannot reach the controller at {url}: {exc}") from exc


class _OnCommandLine(argparse.Action):
    """A token given as an argument: refused, `ps` shows it to every user of the machine."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is no longer accepted (a token on the command line "
            f"shows in `ps`): use --token-file or ${WRITE_TOKEN_ENV}"
        )


def add_client_token_options(p: argparse.ArgumentParser) -> None:
    """How a client command finds its token: `--token-file`, else the environment."""
    p.add_argument(
        "--token-file",
        type=Path,
        help=f"file holding the API token (default: ${WRITE_TOKEN_ENV}, else ${READ_TOKEN_ENV})",
    )
    p.add_argument("--token", action=_OnCommandLine, dest="token_argument", help=argparse.SUPPRESS)


def client_token(args: argparse.Namespace) -> str:
    return token_from(args.token_file, WRITE_TOKEN_ENV) or token_from(None, READ_TOKEN_ENV)


def _print_error(console: Console, status: int, body: Any) -> int:
    message = body.get("error") if isinstance(body, dict) else body
    console.print(f"[red]error {status}[/]: {escape(str(message))}")
    for problem in (body or {}).get("problems", []) if isinstance(body, dict) else []:
        console.print(f"  {problem['field']}: {problem['message']}", markup=False)
    return 1


def cmd_weights(args: argparse.Namespace, console: Console) -> int:
    weights: dict[str, str] = {}
    for item in args.split:
        route, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]{escape(repr(item))}: expected ROUTE=PERCENT[/]")
            return 2
        weights[route] = value if value.endswith("%") else f"{value}%"
    query = "?dry_run=true" if args.dry_run else ""
    status, body = call_api(
        args.api, "PATCH", f"/gateways/{args.gateway}/weights{query}", weights, args.token
    )
    if status >= 400:
        return _print_error(console, status, body)
    console.print(f"{body['applied']} in {body['duration_ms']} ms (revision {body['revision']})")
    for step in body["plan"]:
        console.print(f"  {step}", markup=False)
    return 0


def cmd_apply(args: argparse.Namespace, console: Console) -> int:
    """Make the gateways those of a config file; `plan` only shows what that would do."""
    from controller.config_file import load_config

    config = load_config(Path(args.file), allow_unsafe_acls=True)  # the controller decides
    dry_run = args.command == "plan" or args.dry_run
    query = "?dry_run=true" if dry_run else ""
    status, current = call_api(args.api, "GET", "/gateways", token=args.token)
    if status >= 400:
        return _print_error(console, status, current)
    failed = _put_gateways(args, console, config, query)
    if args.prune:
        for name in sorted(set(current["gateways"]) - set(config.gateways)):
            status, result = call_api(
                args.api, "DELETE", f"/gateways/{name}{query}", None, args.token
            )
            failed += _report(console, f"delete gateway {name}", status, result)
    return 1 if failed else 0


def _put_gateways(args: argparse.Namespace, console: Console, config: Config, query: str) -> int:
    """PUT every gateway of `config`; how many the controller refused."""
    failed = 0
    for name, gateway in config.gateways.items():
        body = gateway.model_dump(mode="json", exclude_none=True)
        status, result = call_api(args.api, "PUT", f"/gateways/{name}{query}", body, args.token)
        failed += _report(console, f"gateway {name}", status, result)
    return failed


def _report(console: Console, what: str, status: int, body: Any) -> int:
    if status >= 400:
        console.print(f"{what}: ", end="")
        return _print_error(console, status, body)
    console.print(f"{what}: {body['applied']} ({body['method']}), {body['duration_ms']} ms")
    for step in body["plan"]:
        console.print(f"  {step}", markup=False)
    return 0


def cmd_instances(args: argparse.Namespace, console: Console) -> int:
    status, body = call_api(
        args.api,
        "PUT",
        f"/gateways/{args.gateway}/routes/{args.route}/instances",
        args.addresses,
        args.token,
    )
    if status >= 400:
        return _print_error(console, status, body)
    console.print(f"{body['applied']} in {body['duration_ms']} ms")
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    status, body = call_api(args.api, "GET", f"/gateways/{args.gateway}/status", token=args.token)
    if status >= 400:
        return _print_error(console, status, body)
    if args.json:
        console.print_json(data=body)
        return 0
    table = Table(
        title=f"gateway {body['gateway']} on {body['bind']} "
        f"(revision {body['revision']}, {'in sync' if body['in_sync'] else 'SYNCING'})"
    )
    for column in ("route", "weight", "applied", "requests", "5xx", "instances"):
        table.add_column(column, justify="right" if column != "route" else "left")
    for name, route in body["routes"].items():
        ready = sum(1 for i in route["instances"] if i["state"] == "ready")
        table.add_row(
            name,
            route["weight"],
            route["applied_weight"] or "-",
            str(route["requests"]),
            str(route["responses"]["5xx"]),
            f"{ready}/{len(route['instances'])} ready",
        )
    console.print(table)
    return 0


def _run_settings(args: argparse.Namespace) -> Any:
    from controller.api.connections import ApiLimits
    from controller.api.tokens import load_tokens
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
    return RunSettings(
        config_file=Path(args.config),
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
        allow_outbound=tuple(getattr(args, "allow_outbound", None) or ()),
        budget=Budget(args.max_routes, args.max_instances, args.max_slots),
        check=CheckLimits(
            timeout=args.check_timeout, memory_mb=args.check_memory, env=tuple(args.haproxy_env)
        ),
    )


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from controller.service import serve

    asyncio.run(serve(_run_settings(args)))
    return 0


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from controller.demo import run_demo

    return run_demo(
        _run_settings(args), gateway_port=args.port, console=console, traffic=args.traffic
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weighbridge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def controller_options(p: argparse.ArgumentParser, state_dir: str) -> None:
        p.add_argument("--config", default="weighbridge.yaml", help="seeds an empty store")
        p.add_argument("--state-dir", default=state_dir)
        p.add_argument("--api", type=_host_port, default=_host_port(DEFAULT_API))
        api_options(p)
        p.add_argument("--haproxy-bin", default="haproxy")
        p.add_argument(
            "--sync-period",
            "--sync-interval",
            dest="sync_interval",
            type=float,
            default=None,
            help="seconds within which every gateway is checked for drift "
            "(default: 5, more with over 800 routes: 6 ms a route)",
        )
        p.add_argument(
            "--supervise-interval", type=float, default=0.2, help="seconds between HAProxy probes"
        )
        p.add_argument(
            "--runtime-timeout",
            type=float,
            default=5.0,
            help="seconds before an unanswered Runtime API call fails",
        )
        p.add_argument(
            "--reload-debounce",
            type=float,
            default=Timing.debounce,
            help="seconds to gather structural changes into one reload",
        )
        p.add_argument(
            "--min-reload-interval",
            type=float,
            default=Timing.min_reload_interval,
            help="seconds between two reloads at least",
        )
        p.add_argument(
            "--stats",
            default="127.0.0.1:8404",
            help="HAProxy's Prometheus exporter (/metrics); '' for none",
        )
        p.add_argument(
            "--stats-page",
            action="store_true",
            help="also HAProxy's stats page (/stats) on the --stats address (it shows everything)",
        )
        budget = Budget()
        for name, default in (
            ("routes", budget.routes),
            ("instances", budget.instances),
            ("slots", budget.slots),
        ):
            p.add_argument(
                f"--max-{name}",
                type=int,
                default=default,
                help=f"budget: {name} in all gateways together (default {default:,})",
            )
        limits = CheckLimits()
        p.add_argument(
            "--check-timeout",
            type=float,
            default=limits.timeout,
            help="seconds (wall and CPU) a `haproxy -c` of a candidate may take",
        )
        p.add_argument(
            "--check-memory",
            type=int,
            default=limits.memory_mb,
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
            help=f"the write token (every write; reads too), or ${WRITE_TOKEN_ENV}",
        )
        p.add_argument(
            "--read-token-file",
            type=Path,
            help=f"a read token: then every read needs a token; or ${READ_TOKEN_ENV}",
        )
        p.add_argument("--api-token", action=_OnCommandLine, help=argparse.SUPPRESS)
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
        p.add_argument("--api-max-connections", type=int, default=256, metavar="N")
        p.add_argument(
            "--api-timeout",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="to send a request's headers (and again its body); idle connections close",
        )

    run = sub.add_parser("run", help="run the controller (and HAProxy)")
    controller_options(run, ".weighbridge")
    run.add_argument(
        "--attach",
        action="append",
        metavar="HAPROXY_CFG",
        help="attach to your HAProxy (started by you with -f HAPROXY_CFG "
        "-f STATE_DIR/weighbridge.cfg); repeat for several files",
    )
    run.add_argument("--master-socket", help="attach mode: your HAProxy's master CLI socket")
    run.add_argument("--admin-socket", help="attach mode: your stats socket at level admin")
    run.add_argument(
        "--allow-outbound",
        action="append",
        type=_outbound_rule,
        metavar="HOST|CIDR|HOST:PORT",
        help="where rollout webhooks and Prometheus checks may call; repeat for several "
        "(default: loopback only, 127.0.0.0/8 and ::1; docs/security.md)",
    )
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="HAProxy, controller and demo services, ready to try")
    controller_options(demo, ".weighbridge-demo")
    demo.add_argument("--port", type=int, default=8080, help="the demo gateway's port")
    demo.add_argument(
        "--traffic",
        type=_traffic_rate,
        metavar="RATE",
        help="send RATE requests/s (at most 500) to the demo gateway, to watch rollouts",
    )
    demo.set_defaults(func=cmd_demo)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--api", default=DEFAULT_API)
        add_client_token_options(p)
        p.add_argument("gateway")
        return p

    weights = client("weights", "set a gateway's whole split, e.g. stable=95 canary=5")
    weights.add_argument("split", nargs="+", metavar="ROUTE=PERCENT")
    weights.add_argument("--dry-run", action="store_true")
    weights.set_defaults(func=cmd_weights)
    for name, text in (
        ("apply", "make the gateways those of a config file"),
        ("plan", "show what `apply` would change, applying nothing"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--api", default=DEFAULT_API)
        add_client_token_options(p)
        p.add_argument("file", help="a weighbridge.yaml")
        p.add_argument("--prune", action="store_true", help="also delete gateways not in it")
        p.add_argument("--dry-run", action="store_true")
        p.set_defaults(func=cmd_apply)
    instances = client("instances", "replace a route's instances")
    instances.add_argument("route")
    instances.add_argument("addresses", nargs="*", metavar="HOST:PORT")
    instances.set_defaults(func=cmd_instances)
    status = client("status", "routes, weights desired and applied, instances, requests")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    add_rollout_commands(sub)
    add_import_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    console = Console()
    try:
        if "token_file" in args and args.command not in ("run", "demo"):
            args.token = client_token(args)
        code: int = args.func(args, console)
    except (ApiClientError, WeighbridgeError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
