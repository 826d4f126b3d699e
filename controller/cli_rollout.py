"""`weighbridge rollout start|status|pause|resume|promote|abort`: a client of /api/v1/rollouts.

`--watch` shows live progress (step, weights, check values, time to the next check);
`--wait` is for scripts: progress lines on stderr, the result on stdout (`--json`: the whole
rollout), and the exit code says how it ended: 0 promoted, 1 rolled back or aborted, 2 failed
or refused, 3 still running when `--timeout` ran out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

EXIT_CODES = {"promoted": 0, "rolled_back": 1, "aborted": 1, "failed": 2}
EXIT_REFUSED = 2
EXIT_TIMEOUT = 3
POLL_SECONDS = 0.5
UNREACHABLE_GRACE = 60.0
"""Seconds `--wait` keeps asking a controller that does not answer (it may be restarting)."""
TERMINAL = ("promoted", "rolled_back", "aborted", "failed")


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
    checks: dict[str, Any] = {
        "min_requests": args.min_requests,
        "failure_threshold": args.failure_threshold,
        "max_inconclusive": args.max_inconclusive or None,
    }
    if args.success_rate is not None:
        checks["success_rate"] = _percents(args.success_rate)[0]
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


# ---- rendering ---------------------------------------------------------------------------


def _clock(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S") if at else "-"


def _value(check: dict[str, Any]) -> str:
    value = check.get("value")
    if value is None:
        return "no data"
    if check.get("unit") == "ratio":
        return f"{value * 100:.2f}%"
    if check.get("unit") == "ms":
        return f"{value:.0f} ms"
    return f"{value:.4g}"


def _threshold(check: dict[str, Any]) -> str:
    threshold = check.get("threshold")
    if threshold is None:
        return "-"
    sign = "≥" if check.get("bound") == "min" else "≤"
    shown = _value({**check, "value": threshold})
    return f"{sign} {shown}"


def render(view: dict[str, Any], now: float | None = None) -> Group:
    """The live progress display of one rollout."""
    now = time.time() if now is None else now
    colour = {"promoted": "green", "rolled_back": "red", "aborted": "red", "failed": "red"}.get(
        view["phase"], "yellow" if view["phase"] in ("paused", "rolling_back") else "cyan"
    )
    header = Text.assemble(
        (f"rollout {view['id']}", "bold"),
        f"  {view['strategy']} on {view['gateway']}: {view['from_route']} → {view['to_route']}  ",
        (view["phase"].replace("_", " "), f"bold {colour}"),
        f"  step {view['step']}/{view['steps']}",
    )
    lines: list[Any] = [header]
    weights = ", ".join(f"{route} {weight}" for route, weight in view["weights"].items())
    status = f"weights {weights}"
    if view.get("condition_strength"):
        status += f" (condition strength {view['condition_strength']})"
    status += f"; failed checks {view['failed_checks']}/{view['failure_threshold']}"
    if view.get("next_check_at"):
        status += f"; next check in {max(0.0, view['next_check_at'] - now):.1f} s"
    lines.append(Text(status))
    for label, key in (("waiting", "blocked"), ("why", "reason"), ("error", "last_error")):
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
                result["name"], _value(result), _threshold(result), Text(result["result"], style)
            )
        lines.append(table)
    for event in view["events"][-6:]:
        lines.append(Text(event_line(event), style="dim"))
    return Group(*lines)


def event_line(event: dict[str, Any]) -> str:
    return f"{_clock(event['at'])} step {event['step']} {event['kind']}: {event['message']}"


# ---- commands ----------------------------------------------------------------------------


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    from controller.cli import call_api

    return call_api(args.api, method, f"/rollouts{path}", body, args.token)


def _refused(console: Console, status: int, body: Any) -> int:
    from controller.cli import _print_error

    _print_error(console, status, body)
    return EXIT_REFUSED


def cmd_start(args: argparse.Namespace, console: Console) -> int:
    query = "?dry_run=true" if args.dry_run else ""
    status, body = _call(args, "POST", query, spec_from_args(args))
    if status >= 400:
        return _refused(console, status, body)
    if args.dry_run:
        return _show(args, console, body)
    if not (args.wait or args.watch):
        if args.json:
            print(json.dumps(body, indent=2))
        else:
            console.print(f"rollout [bold]{body['id']}[/] started: {len(body['plan'])} steps")
            for entry in body["plan"]:
                weights = ", ".join(f"{r} {w}" for r, w in entry["weights"].items())
                console.print(f"  step {entry['step']}: {weights}", markup=False)
        return 0
    return follow(args, console, body["id"])


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    if args.id is None:
        query = f"?gateway={args.gateway}" if args.gateway else ""
        status, body = _call(args, "GET", query)
        if status >= 400:
            return _refused(console, status, body)
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
                view["phase"],
                f"{view['step']}/{view['steps']}",
                ", ".join(f"{r} {w}" for r, w in view["weights"].items()),
                _clock(view["created_at"]),
                _clock(view["ended_at"]),
            )
        console.print(table)
        return 0
    if args.wait or args.watch:
        return follow(args, console, args.id)
    status, body = _call(args, "GET", f"/{args.id}")
    if status >= 400:
        return _refused(console, status, body)
    return _show(args, console, body)


def cmd_action(args: argparse.Namespace, console: Console) -> int:
    status, body = _call(args, "POST", f"/{args.id}/{args.action}")
    if status >= 400:
        return _refused(console, status, body)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        console.print(f"{args.action}: rollout {body['id']} is {body['phase']}")
    return 0


def _show(args: argparse.Namespace, console: Console, view: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        console.print(render(view))
        for entry in view["plan"]:
            weights = ", ".join(f"{r} {w}" for r, w in entry["weights"].items())
            console.print(f"  step {entry['step']}: {weights}", markup=False)
    return 0


def follow(args: argparse.Namespace, console: Console, rollout_id: str) -> int:
    """Until the rollout ends (or --timeout): live display, or progress lines for scripts."""
    from controller.cli import ApiClientError

    deadline = time.monotonic() + args.timeout if args.timeout else None
    live = args.watch and not args.wait and console.is_terminal
    shown = 0
    unreachable_since: float | None = None
    view: dict[str, Any] | None = None
    display = Live(console=console, refresh_per_second=4) if live else None
    if display is not None:
        display.start()
    try:
        while True:
            try:
                status, body = _call(args, "GET", f"/{rollout_id}")
                unreachable_since = None
            except ApiClientError as exc:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_GRACE:
                    raise
                print(f"waiting for the controller: {exc}", file=sys.stderr, flush=True)
                status, body = 0, None
            if status >= 400:
                return _refused(console, status, body)
            if body is not None:
                view = body
                if display is not None:
                    display.update(render(view))
                else:
                    for event in view["events"][shown:]:
                        print(event_line(event), file=sys.stderr, flush=True)
                    shown = len(view["events"])
                if view["phase"] in TERMINAL:
                    break
            if deadline is not None and time.monotonic() > deadline:
                print(f"rollout {rollout_id} still running", file=sys.stderr, flush=True)
                if args.json and view is not None:
                    print(json.dumps(view, indent=2))
                return EXIT_TIMEOUT
            time.sleep(POLL_SECONDS)  # the poll period of a CLI client
    finally:
        if display is not None:
            display.stop()
    assert view is not None
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        console.print(f"rollout {view['id']} {view['phase']}: {escape(view['reason'] or '')}")
    return EXIT_CODES[view["phase"]]


def add_rollout_commands(sub: Any) -> None:
    """`rollout …` on the CLI's subparsers (`argparse._SubParsersAction`)."""
    from controller.cli import DEFAULT_API, add_client_token_options

    rollout = sub.add_parser("rollout", help="automated canary, blue/green and A/B rollouts")
    actions = rollout.add_subparsers(dest="rollout_command", required=True)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        p.add_argument("--api", default=DEFAULT_API)
        add_client_token_options(p)
        p.add_argument("--json", action="store_true", help="print the rollout as JSON")
        return p

    def following(p: argparse.ArgumentParser) -> None:
        p.add_argument("--watch", action="store_true", help="live progress until it ends")
        p.add_argument(
            "--wait",
            action="store_true",
            help="for scripts: wait for the end, progress on stderr; "
            "exit 0 promoted, 1 rolled back or aborted, 2 failed, 3 timeout",
        )
        p.add_argument("--timeout", type=float, default=0, help="seconds to wait at most")

    start = client("start", "start a rollout")
    start.add_argument("gateway", nargs="?")
    start.add_argument("--from", dest="from_route", help="the route traffic moves away from")
    start.add_argument("--to", dest="to_route", help="the route traffic moves to")
    start.add_argument("--file", help="a whole rollout spec (YAML or JSON) instead of flags")
    start.add_argument("--strategy", choices=("canary", "bluegreen", "ab"), default="canary")
    start.add_argument("--steps", default="1,5,10,25,50,100", help="canary weights, in %%")
    start.add_argument("--step-weight", help="linear canary: this much more each step")
    start.add_argument("--max-weight", help="linear canary: up to this (then 100%%)")
    start.add_argument("--preview", default="5", help="bluegreen: the preview weight")
    start.add_argument("--strength", default="100", help="ab: share of matching requests")
    start.add_argument("--requests", type=int, help="ab: requests the to-route answers")
    start.add_argument("--duration", type=float, help="ab: seconds the A/B step lasts")
    start.add_argument("--then", help="ab: weight steps afterwards, e.g. 10,50,100")
    start.add_argument("--interval", type=float, default=60.0, help="seconds per evaluation")
    start.add_argument("--success-rate", help="minimum share of non-5xx responses, e.g. 99")
    start.add_argument("--max-response-ms", type=float, help="maximum average response time, ms")
    start.add_argument("--min-requests", type=int, default=100, help="per evaluated window")
    start.add_argument("--failure-threshold", type=int, default=2, help="failed checks: rollback")
    start.add_argument(
        "--max-inconclusive",
        type=int,
        default=20,
        help="inconclusive evaluations in a row before pausing (0: hold forever)",
    )
    start.add_argument("--rollback-steps", type=int, default=1)
    start.add_argument("--rollback-interval", type=float, default=1.0)
    start.add_argument("--pre-step-webhook", action="append", default=[], metavar="URL")
    start.add_argument("--rollback-webhook", action="append", default=[], metavar="URL")
    start.add_argument("--webhook-timeout", type=float, default=5.0)
    start.add_argument("--webhook-retries", type=int, default=2)
    start.add_argument("--dry-run", action="store_true", help="show the plan, start nothing")
    following(start)
    start.set_defaults(func=cmd_start)

    status = client("status", "one rollout (ID) or all of them")
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
        p.set_defaults(func=cmd_action, action=action)
