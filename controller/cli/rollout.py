"""`weighbridge rollout start|status|pause|resume|promote|abort`: a client of /api/v1/rollouts.

`start` prints the rollout's id first (also with `--wait`; with `--json` on stderr, the JSON
on stdout has it too), so a script can always abort what it started. `--watch` shows live
progress; `--wait` is for scripts (see `follow`). Exit codes: 0 promoted, 1 rolled
back or aborted, 2 failed, refused or nothing to wait for, 3 still running at `--timeout`,
130 interrupted (the rollout goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from controller.cli.client import add_client_options, client_from
from controller.cli.follow import (
    EXIT_REFUSED,
    abort_hint,
    call,
    follow,
    refused,
    render,
)
from controller.rollouts.text import clock, weights_text, words


def _percents(text: str) -> list[str]:
    return [p if p.endswith("%") else f"{p}%" for p in (s.strip() for s in text.split(",")) if p]


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The rollout body: a spec file (YAML or JSON), or one built from the flags."""
    if args.file:
        loaded = yaml.safe_load(Path(args.file).read_text())
        if not isinstance(loaded, dict):
            raise SystemExit(f"{args.file}: expected a mapping (a rollout spec)")
        return loaded
    if not (args.gateway and args.from_route and args.to_route):
        raise SystemExit("rollout start needs GATEWAY --from ROUTE --to ROUTE (or --file)")
    strategy: dict[str, Any] = {"type": args.strategy}
    if args.strategy == "canary":
        if args.step_weight:
            strategy["step_weight"] = _percents(args.step_weight)[0]
            if args.max_weight:
                strategy["max_weight"] = _percents(args.max_weight)[0]
        else:
            strategy["steps"] = _percents(args.steps)
    elif args.strategy == "bluegreen":
        strategy["preview_weight"] = _percents(args.preview)[0]
    else:
        strategy["condition_strength"] = _percents(args.strength)[0]
        if args.requests is not None:
            strategy["requests"] = args.requests
        if args.duration is not None:
            strategy["duration"] = args.duration
        if args.then:
            strategy["then_weights"] = _percents(args.then)
    checks: dict[str, Any] | str = "none"
    if not args.no_checks:
        checks = {
            "success_rate": _percents(args.success_rate)[0],
            "min_requests": args.min_requests,
            "failure_threshold": args.failure_threshold,
            "max_inconclusive": args.max_inconclusive or None,
        }
        if args.max_response_ms is not None:
            checks["max_response_ms"] = args.max_response_ms
    hook = {"timeout": args.webhook_timeout, "retries": args.webhook_retries}
    return {
        "gateway": args.gateway,
        "from_route": args.from_route,
        "to_route": args.to_route,
        "strategy": strategy,
        "interval": args.interval,
        "checks": checks,
        "rollback": {"steps": args.rollback_steps, "interval": args.rollback_interval},
        "webhooks": {
            "pre_step": [{"url": url, **hook} for url in args.pre_step_webhook],
            "rollback": [{"url": url, **hook} for url in args.rollback_webhook],
        },
    }


# ---- commands ----------------------------------------------------------------------------


def _say(args: argparse.Namespace, console: Console, text: str, style: str = "") -> None:
    """A line for people: on stdout, or on stderr when stdout carries JSON."""
    if args.json:
        print(text, file=sys.stderr, flush=True)
    else:
        console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False)


def _plan(console: Console, view: dict[str, Any]) -> None:
    for entry in view["plan"]:
        console.print(f"  step {entry['step']}: {weights_text(entry['weights'])}", markup=False)


def cmd_start(args: argparse.Namespace, console: Console) -> int:
    client = client_from(args)
    status, view = call(client, "POST", "", spec_from_args(args), dry_run=args.dry_run)
    if status >= 400:
        return refused(console, status, view)
    if args.dry_run:
        _say(args, console, f"dry run: nothing was started; rollout {view['id']} would be:")
    else:
        _say(args, console, f"rollout {view['id']} started: {len(view['plan'])} steps")
    for warning in view["warnings"]:
        _say(args, console, f"warning: {warning}", "yellow")
    if not args.dry_run:
        _say(args, console, f"stop it with: {abort_hint(args, view['id'])}")
    if args.dry_run or not (args.wait or args.watch):
        if args.json:
            print(json.dumps(view, indent=2))
        else:
            _plan(console, view)
        return 0
    return follow(args, client, console, [view["id"]])


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    client = client_from(args)
    if args.id is None:
        query = f"?gateway={args.gateway}" if args.gateway else ""
        if args.wait or args.watch:
            query += ("&" if query else "?") + "active=true"
        status, body = call(client, "GET", query)
        if status >= 400:
            return refused(console, status, body)
        if args.wait or args.watch:
            ids = [view["id"] for view in body["rollouts"]]
            if not ids:
                scope = f" on gateway {args.gateway}" if args.gateway else ""
                print(
                    f"no active rollout{scope} to wait for: give a rollout id "
                    "(`weighbridge rollout start` prints it) to wait for one that ended",
                    file=sys.stderr,
                )
                return EXIT_REFUSED
            return follow(args, client, console, ids, many=True)
        if args.json:
            print(json.dumps(body, indent=2))
            return 0
        table = Table(title="rollouts")
        for column in ("id", "strategy", "phase", "step", "weights", "started", "ended"):
            table.add_column(column)
        for view in body["rollouts"]:
            table.add_row(
                view["id"],
                view["strategy"],
                words(view["phase"]),
                f"{view['step']}/{view['steps']}",
                weights_text(view["weights"]),
                clock(view["created_at"]),
                clock(view["ended_at"]),
            )
        console.print(table)
        return 0
    if args.wait or args.watch:
        return follow(args, client, console, [args.id])
    status, view = call(client, "GET", f"/{args.id}")
    if status >= 400:
        return refused(console, status, view)
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        console.print(render(view))
        _plan(console, view)
    return 0


def cmd_action(args: argparse.Namespace, console: Console) -> int:
    client = client_from(args)
    status, view = call(client, "POST", f"/{args.id}/{args.action}", dry_run=args.dry_run)
    if status >= 400:
        return refused(console, status, view)
    if args.json:
        print(json.dumps(view, indent=2))
    elif args.dry_run:
        console.print(
            f"dry run, nothing sent: rollout {view['id']} is {words(view['phase'])} at step "
            f"{view['step']}/{view['steps']}; {args.action} would do: {view['effect']}",
            markup=False,
            highlight=False,
        )
    else:
        console.print(f"{args.action}: rollout {view['id']} is {words(view['phase'])}")
    return 0


# ---- the parser --------------------------------------------------------------------------


def add_rollout_commands(sub: Any) -> None:
    """`rollout …` on the CLI's subparsers (`argparse._SubParsersAction`)."""
    rollout = sub.add_parser("rollout", help="automated canary, blue/green and A/B rollouts")
    actions = rollout.add_subparsers(dest="rollout_command", required=True)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text.replace("%%", "%")
        )
        add_client_options(p)
        p.add_argument("--json", action="store_true", help="print the rollout as JSON")
        return p

    def following(p: argparse.ArgumentParser) -> None:
        p.add_argument("--watch", action="store_true", help="live progress until it ends")
        p.add_argument(
            "--wait",
            action="store_true",
            help="for scripts: wait for the end, progress on stderr; exit 0 promoted, "
            "1 rolled back or aborted, 2 failed or refused, 3 timeout, 130 interrupted",
        )
        p.add_argument(
            "--timeout", type=float, default=0, help="seconds to wait at most (0: no limit)"
        )

    start = client("start", "start a rollout (checked by default: success rate ≥ 99%%)")
    start.add_argument("gateway", nargs="?", help="the gateway whose traffic moves")
    start.add_argument("--from", dest="from_route", help="the route traffic moves away from")
    start.add_argument("--to", dest="to_route", help="the route traffic moves to")
    start.add_argument("--file", help="a whole rollout spec (YAML or JSON) instead of flags")
    start.add_argument(
        "--strategy",
        choices=("canary", "bluegreen", "ab"),
        default="canary",
        help="(default: %(default)s)",
    )

    def option(name: str, help_text: str, default: Any = None, kind: type = str) -> None:
        shown = f" (default: {default})" if default not in (None, "") else ""
        start.add_argument(name, type=kind, default=default, help=help_text + shown)

    option("--steps", "canary: the to-route's weights in %%", "1,5,10,25,50,100")
    option("--step-weight", "linear canary: this much more each step, in %%")
    option("--max-weight", "linear canary: up to this, in %% (then 100%%)")
    option("--preview", "bluegreen: the preview weight in %%", "5")
    option("--strength", "ab: share of matching requests, in %%", "100")
    option("--requests", "ab: requests the to-route answers", kind=int)
    option("--duration", "ab: seconds the A/B step lasts", kind=float)
    option("--then", "ab: weight steps afterwards, e.g. 10,50,100")
    option("--interval", "seconds per evaluation (a step lasts at least one)", 60.0, float)
    option("--success-rate", "minimum share of non-5xx responses (HAProxy's own 5xx too), %%", "99")
    option("--max-response-ms", "maximum average response time, ms (default: none)", kind=float)
    option("--min-requests", "responses a window needs, fewer: inconclusive", 100, int)
    option("--failure-threshold", "failed checks that roll back", 2, int)
    option("--max-inconclusive", "inconclusive in a row before pausing, 0: hold", 20, int)
    option("--rollback-steps", "roll back at once (1) or in this many steps", 1, int)
    option("--rollback-interval", "seconds between rollback steps", 1.0, float)
    start.add_argument(
        "--no-checks",
        action="store_true",
        help="no checks at all: every step moves on after --interval, nothing rolls back "
        "by itself (refused unless asked for by this name)",
    )
    start.add_argument(
        "--pre-step-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="must answer 2xx before each step (within the controller's --allow-outbound)",
    )
    start.add_argument(
        "--rollback-webhook",
        action="append",
        default=[],
        metavar="URL",
        help="told about a rollback (within the controller's --allow-outbound)",
    )
    option("--webhook-timeout", "seconds per webhook attempt", 5.0, float)
    option("--webhook-retries", "further attempts after a failed one", 2, int)
    start.add_argument("--dry-run", action="store_true", help="show the plan, start nothing")
    following(start)
    start.set_defaults(func=cmd_start)

    status = client(
        "status",
        "one rollout (ID) or all of them; --wait/--watch without ID: every active one",
    )
    status.add_argument("id", nargs="?")
    status.add_argument("--gateway", help="only this gateway's rollouts")
    following(status)
    status.set_defaults(func=cmd_status)

    for action, text in (
        ("pause", "hold at the current step"),
        ("resume", "go on from the current step"),
        ("promote", "skip to the end (the last step's weights), without checks"),
        ("abort", "roll back to the weights before the rollout"),
    ):
        p = client(action, text)
        p.add_argument("id")
        p.add_argument(
            "--dry-run", action="store_true", help="say what it would do (or why not), do nothing"
        )
        p.set_defaults(func=cmd_action, action=action)
