"""Command line: `run` and `demo` start the controller; the rest are REST API clients.

`client` (HTTP and the options that reach the API), `output` (what is printed), and the
commands: `gateways` (weights, instances, status, plan, apply), `rollout` and `follow`,
`vamp` (import), `run` (run, demo). Client commands import no engine or HAProxy code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from rich.console import Console
from rich.markup import escape

from controller.cli.gateways import add_gateway_commands
from controller.cli.nodes import add_node_commands
from controller.cli.rollout import add_rollout_commands
from controller.cli.run import add_controller_commands
from controller.cli.vamp import add_import_commands
from controller.errors import WeighbridgeError

__all__ = ["build_parser", "main"]


class Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or action.default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser with `Formatter`; `populate` adds its options when it is first used
    (parsed, or its help shown): see `controller.cli.run`."""

    def __init__(
        self,
        *args: Any,
        populate: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populated(self) -> Parser:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)
        return self

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self.populated()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self.populated()
        return super().format_help()

    def format_usage(self) -> str:
        self.populated()
        return super().format_usage()


def package_version() -> str:
    try:
        return version("weighbridge")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="weighbridge", description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug details (run, demo)"
    )
    parser.add_argument("--version", action="version", version=f"weighbridge {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_controller_commands(sub)
    add_gateway_commands(sub)
    add_node_commands(sub)
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
        code: int = args.func(args, console)
    except WeighbridgeError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `weighbridge … | head`: the reader went away, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
