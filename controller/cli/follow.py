"""Following rollouts from the CLI: the live `--watch` view and `--wait` for scripts.

`--wait` prints each rollout's events as lines on stderr and the result on stdout (`--json`:
the rollout, or `{"rollouts": [...]}` when several were followed); the exit code is the worst
of their ends: 0 promoted, 1 rolled back or aborted, 2 failed or refused, 3 still running at
`--timeout`. Ctrl-C stops following, never the rollout: it says so, and how to abort it.
It keeps asking through a controller restart (up to a minute without an answer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from controller.cli.client import DEFAULT_API, ApiClient, ApiClientError
from controller.cli.output import print_error
from controller.rollouts.state import TERMINAL
from controller.rollouts.text import (
    check_name,
    event_line,
    threshold_text,
    value_text,
    weights_text,
    words,
)

EXIT_CODES = {"promoted": 0, "rolled_back": 1, "aborted": 1, "failed": 2}
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
POLL_SECONDS = 0.5
UNREACHABLE_GRACE = 60.0
"""Seconds `--wait` keeps asking a controller that does not answer (it may be restarting)."""


def call(
    client: ApiClient, method: str, path: str, body: Any = None, *, dry_run: bool = False
) -> tuple[int, Any]:
    reply = client.call(method, f"/rollouts{path}", body, dry_run=dry_run)
    return reply.status, reply.body


def refused(console: Console, status: int, body: Any) -> int:
    print_error(console, status, body)
    return EXIT_REFUSED


def abort_hint(args: argparse.Namespace, rollout_id: str) -> str:
    """The command that stops the rollout, as it can be pasted (with a non-default --api)."""
    api = f" --api {args.api}" if args.api != DEFAULT_API else ""
    return f"weighbridge rollout abort {rollout_id}{api}"


def render(view: dict[str, Any], now: float | None = None) -> Group:
    """The live progress display of one rollout."""
    now = time.time() if now is None else now
    phase = view["phase"]
    colour = {"promoted": "green", "rolled_back": "red", "aborted": "red", "failed": "red"}.get(
        phase, "yellow" if phase in ("paused", "rolling_back") else "cyan"
    )
    header = Text.assemble(
        (f"rollout {view['id']}", "bold"),
        f"  {view['strategy']} on {view['gateway']}: {view['from_route']} → {view['to_route']}  ",
        (words(phase), f"bold {colour}"),
        f"  step {view['step']}/{view['steps']}",
    )
    lines: list[Any] = [header]
    source = " (HAProxy)" if view.get("weights_source") == "haproxy" else ""
    status = f"weights{source} {weights_text(view['weights'])}"
    if view.get("condition_strength"):
        status += f" (condition strength {view['condition_strength']})"
    if view.get("failure_threshold") is not None:
        status += f"; failed checks {view['failed_checks']}/{view['failure_threshold']}"
    if view.get("next_check_at"):
        status += f"; next check in {max(0.0, view['next_check_at'] - now):.1f} s"
    lines.append(Text(status))
    for label, key in (
        ("waiting for", "waiting_for"),
        ("waiting", "blocked"),
        ("why", "reason"),
        ("error", "last_error"),
    ):
        if view.get(key):
            lines.append(Text(f"{label}: {view[key]}", style="yellow"))
    check = view.get("last_check")
    if check:
        table = Table(
            title=f"last check (step {check['step']}, {check['requests']} responses, "
            f"{check['seconds']:.1f} s): {check['verdict']}",
            title_justify="left",
        )
        for column in ("check", "value", "threshold", "result"):
            table.add_column(column)
        for result in check["results"]:
            style = {"fail": "red", "pass": "green"}.get(result["result"], "yellow")
            table.add_row(
                check_name(result["name"]),
                value_text(result["value"], result.get("unit", "")),
                threshold_text(result),
                Text(result["result"], style),
            )
        lines.append(table)
    for event in view["events"][-6:]:
        lines.append(Text(event_line(event), style="dim"))
    return Group(*lines)


def _poll(client: ApiClient, rollout_id: str, since: list[float | None]) -> Any:
    """One GET; None while the controller does not answer (within the grace period)."""
    try:
        status, body = call(client, "GET", f"/{rollout_id}")
    except ApiClientError as exc:
        first = since[0] = since[0] or time.monotonic()
        if time.monotonic() - first > UNREACHABLE_GRACE:
            raise
        print(f"waiting for the controller: {exc}", file=sys.stderr, flush=True)
        return None
    since[0] = None
    return status, body


def follow(
    args: argparse.Namespace,
    client: ApiClient,
    console: Console,
    ids: list[str],
    *,
    many: bool = False,
) -> int:
    """Until every rollout in `ids` ended (or --timeout, or Ctrl-C). `many`: the JSON result
    is `{"rollouts": [...]}` (however many there are), else the one rollout."""
    deadline = time.monotonic() + args.timeout if args.timeout else None
    live = args.watch and not args.wait and console.is_terminal
    display = Live(console=console, refresh_per_second=4) if live else None
    views: dict[str, dict[str, Any]] = {}
    shown = dict.fromkeys(ids, 0)
    unreachable: list[float | None] = [None]
    if display is not None:
        display.start()
    try:
        while True:
            for rollout_id in ids:
                if views.get(rollout_id, {}).get("phase") in TERMINAL:
                    continue
                answer = _poll(client, rollout_id, unreachable)
                if answer is None:
                    continue
                status, body = answer
                if status >= 400:
                    return refused(console, status, body)
                views[rollout_id] = body
                if display is None:
                    for event in body["events"][shown[rollout_id] :]:
                        prefix = f"{rollout_id} " if len(ids) > 1 else ""
                        print(prefix + event_line(event), file=sys.stderr, flush=True)
                    shown[rollout_id] = len(body["events"])
            if display is not None and views:
                display.update(Group(*(render(v) for v in views.values())))
            if len(views) == len(ids) and all(v["phase"] in TERMINAL for v in views.values()):
                break
            if deadline is not None and time.monotonic() > deadline:
                running = [i for i in ids if views.get(i, {}).get("phase") not in TERMINAL]
                print(f"still running: {', '.join(running)}", file=sys.stderr, flush=True)
                _result(args, console, ids, views, many)
                return EXIT_TIMEOUT
            time.sleep(POLL_SECONDS)  # the poll period of a CLI client
    except KeyboardInterrupt:
        if display is not None:
            display.stop()
            display = None
        for rollout_id in ids:
            view = views.get(rollout_id, {})
            if view.get("phase") not in TERMINAL:
                where = (
                    f" ({words(view['phase'])}, step {view['step']}/{view['steps']})"
                    if view
                    else ""
                )
                print(
                    f"stopped following: rollout {rollout_id} goes on{where}; "
                    f"stop it with: {abort_hint(args, rollout_id)}",
                    file=sys.stderr,
                    flush=True,
                )
        return EXIT_INTERRUPTED
    finally:
        if display is not None:
            display.stop()
    _result(args, console, ids, views, many)
    return max(EXIT_CODES[views[i]["phase"]] for i in ids)


def _result(
    args: argparse.Namespace, console: Console, ids: list[str], views: dict[str, Any], many: bool
) -> None:
    if args.json:
        known = [views[i] for i in ids if i in views]
        print(json.dumps({"rollouts": known} if many or not known else known[0], indent=2))
        return
    for rollout_id in ids:
        view = views.get(rollout_id)
        if view is None or view["phase"] not in TERMINAL:
            continue
        console.print(
            f"rollout {view['id']} {words(view['phase'])}: {escape(view['reason'] or '')}; "
            f"weights now {escape(weights_text(view['weights']))}",
            highlight=False,
        )
