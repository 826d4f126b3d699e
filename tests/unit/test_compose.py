"""docker-compose.yml, checked without Docker: valid against the Compose Specification's JSON
schema, and every service, port, volume and path it names exists — in the repository, in the
stack, or in the controller's command line — and agrees with the other files that name it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from controller.backends import BackendSpec
from controller.cli import build_parser
from controller.config_file import load_config
from controller.model import Config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests/data/compose-spec/compose-spec.json"
# Where images we do not build listen by default (their documented ports).
IMAGE_PORTS = {"prom/prometheus": {9090}, "grafana/grafana": {3000}, "quay.io/coreos/etcd": {2379}}


@dataclass(frozen=True)
class Mount:
    source: str
    target: PurePosixPath
    bind: bool

    @property
    def path(self) -> Path:
        return (ROOT / self.source).resolve()


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load("docker-compose.yml")
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        result.append(Mount(source, PurePosixPath(target), source.startswith((".", "/"))))
    return result


def resolve(service: dict[str, Any], container_path: str) -> tuple[Mount, PurePosixPath]:
    """The mount a path inside the container lives on, and the path relative to it."""
    path = PurePosixPath(container_path)
    for mount in sorted(mounts(service), key=lambda m: len(m.target.parts), reverse=True):
        if path == mount.target or mount.target in path.parents:
            return mount, path.relative_to(mount.target)
    raise AssertionError(f"{container_path} is on no volume of the service")


def repo_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file behind a container path (a bind mount of it or of its folder)."""
    mount, rest = resolve(service, container_path)
    assert mount.bind, f"{container_path} is on volume {mount.source}, not from the repository"
    path = mount.path / rest
    assert path.is_file(), f"{container_path} → {path} does not exist"
    return path


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def listeners(compose: dict[str, Any]) -> dict[str, set[int]]:
    """Ports each service's network namespace listens on, from the files that configure them."""
    stack = services(compose)
    ports: dict[str, set[int]] = {name: set() for name in stack}
    for name, haproxy in controllers(compose).items():
        controller = flags(stack[name]["command"])
        config = load_config(repo_file(stack[name], controller["config"]))
        ports[name].add(port_of(controller["api"]))
        # HAProxy binds the gateways and the exporter from the configuration the controller
        # writes
        ports[haproxy] |= {gateway.bind.port for gateway in config.gateways.values()}
        ports[haproxy].add(port_of(controller["stats"]))
    for name, service in stack.items():
        for image, defaults in IMAGE_PORTS.items():
            if service.get("image", "").startswith(image + ":"):
                ports[name] |= defaults
        if "controller.backends" in service.get("command", []):
            ports[name] |= {BackendSpec.parse(spec).port for spec in specs(service)}
    for name, service in stack.items():  # a shared namespace listens for all who share it
        owner = service.get("network_mode", "").removeprefix("service:")
        if owner in ports:
            ports[owner] |= ports[name]
            ports[name] = ports[owner]
    return ports


def controllers(compose: dict[str, Any]) -> dict[str, str]:
    """Each `weighbridge run` service and the HAProxy service it drives (the one that mounts
    its state volume: the single-node stack's pair, and a fleet node's)."""
    stack = services(compose)
    pairs = {}
    for name, service in stack.items():
        if service.get("command", [])[:2] != ["weighbridge", "run"]:
            continue
        state = resolve(service, flags(service["command"])["state-dir"])[0].source
        [haproxy] = [
            other
            for other, candidate in stack.items()
            if candidate.get("image", "").startswith("haproxy:")
            and state in {m.source for m in mounts(candidate)}
        ]
        pairs[name] = haproxy
    return pairs


def specs(service: dict[str, Any]) -> Iterator[str]:
    return (arg.removeprefix("--spec=") for arg in service["command"] if arg.startswith("--spec="))


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(compose), key=lambda e: e.path
    )
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would(compose: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt key is caught."""
    schema = json.loads(SCHEMA.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["haproxy"]["port"] = ["8080:8080"]
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


def test_builds_and_dockerfile_exist(compose: dict[str, Any]) -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    built = [s for s in services(compose).values() if "build" in s]
    assert built
    for service in built:
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build["context"])
        dockerfile = context / (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert dockerfile.is_file()
        text = dockerfile.read_text()
        assert re.search(r"^FROM \S+", text, re.M)
        for line in re.findall(r"^COPY (.+) \S+$", text, re.M):
            for source in line.split():
                assert (context / source).exists(), f"Dockerfile copies missing {source}"
                assert not any(fnmatch(source, pattern) for pattern in ignored), (
                    f"{source} is excluded by .dockerignore"
                )


def test_every_service_reference_exists(compose: dict[str, Any]) -> None:
    stack = services(compose)
    for name, service in stack.items():
        depends = service.get("depends_on", [])
        for other in depends if isinstance(depends, list) else depends.keys():
            assert other in stack, f"{name} depends on unknown service {other}"
            assert other != name
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in stack
            assert "ports" not in service, f"{name} shares a namespace: publish on its owner"
        assert "image" in service or "build" in service, name


def test_every_volume_exists(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    used = set()
    for name, service in services(compose).items():
        for mount in mounts(service):
            if mount.bind:
                assert mount.path.exists(), f"{name}: {mount.source} is not in the repository"
                assert mount.path.is_relative_to(ROOT), f"{name}: {mount.source} is outside"
                if mount.target.suffix:  # a file mounted onto a file
                    assert mount.path.is_file(), f"{name}: {mount.source} is not a file"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} is undeclared"
                used.add(mount.source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_every_published_port_is_listened_on(compose: dict[str, Any]) -> None:
    ports = listeners(compose)
    published: set[int] = set()
    for name, service in services(compose).items():
        for entry in service.get("ports", []):
            host, container = (int(p) for p in str(entry).split(":")[-2:])
            assert host not in published, f"host port {host} is published twice"
            published.add(host)
            assert container in ports[name], f"{name} publishes {container}: nothing listens"
    api = port_of(flags(services(compose)["controller"]["command"])["api"])
    assert api in published, "the API is not reachable from the host"


def test_the_controller_command_is_one_the_cli_accepts(compose: dict[str, Any]) -> None:
    controller = services(compose)["controller"]
    command = controller["command"]
    assert command[0] == "weighbridge"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run"
    repo_file(controller, args.config)
    for attached in args.attach:
        repo_file(controller, attached)
    resolve(controller, args.state_dir)


def test_haproxy_and_the_controller_share_files_and_sockets(compose: dict[str, Any]) -> None:
    stack = services(compose)
    controller, haproxy = stack["controller"], stack["haproxy"]
    args = build_parser().parse_args(controller["command"][1:])
    command = haproxy["command"]
    files = [command[i + 1] for i, arg in enumerate(command) if arg == "-f"]
    master = next(command[i + 1] for i, arg in enumerate(command) if arg == "-S").split(",")[0]
    # HAProxy loads the user's file, then the one the controller writes into its state dir
    assert files[:-1] == args.attach
    assert files[-1] == f"{args.state_dir}/weighbridge.cfg"
    for attached in args.attach:
        assert repo_file(haproxy, attached) == repo_file(controller, attached)
    # maps are named by absolute path: the state dir is the same volume at the same path
    assert resolve(haproxy, files[-1])[0] == resolve(controller, args.state_dir)[0]
    assert master == args.master_socket
    base = repo_file(haproxy, args.attach[0]).read_text()
    assert f"stats socket {args.admin_socket} " in base
    for socket in (args.master_socket, args.admin_socket):
        assert resolve(haproxy, socket)[0] == resolve(controller, socket)[0]
        assert not resolve(controller, socket)[0].bind


def demo_instances(
    compose: dict[str, Any], controller: str, haproxy: str
) -> tuple[set[tuple[str, int]], set[tuple[str, int]], Config]:
    """(route, port) the demo services in `haproxy`'s namespace serve, those `controller`'s
    config file names, and that config."""
    stack = services(compose)
    args = build_parser().parse_args(stack[controller]["command"][1:])
    config = load_config(repo_file(stack[controller], args.config))
    served = {
        (spec.route, spec.port)
        for service in stack.values()
        if service.get("network_mode") == f"service:{haproxy}"
        and "controller.backends" in service["command"]
        for spec in map(BackendSpec.parse, specs(service))
    }
    wanted = {
        (route_name, instance.port)
        for gateway in config.gateways.values()
        for route_name, route in gateway.routes.items()
        for instance in route.instances
    }
    return served, wanted, config


def test_demo_services_serve_the_configured_instances(compose: dict[str, Any]) -> None:
    stack = services(compose)
    served, wanted, config = demo_instances(compose, "controller", "haproxy")
    assert served == wanted
    assert all(
        instance.ip == "127.0.0.1"
        for gateway in config.gateways.values()
        for route in gateway.routes.values()
        for instance in route.instances
    ), "instances must be on HAProxy's loopback: the demo services share its namespace"
    traffic = stack["traffic"]
    repo_file(traffic, traffic["command"][1])
    url = flags(traffic["command"])["url"]
    assert port_of(url.rstrip("/").removeprefix("http://")) in listeners(compose)["haproxy"]


def scrape_jobs(prometheus: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Prometheus service's scrape jobs by name (its rule files exist)."""
    config = yaml.safe_load(
        repo_file(prometheus, flags(prometheus["command"])["config.file"]).read_text()
    )
    for rule_file in config["rule_files"]:
        repo_file(prometheus, rule_file)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"weighbridge", "haproxy"}
    return jobs


def test_prometheus_scrapes_the_stack(compose: dict[str, Any]) -> None:
    stack = services(compose)
    jobs = scrape_jobs(stack["prometheus"])
    ports = listeners(compose)
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            service, port = target.split(":")
            assert service in stack, target
            assert int(port) in ports[service], f"nothing listens on {target}"
    assert jobs["haproxy"]["params"]["scope"] == ["frontend", "backend"]


def test_grafana_is_provisioned_from_the_repository(compose: dict[str, Any]) -> None:
    stack = services(compose)
    grafana = stack["grafana"]
    sources = load("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    for source in sources:
        service, port = source["url"].removeprefix("http://").split(":")
        assert int(port) in listeners(compose)[service]
    for provider in load("grafana/provisioning/dashboards/weighbridge.yml")["providers"]:
        mount, rest = resolve(grafana, provider["options"]["path"])
        folder = mount.path / rest
        assert sorted(p.name for p in folder.glob("*.json")) == ["canary.json", "overview.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    repo_file(grafana, home)
    for mount in mounts(grafana):
        if mount.target.parts[:4] == ("/", "etc", "grafana", "provisioning"):
            assert mount.path.is_dir()
