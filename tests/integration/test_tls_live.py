"""Certificates and SNI names changed live on a real HAProxy 2.6, with no reload.

A hand-written configuration (the gateway wiring comes later): one frontend
`bind … ssl crt-list <file>` with a default certificate and two SNI names. Its answer says
which certificate served the request (`X-Instance: <serial>`, `X-Route: <sni>`), so every
request of a load proves what its own handshake saw. Uploads go through the real API
handlers (`add_certificate_routes`) with the API's access and error middlewares, and the
`CertificateManager` on a real Runtime API session. Reloads are read from the master's
`show proc`.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509

from controller.api.certificates import add_certificate_routes
from controller.api.connections import LIMITS, ApiLimits
from controller.api.errors import translator
from controller.api.security import ACCESS, Access, HostPolicy, access_middleware
from controller.errors import ConflictingState, InvalidInput
from controller.runtime import commands as c
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import TransientError
from controller.runtime.parse import parse_crt_list, parse_proc, parse_ssl_cert_list
from controller.tls.crtlist import CrtList, CrtListChanges, render_crt_list
from controller.tls.listplan import CrtListPlan
from controller.tls.manager import CertificateManager
from controller.tls.pem import parse_bundle
from controller.tls.store import CertificateStore
from tests.support.certs import Authority, Issued
from tests.support.haproxy import HAProxyProcess, running_haproxy
from tests.support.ports import free_port
from tests.support.stack import admin_command
from tests.support.traffic import SteadyLoad

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

CONFIG = """\
global
    stats socket {dir}/admin.sock mode 600 level admin
    hard-stop-after 5s

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend tls
    bind 127.0.0.1:{port} ssl crt-list {dir}/tls.crt-list
    http-request return status 200 content-type text/plain hdr X-Route "%[ssl_fc_sni]" \
hdr X-Instance "%[ssl_f_serial,hex]" string ok

backend other
    server s1 127.0.0.1:1 disabled
"""


@dataclass
class Site:
    """HAProxy serving `main` (default), `a` (a.test) and `b` (b.test), and the API."""

    haproxy: HAProxyProcess
    port: int
    ca: Authority
    store: CertificateStore
    runtime: RuntimeClient
    manager: CertificateManager
    api: TestClient[web.Request, web.Application]
    issued: dict[str, Issued]

    @property
    def crt_list(self) -> str:
        return str(self.haproxy.dir / "tls.crt-list")

    def path(self, name: str) -> str:
        return str(self.store.path(name))

    def desired(self, **extra: str) -> CrtList:
        names = {"a.test": self.path("a"), "b.test": self.path("b")}
        names.update({sni: self.path(cert) for sni, cert in extra.items()})
        return CrtList.build(self.path("main"), names)

    def reloads(self) -> tuple[int, tuple[int, ...]]:
        proc = parse_proc(admin_command(Path(self.haproxy.master), "show proc"))
        return proc.reloads, tuple(worker.pid for worker in proc.workers)

    def open_transactions(self) -> tuple[str, ...]:
        reply = admin_command(Path(self.haproxy.admin), "show ssl cert")
        return parse_ssl_cert_list(reply).transactions

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.pem)

    async def served_serial(self, sni: str | None, *, verify: bool = True) -> str:
        """The serial of the certificate a fresh handshake gets (checked against `sni`)."""
        context = self.trust()
        if not verify:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        _, writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=context, server_hostname=sni or None
        )
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.transport.abort()  # no close_notify exchange: only the handshake matters
        return f"{x509.load_der_x509_certificate(der).serial_number:X}"

    def stored_list(self) -> str:
        return Path(self.crt_list).read_text()

    def stored(self, name: str) -> str | None:
        path = Path(self.path(name))
        return path.read_text() if path.exists() else None

    async def put(self, name: str, body: Any, **headers: str) -> tuple[int, Any]:
        response = await self.api.put(f"/api/v1/certificates/{name}", json=body, headers=headers)
        return response.status, await response.json()


JSON = {"Content-Type": "application/json"}  # every write, DELETE too (controller.api.security)


def serials(values: Iterable[str]) -> set[int]:
    """Serials compared as numbers: HAProxy's hex may carry a leading zero byte."""
    return {int(value, 16) for value in values}


def _api_app(manager: CertificateManager) -> web.Application:
    """The API's own access and error middlewares around the certificate endpoints."""
    app = web.Application(middlewares=[translator(lambda _: None), access_middleware])
    app[ACCESS] = Access(HostPolicy.build("127.0.0.1"))
    app[LIMITS] = ApiLimits()
    add_certificate_routes(app, manager)
    return app


@pytest.fixture
def served_files() -> Iterator[tuple[Path, dict[str, Issued], Authority]]:
    """The certificate files, in a store directory outside HAProxy's temp dir."""
    ca = Authority()
    issued = {
        "main": ca.issue("main.test"),
        "a": ca.issue("a.test"),
        "b": ca.issue("b.test", key="rsa2048"),
    }
    root = Path(tempfile.mkdtemp(prefix="wb-tls-", dir="/tmp"))
    try:
        store = CertificateStore.in_state_dir(root)
        for name, leaf in issued.items():
            store.put(name, parse_bundle(leaf.pem))
        yield root, issued, ca
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def site(served_files: tuple[Path, dict[str, Issued], Authority]) -> AsyncIterator[Site]:
    root, issued, ca = served_files
    store = CertificateStore.in_state_dir(root)
    port = free_port()
    crt_list = CrtList.build(
        str(store.path("main")), {"a.test": str(store.path("a")), "b.test": str(store.path("b"))}
    )
    files = {"tls.crt-list": render_crt_list(crt_list)}
    with running_haproxy(CONFIG.replace("{port}", str(port)), files, prefix="wb-tls-") as haproxy:
        async with RuntimeClient(haproxy.admin) as runtime:
            manager = CertificateManager(store, runtime)
            async with TestClient(TestServer(_api_app(manager), host="127.0.0.1")) as api:
                yield Site(haproxy, port, ca, store, runtime, manager, api, dict(issued))


async def test_sni_picks_the_certificate_and_the_default_answers_the_rest(site: Site) -> None:
    assert await site.served_serial("a.test") == site.issued["a"].serial
    assert await site.served_serial("b.test") == site.issued["b"].serial
    default = site.issued["main"].serial
    assert await site.served_serial("unknown.test", verify=False) == default
    assert await site.served_serial(None, verify=False) == default


async def test_a_renewed_certificate_is_served_on_the_next_handshake_with_no_reload(
    site: Site,
) -> None:
    before = site.reloads()
    renewed = site.ca.issue("a.test", key="rsa2048")  # a new key too, and another key type
    url = f"https://127.0.0.1:{site.port}/"
    async with SteadyLoad(
        url, rate=100, tls=site.trust(), server_hostname="a.test", new_connection_each=True
    ) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 100)
        asked = time.monotonic()
        status, body = await site.put("a", {"pem": renewed.pem})
        answered = time.monotonic()
        assert status == 200, body
        assert body["live"] == "replaced" and body["serial"] == renewed.serial
        assert "key" not in str(body).lower().replace("key_type", "")
        await load.wait_until(lambda r: len(r.instances(sent_after=answered)) > 0)
        await load.wait_until(lambda r: sum(r.instances(sent_after=answered).values()) >= 100)
    report = load.report
    report.assert_no_failures(min_requests=200)
    old, new = site.issued["a"].serial, renewed.serial
    assert serials(report.instances()) == serials([old, new])
    # every handshake that started after the API answered saw the new certificate
    assert serials(report.instances(sent_after=answered)) == serials([new])
    assert set(report.routes()) == {"a.test"}
    assert site.reloads() == before, "a certificate change must not reload HAProxy"
    print(
        f"\nrenewal under load: {len(report.outcomes)} requests (a handshake each), 0 failed, "
        f"0 reloads; PUT answered in {(answered - asked) * 1000:.1f} ms"
    )
    assert await site.served_serial("b.test") == site.issued["b"].serial
    assert site.store.read("a").info.serial == new
    assert site.open_transactions() == ()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ca, old: {"pem": "-----BEGIN CERTIFICATE-----\nAAAA\n"}, "has text outside"),
        (
            lambda ca, old: {"pem": old.pem.split("-----BEGIN PRIVATE")[0]},
            "has no private key",
        ),
        (
            lambda ca, old: {
                "pem": ca.issue("a.test").pem.split("-----BEGIN PRIVATE")[0]
                + "-----BEGIN PRIVATE"
                + old.pem.split("-----BEGIN PRIVATE")[1]
            },
            "the private key does not match the certificate",
        ),
        (lambda ca, old: {"pem": ca.issue("a.test", days=1, starts_in=-3).pem}, "expired on"),
        (lambda ca, old: {"pem": ca.issue("a.test", starts_in=2).pem}, "not valid before"),
        (lambda ca, old: {"pem": ca.issue("a.test", key="rsa1024").pem}, "RSA keys must have"),
        (lambda ca, old: {"certificate": old.pem}, 'required: send {"pem"'),
    ],
)
async def test_a_bad_upload_is_refused_and_the_old_certificate_stays(
    site: Site, make: Any, message: str
) -> None:
    before = site.reloads()
    stored = site.stored("a")
    status, body = await site.put("a", make(site.ca, site.issued["a"]))
    assert status == 400, body
    assert body["problems"][0]["field"] == "pem"
    assert message in body["problems"][0]["message"], body
    assert await site.served_serial("a.test") == site.issued["a"].serial
    assert site.stored("a") == stored
    assert site.open_transactions() == () and site.reloads() == before


async def test_writes_keep_the_api_access_rules(site: Site) -> None:
    pem = site.ca.issue("a.test").pem
    response = await site.api.put(
        "/api/v1/certificates/a", data=pem, headers={"Content-Type": "application/x-pem-file"}
    )
    assert response.status == 415
    status, _ = await site.put("a", {"pem": pem}, Origin="https://evil.example")
    assert status == 403
    status, body = await site.put("A", {"pem": pem})
    assert status == 400 and body["problems"][0]["field"] == "name"
    assert await site.served_serial("a.test") == site.issued["a"].serial


async def test_a_new_sni_name_is_added_and_removed_live(site: Site) -> None:
    before = site.reloads()
    c_leaf = site.ca.issue("c.test")
    status, body = await site.put("c", {"pem": c_leaf.pem})
    assert status == 201 and body["live"] == "loaded", body
    default = site.issued["main"].serial
    assert await site.served_serial("c.test", verify=False) == default  # not listed yet

    changes = await site.manager.apply_crt_list(site.crt_list, site.desired(**{"c.test": "c"}))
    assert changes.add == ((site.path("c"), "c.test"),) and changes.delete == ()
    assert await site.served_serial("c.test") == c_leaf.serial
    assert await site.served_serial("a.test") == site.issued["a"].serial
    listing = await site.api.get("/api/v1/certificates/c")
    assert (await listing.json())["served"] is True

    response = await site.api.delete("/api/v1/certificates/c", headers=JSON)
    assert response.status == 409, await response.json()  # still in the crt-list

    changes = await site.manager.apply_crt_list(site.crt_list, site.desired())
    assert changes.delete and not changes.add
    assert await site.served_serial("c.test", verify=False) == default
    response = await site.api.delete("/api/v1/certificates/c", headers=JSON)
    assert response.status == 200
    assert site.path("c") not in admin_command(Path(site.haproxy.admin), "show ssl cert")
    assert site.stored("c") is None
    assert site.reloads() == before

    # the default certificate cannot change live
    moved = CrtList.build(site.path("a"), {"b.test": site.path("b")})
    live = admin_command(Path(site.haproxy.admin), f"show ssl crt-list -n {site.crt_list}")
    changes = await site.manager.apply_crt_list(site.crt_list, moved)
    assert changes.default_changed and changes.delete == ((site.path("a"), 2),)
    after = admin_command(Path(site.haproxy.admin), f"show ssl crt-list -n {site.crt_list}")
    assert after == live, "nothing is applied when only a reload can do it"


async def test_listing_shows_no_key(site: Site) -> None:
    response = await site.api.get("/api/v1/certificates")
    body = await response.json()
    assert set(body["certificates"]) == {"main", "a", "b"}
    assert body["certificates"]["b"]["key_type"] == "RSA2048"
    assert body["certificates"]["a"]["sans"] == ["DNS:a.test"]
    text = await (await site.api.get("/api/v1/certificates/a")).text()
    assert "PRIVATE" not in text and "BEGIN" not in text
    assert (await site.api.get("/api/v1/certificates/zz")).status == 404


async def test_a_bundle_too_big_for_one_payload_goes_in_two(site: Site) -> None:
    """16 KB (tune.bufsize) is HAProxy 2.6's limit for a command and its payload."""
    big = site.ca.issue("a.test", key="rsa4096", extra_sans=160)
    bundle = parse_bundle(big.pem)
    assert len(bundle.pem) > c.CLI_BUFFER  # would not fit in one payload
    assert len(site.manager.payloads("a", bundle)) == 2
    status, body = await site.put("a", {"pem": big.pem})
    assert status == 200 and body["live"] == "replaced", body
    assert await site.served_serial("a.test") == big.serial

    huge = site.ca.issue("a.test", extra_sans=260)
    status, body = await site.put("a", {"pem": huge.pem})
    assert status == 413, body
    assert "tune.bufsize" in body["problems"][0]["message"]
    assert await site.served_serial("a.test") == big.serial
    assert site.store.read("a").info.serial == big.serial


async def test_the_cli_buffer_bound_is_safe_on_a_real_haproxy(site: Site) -> None:
    """The largest command `fits_cli_buffer` lets through gets an answer (2.6.12 stalls and
    its worker dies one byte later: never sent here)."""
    head = len(f"set ssl cert {site.path('a')} <<\n") + 2
    body = c.CLI_BUFFER - 1 - head
    lines = ["A" * 64] * (body // 65)
    payload = "\n".join([*lines, "A" * (body - 65 * len(lines))])
    largest = c.set_ssl_cert(site.path("a"), payload)
    assert c.wire_size(largest) == c.CLI_BUFFER - 1 and c.fits_cli_buffer(largest)
    [reply] = await site.runtime.execute_many([largest], check=False)
    assert "Can't update" in reply  # an answer: HAProxy read it all and refused the text
    assert site.open_transactions() == ()
    assert await site.served_serial("a.test") == site.issued["a"].serial


async def test_a_transaction_left_open_is_aborted_and_never_mixed_up(site: Site) -> None:
    """On 2.6, `set ssl cert a` while b's transaction is open fills b's: the manager aborts
    whatever is open first, and checks whose transaction each reply names."""
    stray = site.ca.issue("b.test")
    admin_command(
        Path(site.haproxy.admin), f"set ssl cert {site.path('b')} <<\n{stray.pem.strip()}\n"
    )
    assert site.open_transactions() == (site.path("b"),)
    renewed = site.ca.issue("a.test")
    status, body = await site.put("a", {"pem": renewed.pem})
    assert status == 200, body
    assert await site.served_serial("a.test") == renewed.serial
    assert await site.served_serial("b.test") == site.issued["b"].serial
    assert site.open_transactions() == ()


async def test_concurrent_uploads_and_other_runtime_writes(site: Site) -> None:
    """One transaction per certificate at a time, while other Runtime API writes go on."""
    before = site.reloads()
    renewed = {name: site.ca.issue(f"{name}.test") for name in ("a", "b")}

    async def weights() -> int:
        for weight in range(40):
            await site.runtime.execute(c.set_server_weight("other", "s1", weight))
        return weight

    results = await asyncio.gather(
        site.put("a", {"pem": renewed["a"].pem}),
        site.put("b", {"pem": renewed["b"].pem}),
        weights(),
    )
    assert [status for status, _ in results[:2]] == [200, 200], results
    assert await site.served_serial("a.test") == renewed["a"].serial
    assert await site.served_serial("b.test") == renewed["b"].serial
    assert site.open_transactions() == () and site.reloads() == before


async def test_reconcile_pushes_the_stored_version(site: Site) -> None:
    """After a controller restart (or a change by hand) the files win."""
    renewed = site.ca.issue("a.test")
    site.store.put("a", parse_bundle(renewed.pem))  # as if HAProxy missed the change
    assert await site.served_serial("a.test") == site.issued["a"].serial
    assert await site.manager.reconcile() == ["a"]
    assert await site.served_serial("a.test") == renewed.serial
    assert await site.manager.reconcile() == []


async def test_unreachable_haproxy_changes_nothing(
    served_files: tuple[Path, dict[str, Issued], Authority], tmp_path: Path
) -> None:
    root, issued, ca = served_files
    store = CertificateStore.in_state_dir(root)
    runtime = RuntimeClient(str(tmp_path / "none.sock"), timeout=1)
    manager = CertificateManager(store, runtime)
    with pytest.raises(TransientError):  # the API answers 503
        await manager.install("a", parse_bundle(ca.issue("a.test").pem))
    assert store.read("a").info.serial == issued["a"].serial


def _live_lines(site: Site) -> str:
    return admin_command(Path(site.haproxy.admin), f"show ssl crt-list -n {site.crt_list}")


async def test_a_list_change_failing_midway_leaves_the_previous_list(site: Site) -> None:
    """`apply_lists` on a real HAProxy: the certificate is loaded and its line added, then a
    deletion HAProxy refuses: the added line is deleted again, the loaded certificate
    forgotten, the file put back, no transaction left open; 409 with HAProxy's words."""
    before, file_before, reloads = _live_lines(site), site.stored_list(), site.reloads()
    leaf = site.ca.issue("c.test")
    site.store.put("c", parse_bundle(leaf.pem))  # on disk only: HAProxy does not hold it
    c_path = site.path("c")
    observed = parse_crt_list(before)
    desired = site.desired(**{"c.test": "c"})
    changes = CrtListChanges(((c_path, "c.test"),), ((site.path("a"), 99),), False)
    plan = CrtListPlan(
        site.crt_list,
        desired,
        tuple((line.cert, line.filters) for line in observed),
        changes,
        load=(c_path,),
    )
    with pytest.raises(ConflictingState) as caught:
        await site.manager.apply_lists([plan])
    assert "crt-list" in caught.value.message  # 409: the API maps ConflictingState
    assert _live_lines(site) == before
    assert c_path not in admin_command(Path(site.haproxy.admin), "show ssl cert")
    assert site.stored_list() == file_before
    assert site.open_transactions() == ()
    default = site.issued["main"].serial
    assert await site.served_serial("c.test", verify=False) == default
    assert site.reloads() == reloads

    # one certificate loaded, the next one unreadable: the first is forgotten again
    d_path = str(Path(c_path).with_name("missing.pem"))
    loads = CrtListChanges(((c_path, "c.test"), (d_path, "d.test")), (), False)
    plan = CrtListPlan(site.crt_list, desired, plan.before, loads, load=(c_path, d_path))
    with pytest.raises(InvalidInput) as refused:
        await site.manager.apply_lists([plan])
    assert refused.value.problems[0]["field"] == "tls.certificates"
    assert _live_lines(site) == before
    assert c_path not in admin_command(Path(site.haproxy.admin), "show ssl cert")
    assert site.open_transactions() == ()
    site.store.delete("c")
