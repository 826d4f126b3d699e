"""What the CLI prints for the API's answers: errors, write results (what and how), status.

A write result is shown as the controller describes it: first what changes per gateway and
route (`changes`), then how HAProxy takes it (`plan`: runtime commands, or a reload and why).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

MAX_STEPS = 20
"""Runtime commands listed one by one; beyond that, a count (a big change has thousands)."""
MAX_INSTANCE_LINES = 6
"""Instances added or removed in one route listed one by one; beyond that, counts."""


def print_error(console: Console, status: int, body: Any, what: str = "") -> int:
    """The controller's refusal: its message and every `{field, message}` problem."""
    message = body.get("error") if isinstance(body, dict) else body
    prefix = f"{escape(what)}: " if what else ""
    console.print(f"{prefix}[red]error {status}[/]: {escape(str(message))}", highlight=False)
    problems = body.get("problems", []) if isinstance(body, dict) else []
    for problem in problems:
        console.print(f"  {problem.get('field')}: {problem.get('message')}", markup=False)
    return 1


def result_headline(body: dict[str, Any]) -> str:
    method, ms, revision = body["method"], body["duration_ms"], body["revision"]
    if body.get("dry_run"):
        how = {
            "none": "nothing would change",
            "runtime": "it would be applied live (runtime commands, no reload)",
            "reload": "it would need a reload of HAProxy",
        }[method]
        return f"dry run, nothing applied: {how} (planned in {ms} ms on revision {revision})"
    how = {
        "none": "nothing to change",
        "runtime": "applied live (runtime commands, no reload)",
        "reload": "applied by a reload of HAProxy",
    }[method]
    return f"{how} in {ms} ms (revision {revision})"


def change_lines(changes: list[dict[str, Any]]) -> list[str]:
    """The changes in the controller's words; long instance lists of a route as counts."""
    instances: dict[tuple[str, str | None], list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        if change["field"] == "instances":
            instances[(change["gateway"], change["route"])].append(change)
    lines: list[str] = []
    summarised: set[tuple[str, str | None]] = set()
    for change in changes:
        key = (change["gateway"], change["route"])
        group = instances.get(key, []) if change["field"] == "instances" else []
        if len(group) <= MAX_INSTANCE_LINES:
            lines.append(change["text"])
        elif key not in summarised:
            summarised.add(key)
            added = sum(1 for c in group if c["before"] is None)
            lines.append(
                f"{key[0]}.{key[1]}: instances {added} added, {len(group) - added} removed"
            )
    return lines


def print_result(console: Console, body: dict[str, Any], what: str = "") -> None:
    """A write's answer: headline, then what changes, then how."""
    prefix = f"{what}: " if what else ""
    console.print(prefix + result_headline(body), markup=False, highlight=False)
    lines = change_lines(body.get("changes", []))
    if lines:
        console.print("  what changes:", markup=False)
        for line in lines:
            console.print(f"    {line}", markup=False, highlight=False)
    steps = body.get("plan", [])
    if steps:
        console.print("  how:", markup=False)
        for step in steps[:MAX_STEPS]:
            console.print(f"    {step}", markup=False, highlight=False)
        if len(steps) > MAX_STEPS:
            console.print(f"    … and {len(steps) - MAX_STEPS} more commands", markup=False)


IN_SERVICE_NOTE = (
    "in service: the instance fills a server slot HAProxy sends traffic to; healthy: of "
    "those, the ones passing HAProxy's checks"
)


def _instances_cell(instances: list[dict[str, Any]]) -> str:
    """Instances in service of the route's; never "ready": nobody checked they answer."""
    serving = sum(1 for i in instances if i["state"] == "ready")
    return f"{serving}/{len(instances)}"


def _strength_cell(route: dict[str, Any]) -> str:
    desired, applied = route.get("condition_strength"), route.get("applied_condition_strength")
    if desired is None:
        return "-"
    return desired if applied in (None, desired) else f"{desired} (applied {applied})"


def status_table(body: dict[str, Any]) -> Table:
    sync = "in sync" if body["in_sync"] else "SYNCING"
    table = Table(
        title=f"gateway {body['gateway']} on {body['bind']} (revision {body['revision']}, {sync})",
        caption=IN_SERVICE_NOTE,
    )
    columns = ("route", "weight", "applied", "condition", "strength", "requests", "5xx")
    for column in (*columns, "in service", "healthy"):
        table.add_column(column, justify="left" if column in ("route", "condition") else "right")
    for name, route in body["routes"].items():
        table.add_row(
            escape(name),
            route["weight"],
            route["applied_weight"] or "-",
            escape(route.get("condition") or "-"),
            _strength_cell(route),
            str(route["requests"]),
            str(route["responses"]["5xx"]),
            _instances_cell(route["instances"]),
            _healthy_cell(route, body.get("on_route_down", "redistribute")),
        )
    return table


def _healthy_cell(route: dict[str, Any], on_route_down: str) -> str:
    cell = f"{route.get('healthy', 0)}/{route.get('in_service', 0)}"
    if route.get("down"):
        cell += " DOWN" + (" (share moved)" if on_route_down == "redistribute" else " (503)")
    return cell


def health_table(body: dict[str, Any]) -> Table:
    """Each instance as HAProxy's checks see it: state, last check, its result."""
    table = Table(title="instances")
    for column in ("route", "instance", "slot", "state", "check", "last check"):
        table.add_column(column)
    for name, route in body["routes"].items():
        for instance in route["instances"]:
            health = instance.get("health") or {}
            check = health.get("check_status") or "-"
            if health.get("check_code"):
                check += f" {health['check_code']}"
            table.add_row(
                escape(name),
                escape(instance["address"]),
                instance["slot"] or "-",
                health.get("state") or instance["state"],
                escape(check),
                escape(health.get("last_check") or "-"),
            )
    return table
