"""The fleet's pure parts: options, names, `?wait=` parsing, the local copy, `--bind-host`."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from controller.cli import build_parser
from controller.cli.run import fleet_settings, run_settings
from controller.desired import Record
from controller.errors import InvalidInput
from controller.fleet.api import DEFAULT_WAIT, wait_timeout
from controller.fleet.follow import LocalCopy
from controller.fleet.run import check_node_name
from controller.model import Gateway
from controller.plan import NOTHING_RUNS, plan_gateway
from controller.render import RenderSettings
from controller.store import Snapshot

SHOP = Gateway.model_validate(
    {"bind": "127.0.0.1:8080", "routes": {"a": {"weight": "100%", "instances": ["127.0.0.1:9"]}}}
)


def parse(*argv: str) -> object:
    return build_parser().parse_args(["run", *argv])


def test_the_file_store_stays_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHBRIDGE_STORE", raising=False)
    settings = run_settings(parse())  # type: ignore[arg-type]
    assert settings.fleet is None and settings.bind_host is None


def test_store_node_and_bind_host_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHBRIDGE_STORE", raising=False)
    args = parse(
        "--store", "etcd://127.0.0.1:2379,h2:2379", "--node", "n1", "--bind-host", "127.0.0.12"
    )
    settings = run_settings(args)  # type: ignore[arg-type]
    assert settings.fleet is not None
    assert settings.fleet.node == "n1"
    assert settings.fleet.etcd.endpoints == (("127.0.0.1", 2379), ("h2", 2379))
    assert settings.fleet.etcd.prefix == "/weighbridge/"
    assert settings.bind_host == "127.0.0.12"


def test_the_store_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_STORE", "etcd://10.0.0.1:2379")
    fleet = fleet_settings(parse("--node", "a"))  # type: ignore[arg-type]
    assert fleet is not None and fleet.etcd.endpoints == (("10.0.0.1", 2379),)
    assert fleet_settings(parse("--store", "file")) is None  # type: ignore[arg-type]


def test_the_demo_is_never_a_fleet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_STORE", "etcd://10.0.0.1:2379")
    args = build_parser().parse_args(["demo"])
    assert run_settings(args).fleet is None


@pytest.mark.parametrize("bad", ["etcd://h:1\n", "redis://h:1", "etcd://h:1/../x"])
def test_bad_stores_stop_the_start(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHBRIDGE_STORE", raising=False)
    with pytest.raises(SystemExit):
        fleet_settings(parse("--store", bad, "--node", "a"))  # type: ignore[arg-type]


def test_bind_host_must_be_an_ip_address(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--bind-host", "example.com")
    assert "not an IP address" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["n1", "edge-1.fra", "a"])
def test_node_names(name: str) -> None:
    assert check_node_name(name) == name


@pytest.mark.parametrize("name", ["", "N1", "n1\n", "-a", "a b", "a/b", "x" * 64])
def test_bad_node_names(name: str) -> None:
    with pytest.raises(ValueError):
        check_node_name(name)


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", None), ("wait=applied", DEFAULT_WAIT), ("wait=applied&timeout=2.5", 2.5)],
)
def test_wait_applied(query: str, expected: float | None) -> None:
    assert wait_timeout(make_mocked_request("PATCH", f"/x?{query}")) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("wait=done", "wait"),
        ("timeout=3", "timeout"),
        ("wait=applied&timeout=0", "timeout"),
        ("wait=applied&timeout=301", "timeout"),
        ("wait=applied&timeout=1e3", "timeout"),
        ("wait=applied&timeout=5%0A", "timeout"),
    ],
)
def test_bad_waits_name_their_field(query: str, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        wait_timeout(make_mocked_request("PATCH", f"/x?{query}"))
    assert refused.value.problems[0]["field"] == field


def test_the_local_copy_round_trips(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "fleet-applied.json")
    assert copy.load() is None
    copy.save(Snapshot({"shop": Record(SHOP, 7)}, 9))
    assert copy.load() == Snapshot({"shop": Record(SHOP, 7)}, 9)
    assert (tmp_path / "fleet-applied.json").stat().st_mode & 0o777 == 0o600


def test_bind_host_binds_every_gateway_there_on_its_own_port() -> None:
    settings = RenderSettings(admin_socket="/x/admin.sock", bind_host="127.0.0.12")
    plan = plan_gateway("shop", SHOP, NOTHING_RUNS, "/x/maps", settings)
    assert plan.section is not None
    assert str(plan.section.layout.bind) == "127.0.0.12:8080"
    default = plan_gateway("shop", SHOP, NOTHING_RUNS, "/x/maps", RenderSettings("/x/a.sock"))
    assert default.section is not None and str(default.section.layout.bind) == "127.0.0.1:8080"
