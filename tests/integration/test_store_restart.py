"""A controller killed (SIGKILL) right after writes it acknowledged restarts with them, and with
map files that say what HAProxy runs (a reload after the restart loads them): the store's
journal and the map file written after its swap, on a real HAProxy."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import running_stack
from tests.support.traffic import send

G = "/api/v1/gateways/shop"


async def test_writes_acknowledged_just_before_a_sigkill_are_there_after_the_restart(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends)) as stack:
        etags = []
        for canary in range(1, 21):  # the last one: 20 % → then all on canary
            split = {"stable": f"{100 - canary * 5}%", "canary": f"{canary * 5}%"}
            answer = stack.request("PATCH", f"{G}/weights", split)
            assert answer.status == 200, answer.body
            etags.append(answer.headers["ETag"])
        stack.kill_controller()  # at once: no clean stop, nothing folded
        record = json.loads((stack.state_dir / "gateways" / "shop.json").read_text())
        assert record["revision"] == 1  # the seed: every write since is in the journal alone
        stack.start_controller(short_tmp / "weighbridge.yaml")
        shop = stack.request("GET", G)
        assert shop.headers["ETag"] == etags[-1] == '"21"'
        assert (
            shop.body["routes"]["stable"]["weight"],
            shop.body["routes"]["canary"]["weight"],
        ) == (
            "0%",
            "100%",
        )
        assert stack.request("GET", f"{G}/status").body["in_sync"] is True
        assert (await send(gateway_url(stack), 200)).routes == {"canary": 200}
        answer = stack.request("PATCH", f"{G}/weights", {"stable": "100%", "canary": "0%"})
        assert answer.status == 200 and answer.headers["ETag"] == '"22"'


async def test_a_map_file_left_behind_haproxy_by_a_crash_is_rewritten_before_a_reload(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """A crash after a write's swap and before its map file leaves the file at the previous
    split. The restarted controller writes every gateway's map files as stored, so the next
    reload (a gateway on a new bind) does not take traffic back to that split."""
    with running_stack(short_tmp, shop_config(backends)) as stack:
        weights_map = stack.state_dir / "maps" / "shop.map"
        before = weights_map.read_text()
        answer = stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"})
        assert answer.status == 200
        stack.kill_controller()
        weights_map.write_text(before)  # as the crash would have left it
        reloads = stack.reloads()
        stack.start_controller(short_tmp / "weighbridge.yaml")
        # at once: a reload waits until the adopted gateways are verified (their files
        # written), which may come just after ready
        other = {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
        answer = stack.request("PUT", "/api/v1/gateways/other", other)
        assert (answer.status, answer.body["method"]) == (201, "reload"), answer.body
        assert stack.reloads() == reloads + 1
        assert (await send(gateway_url(stack), 200)).routes == {"canary": 200}
        assert weights_map.read_text() != before
