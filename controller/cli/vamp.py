"""`weighbridge import vamp FILE`: Vamp gateway definitions as our gateways.

Prints weighbridge.yaml on stdout (or, with `--apply`, PUTs each gateway through the API);
what does not carry over goes to stderr. Exit codes: 0 everything carried over; 1 nothing
imported (unreadable file, not a Vamp gateway, invalid result) or the controller refused a
gateway; 3 something did not carry over: the YAML is printed all the same, and `--apply`
applies nothing unless `--partial` is given (then 3 still says it was partial).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from controller.cli.client import add_client_options, client_from
from controller.cli.gateways import put_gateways
from controller.errors import InvalidInput

EXIT_PARTIAL = 3
MAX_FILE_BYTES = 1 << 20


def read_documents(path: Path) -> list[Any]:
    """The YAML/JSON documents of `path`; errors say where, never what the file holds."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"larger than {MAX_FILE_BYTES} bytes")
        return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InvalidInput(f"cannot read it: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput("not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InvalidInput(f"not YAML or JSON{where}") from exc


def instances_option(items: list[str]) -> dict[str, list[str]]:
    """`--instances ROUTE=IP:PORT[,IP:PORT…]`, repeated: addresses per route name."""
    found: dict[str, list[str]] = {}
    for item in items:
        route, sep, addresses = item.rpartition("=")
        if not sep or not route or not addresses.strip():
            raise InvalidInput(f"--instances {item!r}: expected ROUTE=IP:PORT[,IP:PORT…]")
        found.setdefault(route, []).extend(a.strip() for a in addresses.split(",") if a.strip())
    return found


def cmd_import_vamp(args: argparse.Namespace, console: Console) -> int:
    from controller.vamp import import_vamp

    path = Path(args.file)
    errors = Console(stderr=True, soft_wrap=True)
    try:
        result = import_vamp(
            read_documents(path),
            instances=instances_option(args.instances),
            bind_host=args.bind_host,
            default_name=path.stem,
        )
    except InvalidInput as exc:
        errors.print(f"[red]{escape(str(path))}: {escape(exc.message)}[/]")
        for problem in exc.problems:
            errors.print(f"  {problem['field']}: {problem['message']}", markup=False)
        return 1
    for note in result.notes:
        errors.print(f"{'not carried over' if note.lost else 'note'}: {note}", markup=False)
    if not args.apply:
        dump = result.config.model_dump(mode="json", exclude_defaults=True)
        sys.stdout.write(yaml.safe_dump(dump, sort_keys=False, allow_unicode=True))
    elif result.complete or args.partial:
        if put_gateways(client_from(args), console, result.config, args.dry_run):
            return 1
    else:
        errors.print("nothing applied: something did not carry over (see above); --partial")
    return 0 if result.complete else EXIT_PARTIAL


def add_import_commands(sub: Any) -> None:
    importer = sub.add_parser("import", help="gateways from another tool's definitions")
    tools = importer.add_subparsers(dest="tool", required=True)
    vamp = tools.add_parser(
        "vamp",
        help="a Vamp gateway, gateway list or blueprint (YAML or JSON)",
        description=__doc__,
    )
    vamp.add_argument("file", help="the Vamp definition")
    vamp.add_argument(
        "--instances",
        action="append",
        default=[],
        metavar="ROUTE=IP:PORT[,IP:PORT…]",
        help="a Vamp route's instances (its Vamp name or ours); repeat per route",
    )
    vamp.add_argument(
        "--bind-host",
        default="127.0.0.1",
        help="address the gateways listen on (default: %(default)s; Vamp used 0.0.0.0)",
    )
    vamp.add_argument("--apply", action="store_true", help="PUT them to the controller")
    vamp.add_argument(
        "--partial", action="store_true", help="with --apply: apply though not all carried over"
    )
    vamp.add_argument("--dry-run", action="store_true", help="with --apply: only show the plan")
    add_client_options(vamp)
    vamp.set_defaults(func=cmd_import_vamp)
