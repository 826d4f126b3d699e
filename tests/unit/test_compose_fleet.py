"""docker-compose.yml's fleet profile, checked without Docker (none on the CI machine): etcd,
two nodes each a controller following etcd (`--store etcd://…`, its own `--node` name, state
and sockets) beside its own HAProxy, demo services and traffic, and a Prometheus and Grafana
of their own. tests/unit/test_compose.py's checks (schema, files, volumes, published ports)
run over these services too; this file checks what only a fleet has."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller.cli import build_parser
from controller.config_file import load_config
from controller.fleet.etcd import parse_store_url
from controller.fleet.run import check_node_name
from tests.unit.test_compose import (
    controllers,
    demo_instances,
    listeners,
    load,
    mounts,
    repo_file,
    resolve,
    scrape_jobs,
    services,
)

FLEET = "fleet"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load("docker-compose.yml")
    return data


def fleet(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(compose).items() if FLEET in s.get("profiles", [])}


def nodes(compose: dict[str, Any]) -> dict[str, str]:
    """The fleet's controllers and the HAProxy each drives."""
    return {c: h for c, h in controllers(compose).items() if c in fleet(compose)}


def test_the_profile_holds_etcd_two_nodes_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    stack = services(compose)
    members = fleet(compose)
    assert len(nodes(compose)) >= 2
    images = {s.get("image", "").split(":")[0] for s in members.values()}
    assert {"quay.io/coreos/etcd", "haproxy", "prom/prometheus", "grafana/grafana"} <= images
    # the single-node demo keeps its `docker compose up`: it is in no profile
    for name in ("controller", "haproxy", "prometheus", "grafana"):
        assert "profiles" not in stack[name], name
    # a profile's services depend only on each other (anything else would start with them)
    for name, service in members.items():
        depends = service.get("depends_on", [])
        for other in depends:  # a list, or a mapping of conditions
            assert other in members, f"{name} depends on {other}, outside the fleet profile"
        owner = service.get("network_mode", "").removeprefix("service:")
        assert not owner or owner in members, name


def test_every_node_follows_etcd_under_its_own_name(compose: dict[str, Any]) -> None:
    stack = services(compose)
    etcd = next(n for n, s in fleet(compose).items() if "etcd" in s.get("image", ""))
    names, states, sockets = set(), set(), set()
    for name in nodes(compose):
        service = stack[name]
        args = build_parser().parse_args(service["command"][1:])
        assert args.command == "run"
        assert args.store and args.store.startswith("etcd://"), f"{name}: --store etcd://…"
        settings = parse_store_url(args.store)
        for host, port in settings.endpoints:
            assert host == etcd and port in listeners(compose)[etcd], (host, port)
        assert args.node and check_node_name(args.node) == args.node
        names.add(args.node)
        # Prometheus scrapes the node by its service name: the API must answer to that Host
        assert name in args.api_hostname, f"{name}: --api-hostname={name}"
        assert stack[name]["depends_on"][etcd]["condition"] == "service_healthy"
        states.add(resolve(service, args.state_dir)[0].source)
        sockets.add(resolve(service, args.master_socket)[0].source)
        load_config(repo_file(service, args.config))  # every node may seed an empty etcd
    count = len(nodes(compose))
    assert len(names) == count, f"node names repeat: {sorted(names)}"
    assert len(states) == count and len(sockets) == count, "nodes share a state or sockets"


def test_each_node_drives_its_own_haproxy(compose: dict[str, Any]) -> None:
    stack = services(compose)
    for name, haproxy in nodes(compose).items():
        args = build_parser().parse_args(stack[name]["command"][1:])
        command = stack[haproxy]["command"]
        files = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
        master = next(command[i + 1] for i, arg in enumerate(command) if arg == "-S")
        assert files[:-1] == args.attach
        assert files[-1] == f"{args.state_dir}/weighbridge.cfg"
        assert master.split(",")[0] == args.master_socket
        for socket in (args.master_socket, args.admin_socket):
            assert resolve(stack[haproxy], socket)[0] == resolve(stack[name], socket)[0]
        assert stack[haproxy]["depends_on"][name]["condition"] == "service_healthy"


def test_each_node_serves_the_configured_instances(compose: dict[str, Any]) -> None:
    stack = services(compose)
    for name, haproxy in nodes(compose).items():
        served, wanted, _ = demo_instances(compose, name, haproxy)
        assert served == wanted, haproxy
        traffic = [
            s
            for s in stack.values()
            if s.get("network_mode") == f"service:{haproxy}" and "--url" in str(s["command"])
        ]
        assert traffic, f"no demo traffic through {haproxy}"


def test_prometheus_scrapes_every_node_under_its_name(compose: dict[str, Any]) -> None:
    stack = services(compose)
    [prometheus] = [s for s in fleet(compose).values() if "prometheus" in s.get("image", "")]
    jobs = scrape_jobs(prometheus)
    ports = listeners(compose)
    instances: dict[str, dict[str, str]] = {}
    for job_name, job in jobs.items():
        for group in job["static_configs"]:
            [target] = group["targets"]
            service, port = target.split(":")
            assert service in fleet(compose), target
            assert int(port) in ports[service], f"nothing listens on {target}"
            instances.setdefault(job_name, {})[service] = group["labels"]["instance"]
    # a node's controller and HAProxy share its name as `instance` (the dashboards' node
    # variable, and the join `on (instance, proxy)`)
    expected_controllers, expected_haproxy = {}, {}
    for name, haproxy in nodes(compose).items():
        node = build_parser().parse_args(stack[name]["command"][1:]).node
        expected_controllers[name] = node
        expected_haproxy[haproxy] = node
    assert instances["weighbridge"] == expected_controllers
    assert instances["haproxy"] == expected_haproxy


def test_grafana_reads_the_fleet_prometheus(compose: dict[str, Any]) -> None:
    [(name, grafana)] = [
        (n, s) for n, s in fleet(compose).items() if "grafana" in s.get("image", "")
    ]
    [prometheus] = [n for n, s in fleet(compose).items() if "prometheus" in s.get("image", "")]
    provisioning = {m.target.name: m for m in mounts(grafana) if m.bind}
    sources = yaml.safe_load((provisioning["datasources"].path / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    service, port = source["url"].removeprefix("http://").split(":")
    assert service == prometheus and int(port) in listeners(compose)[service]
    repo_file(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert prometheus in grafana["depends_on"], name
