"""The CLI's parser: help and shown defaults for every option, `--version`, `--dry-run` on
every write command, and the controller's options added only when `run`/`demo` are used."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from controller.cli import Parser, build_parser

WRITE_COMMANDS = (
    ("weights",),
    ("instances",),
    ("apply",),
    ("rollout", "start"),
    ("rollout", "pause"),
    ("rollout", "resume"),
    ("rollout", "promote"),
    ("rollout", "abort"),
    ("import", "vamp"),
)


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's parser, its options populated as when it is used."""
    if isinstance(parser, Parser):
        parser.populated()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            yield action


ALL = dict(commands(build_parser()))


def test_every_option_of_every_command_has_help() -> None:
    missing = [
        f"{' '.join(path) or 'weighbridge'} {action.option_strings[0]}"
        for path, parser in ALL.items()
        for action in options(parser)
        if not (action.help or "").strip()
    ]
    assert missing == []


def test_every_default_is_shown() -> None:
    """A default that is not None or off shows in the help text, as it is (not a tuple)."""
    for path, parser in ALL.items():
        text = " ".join(parser.format_help().split())
        for action in options(parser):
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert "default" in (action.help or "") or f"(default: {action.default})" in text, (
                path,
                action.option_strings,
            )


@pytest.mark.parametrize(
    ("path", "flag", "shown"),
    [
        (("status",), "--api", "(default: 127.0.0.1:9900)"),
        (("rollout", "status"), "--api", "(default: 127.0.0.1:9900)"),
        (("run",), "--api", "(default: 127.0.0.1:9900)"),
        (("run",), "--state-dir", "(default: .weighbridge)"),
        (("demo",), "--state-dir", "(default: .weighbridge-demo)"),
        (("status",), "--token-file", "default: $WEIGHBRIDGE_API_TOKEN"),
        ((), "--verbose", "debug"),
    ],
)
def test_the_options_the_issue_named(path: tuple[str, ...], flag: str, shown: str) -> None:
    text = " ".join(ALL[path].format_help().split())
    assert flag in text and shown in text


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"weighbridge {version('weighbridge')}"


@pytest.mark.parametrize("path", WRITE_COMMANDS, ids=" ".join)
def test_every_write_command_takes_dry_run(path: tuple[str, ...]) -> None:
    assert "--dry-run" in ALL[path]._option_string_actions


def test_instances_takes_an_action_and_normalises_addresses() -> None:
    args = build_parser().parse_args(
        ["instances", "shop", "canary", "add", "[0:0::1]:9000", "127.0.0.1:9001", "--dry-run"]
    )
    assert (args.action, args.addresses, args.dry_run) == (
        "add",
        ["[::1]:9000", "127.0.0.1:9001"],
        True,
    )
    named = build_parser().parse_args(["instances", "shop", "canary", "add", "API.internal:80"])
    assert named.addresses == ["api.internal:80"]  # a name, as the controller writes it
    with pytest.raises(SystemExit):
        build_parser().parse_args(["instances", "shop", "canary", "add", "local_host:80"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["instances", "shop", "canary", "replace", "127.0.0.1:1"])


def test_run_options_are_added_when_run_is_used() -> None:
    parser = build_parser()
    run = dict(commands(parser))[("run",)]
    assert isinstance(run, Parser)
    args = build_parser().parse_args(["run", "--config", "x.yaml", "--config-wins"])
    assert (args.config, args.config_wins, args.api) == ("x.yaml", True, ("127.0.0.1", 9900))
    assert build_parser().parse_args(["run"]).config is None  # the default file is optional
