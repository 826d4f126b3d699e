"""Gateway commands: `weights`, `instances`, `status`, `plan` and `apply` (API clients).

Every write takes `--dry-run`: the controller checks and plans it, and answers what would
change and how, applying nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from controller.cli.client import ApiClient, Reply, add_client_options, client_from, segment
from controller.cli.output import health_table, print_error, print_result, status_table
from controller.errors import ConflictingState, NotFound
from controller.model import check_instance_name, is_instance_name, parse_address

if TYPE_CHECKING:
    from controller.model import Config

MAX_ATTEMPTS = 5
"""Read-edit-write rounds of `instances add|remove` while other writers keep changing the
gateway (each round that loses gets 412 from If-Match and starts over)."""

Action = Literal["add", "remove", "set"]


def _instance(text: str) -> str:
    """An instance as the controller writes it back (`[::1]:80`, `api.internal:80`), so
    edits compare equal."""
    try:
        return check_instance_name(text) if is_instance_name(text) else str(parse_address(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percent(item: str) -> tuple[str, str]:
    route, sep, value = item.partition("=")
    if not sep or not route:
        raise argparse.ArgumentTypeError(f"{item!r}: expected ROUTE=PERCENT")
    return route, value if value.endswith("%") else f"{value}%"


def cmd_weights(args: argparse.Namespace, console: Console) -> int:
    client = client_from(args)
    reply = client.call(
        "PATCH",
        f"/gateways/{segment(args.gateway)}/weights",
        dict(args.split),
        dry_run=args.dry_run,
    )
    if not reply.ok:
        return print_error(console, reply.status, reply.body)
    print_result(console, reply.body)
    return 0


def cmd_apply(args: argparse.Namespace, console: Console) -> int:
    """Make the gateways those of a config file; `plan` only shows what that would do."""
    from controller.config_file import load_config

    config = load_config(Path(args.file), allow_unsafe_acls=True)  # the controller decides
    dry_run = args.command == "plan" or args.dry_run
    client = client_from(args)
    current = client.call("GET", "/gateways")
    if not current.ok:
        return print_error(console, current.status, current.body)
    failed = put_gateways(client, console, config, dry_run)
    if args.prune:
        for name in sorted(set(current.body["gateways"]) - set(config.gateways)):
            reply = client.call("DELETE", f"/gateways/{segment(name)}", dry_run=dry_run)
            failed += _report(console, f"delete gateway {name}", reply)
    return 1 if failed else 0


def put_gateways(client: ApiClient, console: Console, config: Config, dry_run: bool) -> int:
    """PUT every gateway of `config`; how many the controller refused."""
    failed = 0
    for name, gateway in config.gateways.items():
        body = gateway.as_json()
        reply = client.call("PUT", f"/gateways/{segment(name)}", body, dry_run=dry_run)
        failed += _report(console, f"gateway {name}", reply)
    return failed


def _report(console: Console, what: str, reply: Reply) -> int:
    if not reply.ok:
        return print_error(console, reply.status, reply.body, what)
    print_result(console, reply.body, what)
    return 0


def edited(action: Action, current: list[str], addresses: list[str]) -> tuple[list[str], list[str]]:
    """The route's new instance list, and notes on what was already so."""
    if action == "set":
        return list(dict.fromkeys(addresses)), []
    notes: list[str] = []
    if action == "add":
        result = list(current)
        for address in addresses:
            if address in result:
                notes.append(f"{address} is already an instance")
            else:
                result.append(address)
        return result, notes
    for address in addresses:
        if address not in current:
            notes.append(f"{address} is not an instance")
    return [a for a in current if a not in addresses], notes


def edit_instances(
    client: ApiClient,
    gateway: str,
    route: str,
    edit: Callable[[list[str]], list[str]],
    *,
    dry_run: bool = False,
) -> Reply | None:
    """Read the route, `edit` its instances, write them back with If-Match: a concurrent
    writer in between makes the write fail (412) and the round start over, so nobody's
    change is lost. None when the edit changes nothing."""
    path = f"/gateways/{segment(gateway)}"
    for _ in range(MAX_ATTEMPTS):
        read = client.call("GET", path)
        if not read.ok:
            return read
        routes = read.body.get("routes", {})
        if route not in routes:
            raise NotFound(
                f"gateway {gateway!r} has no route {route!r}",
                [{"field": "route", "message": "unknown route"}],
            )
        current = routes[route].get("instances", [])
        wanted = edit(current)
        if wanted == current:
            return None
        reply = client.call(
            "PUT",
            f"{path}/routes/{segment(route)}/instances",
            wanted,
            dry_run=dry_run,
            headers={"If-Match": read.headers.get("etag", "*")},
        )
        if reply.status != 412:
            return reply
    raise ConflictingState(
        f"gateway {gateway!r} kept changing while its instances were edited: "
        f"gave up after {MAX_ATTEMPTS} attempts, nothing of this edit was applied"
    )


def cmd_instances(args: argparse.Namespace, console: Console) -> int:
    action: Action = args.action
    if action != "set" and not args.addresses:
        console.print(f"instances {action} needs at least one HOST:PORT", style="red")
        return 2
    client = client_from(args)
    notes: list[str] = []

    def edit(current: list[str]) -> list[str]:
        wanted, found = edited(action, current, args.addresses)
        notes[:] = found  # of the last round: the one that was written
        return wanted

    if action == "set":
        reply: Reply | None = client.call(
            "PUT",
            f"/gateways/{segment(args.gateway)}/routes/{segment(args.route)}/instances",
            edit([]),
            dry_run=args.dry_run,
        )
    else:
        reply = edit_instances(client, args.gateway, args.route, edit, dry_run=args.dry_run)
    where = f"{args.gateway}.{args.route}"
    for note in notes:
        console.print(f"note: {note} of {where}", markup=False)
    if reply is None:
        console.print(f"nothing to change: the instances of {where} are already so", markup=False)
        return 0
    if not reply.ok:
        return print_error(console, reply.status, reply.body)
    print_result(console, reply.body)
    return 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    reply = client_from(args).call("GET", f"/gateways/{segment(args.gateway)}/status")
    if not reply.ok:
        return print_error(console, reply.status, reply.body)
    if args.json:
        sys.stdout.write(json.dumps(reply.body, indent=2) + "\n")
        return 0
    console.print(status_table(reply.body))
    console.print(health_table(reply.body))
    return 0


def add_gateway_commands(sub: Any) -> None:
    """The gateway commands on the CLI's subparsers (`argparse._SubParsersAction`)."""

    def client(name: str, help_text: str, *, write: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        add_client_options(p)
        if write:
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="check and plan it, apply nothing: shows what would change and how",
            )
        return p

    weights = client("weights", "set a gateway's whole split, e.g. stable=95 canary=5")
    weights.add_argument("gateway")
    weights.add_argument(
        "split",
        nargs="+",
        type=_percent,
        metavar="ROUTE=PERCENT",
        help="every route's weight (routes left out get 0%%); 0.01 %% steps",
    )
    weights.set_defaults(func=cmd_weights)

    instances = client(
        "instances",
        "add, remove or set a route's instances (add and remove leave the others alone, "
        "also when others write at the same time)",
    )
    instances.add_argument("gateway")
    instances.add_argument("route")
    instances.add_argument(
        "action",
        choices=("add", "remove", "set"),
        help="add or remove these; set: exactly these (none: the route has no instances)",
    )
    instances.add_argument("addresses", nargs="*", type=_instance, metavar="HOST:PORT")
    instances.set_defaults(func=cmd_instances)

    status = client(
        "status",
        "routes: weights desired and applied, conditions, requests, instances",
        write=False,
    )
    status.add_argument("gateway")
    status.add_argument("--json", action="store_true", help="the API's answer as JSON")
    status.set_defaults(func=cmd_status)

    for name, text in (
        ("plan", "show what `apply` would change, per gateway and route, and how; applies nothing"),
        ("apply", "make the gateways those of a config file"),
    ):
        p = client(name, text, write=name == "apply")
        p.add_argument("file", help="a weighbridge.yaml")
        p.add_argument("--prune", action="store_true", help="also delete gateways not in it")
        p.set_defaults(func=cmd_apply, dry_run=False)
