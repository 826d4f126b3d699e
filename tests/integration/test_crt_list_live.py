"""Issue 14, through the real controller: certificates added to or removed from a gateway's TLS
list are applied live (`add/del ssl crt-list`), with no reload.

One controller (and its HAProxy 2.6) for the module; certificates are made in the test, uploaded
through the API or given by path from a directory allowed with `--allow-cert-path`. Reloads
are read from the master's `show proc`, the served certificate from a fresh handshake, the
live list from `show ssl crt-list -n`.
"""

from __future__ import annotations

import shutil
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import addresses
from tests.support import BackendProcess
from tests.support.certs import Authority, Issued, served_serial
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until
from tests.support.traffic import SteadyLoad

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]


@dataclass
class Site:
    stack: Stack
    ca: Authority
    pki: Path
    backends: BackendProcess
    issued: dict[str, Issued] = field(default_factory=dict)

    @property
    def certs(self) -> Path:
        return self.stack.state_dir / "certs"

    def upload(self, name: str, *names: str) -> Issued:
        leaf = self.issued[name] = self.ca.issue(*names)
        response = self.stack.request("PUT", f"/api/v1/certificates/{name}", {"pem": leaf.pem})
        assert response.status in (200, 201), response.body
        return leaf

    def by_path(self, name: str, *names: str) -> str:
        """A PEM file in the allowed directory, never uploaded: HAProxy does not hold it."""
        leaf = self.issued[name] = self.ca.issue(*names)
        path = self.pki / f"{name}.pem"
        path.write_text(leaf.pem)
        return str(path)

    def serial(self, name: str) -> int:
        return int(self.issued[name].cert.serial_number)

    def gateway(self, port: int, certificates: list[str], **tls: Any) -> dict[str, Any]:
        return {
            "bind": f"127.0.0.1:{port}",
            "tls": {"certificates": certificates, **tls},
            "routes": {"stable": {"instances": addresses(self.backends, "stable")}},
        }

    def put(self, name: str, gateway: dict[str, Any], dry_run: bool = False) -> Any:
        query = "?dry_run=true" if dry_run else ""
        response = self.stack.request("PUT", f"/api/v1/gateways/{name}{query}", gateway)
        assert response.status in (200, 201), response.body
        return response.body

    def live_list(self, gateway: str) -> list[str]:
        """The certificates of the gateway's crt-list as HAProxy runs it, in order."""
        reply = self.stack.admin(f"show ssl crt-list -n {self.certs}/{gateway}.crt-list")
        return [
            line.split()[0].rsplit(":", 1)[0]
            for line in reply.splitlines()
            if line.strip() and not line.startswith("#")
        ]

    def loaded(self) -> set[str]:
        reply = self.stack.admin("show ssl cert")
        return {line.strip() for line in reply.splitlines() if line.startswith("/")}

    def file(self, gateway: str) -> list[str]:
        return (self.certs / f"{gateway}.crt-list").read_text().splitlines()


@pytest.fixture(scope="module")
def site(backends: BackendProcess, module_tmp: Path) -> Iterator[Site]:
    pki = module_tmp / "pki"
    pki.mkdir()
    extra = ["--allow-cert-path", str(pki)]
    with running_stack(module_tmp, {"gateways": {}}, extra=extra) as stack:
        yield Site(stack, Authority(), pki, backends)


async def test_a_certificate_added_then_removed_is_applied_live_with_no_reload(
    site: Site,
) -> None:
    port = free_port()
    site.upload("main", "main.test")
    site.upload("shop", "shop.test", "www.shop.test")
    site.put("added", site.gateway(port, ["main"]))
    main, shop = f"{site.certs}/main.pem", f"{site.certs}/shop.pem"
    assert await served_serial(port, "shop.test") == site.serial("main")
    before = site.stack.reloads()

    wanted = site.gateway(port, ["main", "shop"])
    dry = site.put("added", wanted, dry_run=True)
    assert dry["method"] == "runtime", dry
    assert f"add ssl crt-list {site.certs}/added.crt-list {shop}" in dry["plan"], dry
    [change] = [c for c in dry["changes"] if c["field"] == "tls"]
    assert change["live"] is True, dry
    assert site.live_list("added") == [main]  # a dry run changes nothing

    async with SteadyLoad(
        f"https://127.0.0.1:{port}/",
        rate=40,
        tls=ssl.create_default_context(cadata=site.ca.pem),
        server_hostname="main.test",
        headers={"Host": "main.test"},
        new_connection_each=True,
    ) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 40)
        body = site.put("added", wanted)
        assert body["method"] == "runtime", body
        # the next handshake for each of its names sees the new certificate
        assert await served_serial(port, "shop.test") == site.serial("shop")
        assert await served_serial(port, "www.shop.test") == site.serial("shop")
        assert await served_serial(port, "main.test") == site.serial("main")
        answered = time.monotonic()
        await load.wait_until(lambda r: sum(1 for o in r.outcomes if o.sent_at > answered) >= 40)
    load.report.assert_no_failures(min_requests=80)
    assert site.live_list("added") == [main, shop]
    assert site.file("added") == [main, shop]  # what a later reload loads

    body = site.put("added", site.gateway(port, ["main"]))
    assert body["method"] == "runtime", body
    assert any(step.startswith("del ssl crt-list") for step in body["plan"]), body
    # the name falls back to the default certificate; HAProxy forgets the unused one
    assert await served_serial(port, "shop.test") == site.serial("main")
    assert site.live_list("added") == [main] and site.file("added") == [main]
    assert shop not in site.loaded()
    assert site.stack.reloads() == before, "adding or removing a certificate must not reload"
    response = site.stack.request("GET", "/api/v1/certificates/shop")
    assert response.status == 200 and response.body["served"] is None, response.body


async def test_a_certificate_by_path_is_loaded_then_forgotten_live(site: Site) -> None:
    port = free_port()
    site.upload("base", "base.test")
    site.put("paths", site.gateway(port, ["base"]))
    path = site.by_path("api", "api.test")
    before = site.stack.reloads()
    assert path not in site.loaded()
    body = site.put("paths", site.gateway(port, ["base", path]))
    assert body["method"] == "runtime", body
    assert f"new ssl cert {path} (set, commit)" in body["plan"], body
    assert await served_serial(port, "api.test") == site.serial("api")
    assert path in site.loaded()
    body = site.put("paths", site.gateway(port, ["base"]))
    assert body["method"] == "runtime", body
    assert await served_serial(port, "api.test") == site.serial("base")
    assert path not in site.loaded()
    assert site.stack.reloads() == before


async def test_a_certificate_haproxy_could_not_load_is_refused_and_nothing_changes(
    site: Site,
) -> None:
    port = free_port()
    site.upload("keep", "keep.test")
    site.put("refused", site.gateway(port, ["keep"]))
    broken = site.pki / "broken.pem"
    leaf = site.ca.issue("broken.test")
    broken.write_text(leaf.pem.split("-----BEGIN PRIVATE")[0])  # no key
    before = site.stack.reloads(), site.live_list("refused"), site.file("refused")
    record = site.stack.request("GET", "/api/v1/gateways/refused").body
    response = site.stack.request(
        "PUT", "/api/v1/gateways/refused", site.gateway(port, ["keep", str(broken)])
    )
    assert response.status == 400, response.body
    problem = response.body["problems"][0]
    assert problem["field"] == "gateways.refused.tls.certificates", problem
    assert "BEGIN" not in problem["message"]  # never the file's content
    assert (site.stack.reloads(), site.live_list("refused"), site.file("refused")) == before
    assert site.stack.request("GET", "/api/v1/gateways/refused").body == record
    assert str(broken) not in site.loaded()
    assert await served_serial(port, "keep.test") == site.serial("keep")


async def test_a_new_default_reloads_and_unused_crt_lists_are_removed(site: Site) -> None:
    port = free_port()
    site.upload("first", "first.test")
    site.upload("second", "second.test")
    site.put("moved", site.gateway(port, ["first", "second"]))
    legacy = site.certs / "moved.0123456789ab.crt-list"  # a content-named file of old
    legacy.write_text(f"{site.certs}/first.pem\n")
    legacy.chmod(0o600)
    before = site.stack.reloads()
    body = site.put("moved", site.gateway(port, ["first", "second"], default="second"))
    assert body["method"] == "reload", body
    assert site.stack.reloads() == before + 1
    assert await served_serial(port, "other.test") == site.serial("second")
    assert site.file("moved") == [f"{site.certs}/second.pem", f"{site.certs}/first.pem"]
    assert not legacy.exists(), "a crt-list nothing names is removed after the reload"
    assert (site.certs / "moved.crt-list").exists() and (site.certs / "first.pem").exists()

    site.put("kept", site.gateway(free_port(), ["first"]))
    response = site.stack.request("DELETE", "/api/v1/gateways/moved")
    assert response.status == 200, response.body
    wait_until(
        lambda: not (site.certs / "moved.crt-list").exists(),
        10,
        "the removed gateway's crt-list to go",
    )
    assert (site.certs / "kept.crt-list").exists()  # another gateway's: still named


async def test_a_restarted_controller_adopts_the_live_list_and_repairs_drift(
    site: Site,
) -> None:
    port = free_port()
    site.upload("home", "home.test")
    site.upload("blog", "blog.test")
    site.put("adopted", site.gateway(port, ["home", "blog"]))
    home, blog = f"{site.certs}/home.pem", f"{site.certs}/blog.pem"
    before = site.stack.reloads()
    site.stack.stop_controller()
    try:
        # while no controller runs, someone drops a certificate from the live list by hand
        reply = site.stack.admin(f"del ssl crt-list {site.certs}/adopted.crt-list {blog}")
        assert "deleted" in reply, reply
        assert await served_serial(port, "blog.test") == site.serial("home")
    finally:
        config = site.stack.state_dir.parent / "weighbridge.yaml"
        site.stack.start_controller(config, ["--allow-cert-path", str(site.pki)])
    wait_until(lambda: site.live_list("adopted") == [home, blog], 20, "the list repaired")
    assert await served_serial(port, "blog.test") == site.serial("blog")
    assert site.stack.reloads() == before, "adopting must not reload"
