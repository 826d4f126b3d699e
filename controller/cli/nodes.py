"""`weighbridge nodes`: the fleet's nodes as one node sees them (docs/fleet.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.cli.client import add_client_options, client_from
from controller.cli.output import print_error


def nodes_table(body: dict[str, Any]) -> Table:
    table = Table(title=f"nodes (store revision {body['store_revision']}, asked {body['node']})")
    for column in ("node", "state", "applied", "lag", "haproxy", "version", "last error"):
        table.add_column(column)
    for node in body["nodes"]:
        state = "live" if node["live"] else "[red]down[/]"
        if node.get("from_local_copy"):
            state += " (local copy)"
        lag = node.get("lag")
        table.add_row(
            escape(str(node["name"])),
            state,
            str(node.get("applied_revision", "?")),
            "-" if lag is None else (f"[yellow]{lag}[/]" if lag else "0"),
            escape(str(node.get("haproxy", "?"))),
            escape(str(node.get("version", "?"))),
            escape(str(node.get("last_error") or "")),
        )
    return table


def cmd_nodes(args: argparse.Namespace, console: Console) -> int:
    reply = client_from(args).call("GET", "/nodes")
    if not reply.ok:
        return print_error(console, reply.status, reply.body, "nodes (is it a fleet node?)")
    if args.json:
        sys.stdout.write(json.dumps(reply.body, indent=2) + "\n")
        return 0
    console.print(nodes_table(reply.body))
    if reply.body.get("store_error"):
        console.print(f"[red]{escape(reply.body['store_error'])}[/]")
    return 0


def add_node_commands(sub: Any) -> None:
    text = "the fleet's nodes: which applied what, which lags, which is down"
    p: argparse.ArgumentParser = sub.add_parser("nodes", help=text, description=text)
    add_client_options(p)
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(func=cmd_nodes)
