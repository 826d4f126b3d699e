"""The CLI as a client of the REST API, run for real (`python -m controller`, the same entry as
`weighbridge`) against a real controller and HAProxy: writes say what changes and how,
`instances add|remove|set` (concurrent writers lose nothing), `--dry-run` on every write,
`status` honest about instances, and client commands that load no engine or HAProxy code."""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli.client import ApiClient, Reply
from controller.cli.gateways import edit_instances, edited
from controller.runtime.parse import DRAIN_MASK, MAINTENANCE_MASK
from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.health import wait_health
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy
G = "/api/v1/gateways/shop"


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            *args[:1],
            "--api",
            f"127.0.0.1:{stack.api_port}",
            *args[1:],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    """Its stdout with the console's line wrapping undone."""
    return " ".join(result.stdout.split())


def serving(stack: Stack) -> set[str]:
    """Addresses of the server slots HAProxy has in service (`show servers state`): neither
    parked nor draining (a new instance then waits for its checks to pass: not counted here)."""
    found = set()
    for line in stack.admin("show servers state").splitlines():
        fields = line.split()
        # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state … srv_port (19)
        out = MAINTENANCE_MASK | DRAIN_MASK
        if len(fields) > 18 and fields[1].startswith("wb.shop.") and not int(fields[6]) & out:
            found.add(f"{fields[4]}:{fields[18]}")
    return found


async def test_weights_status_and_a_dry_run_that_says_what_and_how(shop_stack: Stack) -> None:
    result = cli(shop_stack, "weights", "shop", "stable=0", "canary=100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert said(result).startswith("applied live (runtime commands, no reload) in ")
    assert "shop.stable: weight 90% → 0%" in said(result)
    assert (await send(gateway_url(shop_stack), 100)).routes == {"canary": 100}
    status = cli(shop_stack, "status", "shop")
    assert status.returncode == 0 and "canary" in status.stdout and "100%" in status.stdout
    bad = cli(shop_stack, "weights", "shop", "stable=50", "canary=40")
    assert bad.returncode == 1 and "exactly 100%" in bad.stdout
    dry = cli(shop_stack, "weights", "shop", "stable=50", "canary=50", "--dry-run")
    assert dry.returncode == 0, dry.stdout
    text = said(dry)
    assert text.startswith("dry run, nothing applied: it would be applied live")
    planned = re.search(r"planned in ([0-9.]+) ms on revision 2", text)
    assert planned and float(planned.group(1)) > 0, text  # issue 10.10: it said 0.0
    assert "what changes: shop.stable: weight 0% → 50% shop.canary: weight 100% → 50%" in text
    assert "how: swap map " in text
    assert (await send(gateway_url(shop_stack), 50)).routes == {"canary": 50}


def test_plan_shows_per_gateway_and_route_what_changes_and_why_it_reloads(
    shop_stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    """Issue 10.7: a file changing weights, instances and a condition planned as
    `reload (structure: …)` only, and a first condition as `map-missing: …/shop.strengths.map`."""
    spare, stable = addresses(backends, "spare"), addresses(backends, "stable")
    config = shop_config(backends, "50%", "50%")
    shop = config["gateways"]["shop"]
    shop["bind"] = shop_stack.request("GET", G).body["bind"]
    shop["routes"]["stable"]["instances"] = [*stable, spare[0]]
    shop["routes"]["canary"]["instances"] = addresses(backends, "canary")[1:]
    shop["routes"]["canary"]["condition"] = "has cookie beta"
    config["gateways"]["extra"] = {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
    path = short_tmp / "new.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    before = shop_stack.request("GET", G).body
    plan = cli(shop_stack, "plan", str(path))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    text = said(plan)
    first_canary = addresses(backends, "canary")[0]
    for line in (
        "gateway shop: dry run, nothing applied: it would need a reload of HAProxy",
        "shop.stable: weight 90% → 50%",
        f"shop.stable: instance {spare[0]} added",
        "shop.canary: weight 10% → 50%",
        f"shop.canary: instance {first_canary} removed",
        "shop.canary: condition set to has cookie beta",
        "how: reload: gateway shop gets its first condition (its strength map is created)",
        "gateway extra: dry run, nothing applied: it would need a reload of HAProxy",
        "gateway extra added",
        "reload: gateway extra is new (its frontend and backends are created)",
    ):
        assert line in text, (line, plan.stdout)
    assert "map-missing" not in text and "structure" not in text
    assert shop_stack.request("GET", G).body == before
    assert shop_stack.request("GET", "/api/v1/gateways/extra").status == 404
    applied = cli(shop_stack, "apply", str(path))
    assert applied.returncode == 0, applied.stdout
    assert "gateway shop: applied by a reload of HAProxy" in said(applied)
    assert shop_stack.request("GET", "/api/v1/gateways/extra").status == 200
    assert shop_stack.request("GET", G).body["routes"]["stable"]["weight"] == "50%"
    # a structural change names what changed
    shop["routes"]["stable"]["balance"] = "leastconn"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    again = cli(shop_stack, "plan", str(path))
    assert "how: reload: the structure changes: shop.stable: balance set to leastconn" in said(
        again
    )
    assert "gateway extra: dry run, nothing applied: nothing would change" in said(again)


def test_instances_add_remove_set_each_with_a_dry_run(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """Issue 10.8: `instances … --dry-run` was refused and one instance could not be added or
    removed without sending the whole list."""
    spare = addresses(backends, "spare")
    stable = addresses(backends, "stable")
    dry = cli(shop_stack, "instances", "shop", "stable", "add", spare[0], "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert said(dry).startswith("dry run, nothing applied: it would be applied live")
    assert f"shop.stable: instance {spare[0]} added" in said(dry)
    assert spare[0] not in serving(shop_stack)
    assert shop_stack.request("GET", G).body["routes"]["stable"]["instances"] == stable

    added = cli(shop_stack, "instances", "shop", "stable", "add", spare[0], spare[1])
    assert added.returncode == 0 and "applied live" in said(added), added.stdout
    assert {spare[0], spare[1], *stable} <= serving(shop_stack)
    routes = shop_stack.request("GET", G).body["routes"]
    assert routes["stable"]["instances"] == [*stable, spare[0], spare[1]]

    again = cli(shop_stack, "instances", "shop", "stable", "add", spare[0])
    assert again.returncode == 0
    assert f"note: {spare[0]} is already an instance of shop.stable" in said(again)
    assert "nothing to change" in said(again)

    removed = cli(shop_stack, "instances", "shop", "stable", "remove", stable[0], "--dry-run")
    assert f"shop.stable: instance {stable[0]} removed" in said(removed)
    assert stable[0] in serving(shop_stack)
    removed = cli(shop_stack, "instances", "shop", "stable", "remove", stable[0])
    assert removed.returncode == 0 and stable[0] not in serving(shop_stack), removed.stdout

    replaced = cli(shop_stack, "instances", "shop", "canary", "set", spare[2], spare[3])
    assert replaced.returncode == 0, replaced.stdout
    assert shop_stack.request("GET", G).body["routes"]["canary"]["instances"] == spare[2:4]
    unknown = cli(shop_stack, "instances", "shop", "nope", "add", spare[0])
    assert unknown.returncode == 1 and "has no route 'nope'" in said(unknown)


@dataclass(frozen=True, repr=False)
class RacingClient(ApiClient):
    """Another writer changes the gateway right after this client's first read."""

    stack: Stack | None = None
    other: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, **options: Any) -> Reply:
        reply = super().call(method, path, body, **options)
        self.statuses.append(reply.status)
        if method == "GET" and len(self.statuses) == 1:
            assert self.stack is not None
            other = self.stack.request("PUT", f"{G}/routes/stable/instances", self.other)
            assert other.status == 200, other.body
        return reply


def test_add_retries_when_another_writer_came_first(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """Read, edit, write with If-Match: the write that lost gets 412 and starts over, so the
    other writer's change and ours both stay."""
    spare, stable = addresses(backends, "spare"), addresses(backends, "stable")
    api = f"127.0.0.1:{shop_stack.api_port}"
    client = RacingClient(api, stack=shop_stack, other=[*stable, spare[0]])
    reply = edit_instances(
        client, "shop", "stable", lambda current: edited("add", current, [spare[1]])[0]
    )
    assert reply is not None and reply.status == 200, reply
    assert client.statuses == [200, 412, 200, 200]
    instances = shop_stack.request("GET", G).body["routes"]["stable"]["instances"]
    assert instances == [*stable, spare[0], spare[1]]
    assert {spare[0], spare[1]} <= serving(shop_stack)


def test_concurrent_adds_from_many_processes_lose_nothing(shop_stack: Stack) -> None:
    ports = [free_port() for _ in range(4)]
    wanted = [f"127.0.0.1:{port}" for port in ports]
    with concurrent.futures.ThreadPoolExecutor(len(wanted)) as pool:
        results = list(
            pool.map(lambda a: cli(shop_stack, "instances", "shop", "stable", "add", a), wanted)
        )
    assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    instances = shop_stack.request("GET", G).body["routes"]["stable"]["instances"]
    assert set(wanted) <= set(instances) and len(instances) == 4 + len(wanted)
    assert set(wanted) <= serving(shop_stack)


def test_status_shows_conditions_strengths_and_no_false_health(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Issue 10.8: no condition or strength column; an instance nobody listens on was
    "1/1 ready". It is in service, but not healthy: HAProxy's checks say so (issue 12)."""
    config = shop_config(backends)
    routes = config["gateways"]["shop"]["routes"]
    routes["canary"] |= {"condition": "has cookie beta", "condition_strength": "50%"}
    ghost = f"127.0.0.1:{free_port()}"
    fast = {"interval": "300ms", "timeout": "200ms", "fall": 2}
    routes["ghost"] = {"weight": "0%", "instances": [ghost], "health_check": fast}
    routes["stable"]["weight"] = "90%"
    routes["canary"]["weight"] = "10%"
    with running_stack(short_tmp, config) as stack:
        wait_health(stack, "shop", "ghost", ghost, "DOWN")
        # the route is down once the health watch has looked at it (at its own pace)
        status_path = "/api/v1/gateways/shop/status"
        wait_until(
            lambda: stack.request("GET", status_path).body["routes"]["ghost"]["down"],
            30,
            "the ghost route to be reported down",
        )
        status = cli(stack, "status", "shop")
    assert status.returncode == 0, status.stdout + status.stderr
    text = said(status)
    rows: dict[str, str] = {}
    for line in status.stdout.splitlines():  # the routes table first, then the instances'
        if "│" in line:
            rows.setdefault(line.split("│")[1].strip(), line)
    assert "has cookie beta" in rows["canary"] and "50%" in rows["canary"]
    cells = [cell.strip() for cell in rows["ghost"].split("│")]
    assert cells[-3] == "1/1" and cells[-2].startswith("0/1 DOWN"), rows["ghost"]
    assert "ready" not in status.stdout
    assert "in service" in status.stdout.splitlines()[2]  # the column's header
    assert "the ones passing HAProxy's checks" in text
    assert "L4CON" in text  # the ghost's last check, in the instances table
    assert "condition" in text and "strength" in text


def test_client_commands_load_no_engine_or_haproxy_code(
    shop_stack: Stack, short_tmp: Path, backends: BackendProcess
) -> None:
    config = short_tmp / "plan.yaml"
    config.write_text(yaml.safe_dump(shop_config(backends), sort_keys=False))
    api = f"127.0.0.1:{shop_stack.api_port}"
    commands = [
        ["status", "shop", "--api", api],
        ["weights", "shop", "stable=80", "canary=20", "--dry-run", "--api", api],
        ["instances", "shop", "stable", "add", "127.0.0.1:9", "--dry-run", "--api", api],
        ["plan", str(config), "--api", api],
        ["rollout", "status", "--api", api],
    ]
    script = (
        "import sys\n"
        "from controller.cli import main\n"
        f"codes = [main(argv) for argv in {commands!r}]\n"
        "loaded = {'controller.engine', 'controller.process', 'controller.runtime.client',"
        " 'controller.service', 'aiohttp'} & set(sys.modules)\n"
        "print('RESULT', codes, sorted(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "RESULT [0, 0, 0, 0, 0] []" in result.stdout, result.stdout


def test_unreachable_controller_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "status", "shop", "--api", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach the controller" in result.stdout
