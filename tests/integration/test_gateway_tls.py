"""Issue 14 through the real controller: HTTPS gateways, SNI, certificates renewed live, HTTP/2.

One controller (and its HAProxy 2.6) for the module. Certificates are made in the test and
uploaded through the API; two gateways with virtual hosts share one TLS bind, each with its
own certificate. Reloads are read from the master's `show proc`, the served certificate from a
fresh handshake.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import addresses
from tests.support import BackendProcess
from tests.support.certs import Authority, Issued, served_serial
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share
from tests.support.traffic import SteadyLoad, send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]


@dataclass
class Site:
    stack: Stack
    ca: Authority
    issued: dict[str, Issued]
    port: int
    redirect: int

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.pem)

    async def served_serial(self, sni: str | None) -> int:
        """The serial of the certificate a fresh handshake gets (not verified: any name)."""
        return await served_serial(self.port, sni)

    def serial(self, name: str) -> int:
        return int(self.issued[name].cert.serial_number)

    def put_certificate(self, name: str, pem: str) -> tuple[int, Any]:
        response = self.stack.request("PUT", f"/api/v1/certificates/{name}", {"pem": pem})
        return response.status, response.body


def _gateways(backends: BackendProcess, port: int, redirect: int) -> dict[str, Any]:
    tls = {"redirect_http": f"127.0.0.1:{redirect}"}
    return {
        "shop": {
            "bind": f"127.0.0.1:{port}",
            "virtual_hosts": ["a.test"],
            "tls": {"certificates": ["a"], **tls},
            "routes": {
                "stable": {"weight": "90%", "instances": addresses(backends, "stable")},
                "canary": {"weight": "10%", "instances": addresses(backends, "canary")},
            },
        },
        "blog": {
            "bind": f"127.0.0.1:{port}",
            "virtual_hosts": ["b.test"],
            "tls": {"certificates": ["b"], **tls},
            "routes": {"spare": {"instances": addresses(backends, "spare")}},
        },
    }


@pytest.fixture(scope="module")
def site(backends: BackendProcess, module_tmp: Path) -> Iterator[Site]:
    ca = Authority()
    issued = {"a": ca.issue("a.test"), "b": ca.issue("b.test", key="rsa2048")}
    port, redirect = free_port(), free_port()
    with running_stack(module_tmp, {"gateways": {}}) as stack:
        for name, leaf in issued.items():
            response = stack.request("PUT", f"/api/v1/certificates/{name}", {"pem": leaf.pem})
            assert response.status == 201, response.body
        for name, gateway in _gateways(backends, port, redirect).items():
            response = stack.request("PUT", f"/api/v1/gateways/{name}", gateway)
            assert response.status in (200, 201), response.body
        yield Site(stack, ca, issued, port, redirect)


def test_the_bind_is_tls_with_a_crt_list_per_gateway_in_the_state_dir(site: Site) -> None:
    config = (site.stack.state_dir / "haproxy.cfg").read_text()
    bind = next(line for line in config.splitlines() if f":{site.port} ssl" in line)
    lists = [word for word in bind.split() if word.endswith(".crt-list")]
    assert [Path(p).name.split(".")[0] for p in lists] == ["blog", "shop"]  # by name
    certs = site.stack.state_dir / "certs"
    assert all(Path(p).parent == certs for p in lists)
    assert Path(lists[1]).read_text() == f"{certs}/a.pem\n"
    assert "alpn h2,http/1.1" in bind and "ssl-min-ver TLSv1.2" in bind
    assert (certs / "a.pem").stat().st_mode & 0o777 == 0o600


async def test_sni_picks_each_gateway_s_certificate_on_the_shared_bind(site: Site) -> None:
    assert await site.served_serial("a.test") == site.serial("a")
    assert await site.served_serial("b.test") == site.serial("b")
    # no SNI, or an unknown name: the bind's default, the first gateway's (by name: blog)
    assert await site.served_serial(None) == site.serial("b")
    assert await site.served_serial("other.test") == site.serial("b")
    blog = await send(
        site.url, 50, tls=site.trust(), server_hostname="b.test", headers={"Host": "b.test"}
    )
    assert blog.routes == Counter({"spare": 50}), blog


async def test_https_split_90_10_over_4000_requests(site: Site) -> None:
    n = 4000
    result = await send(
        site.url, n, tls=site.trust(), server_hostname="a.test", headers={"Host": "a.test"}
    )
    assert not result.errors and result.statuses == Counter({200: n}), result.statuses
    assert_share(result.routes["canary"], n, 0.10, max_tolerance=0.025, label="canary")
    assert_share(result.routes["stable"], n, 0.90, max_tolerance=0.025, label="stable")


async def test_an_h2_client_gets_the_split(site: Site) -> None:
    n = 3000
    routes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    async with httpx.AsyncClient(http2=True, verify=site.trust()) as client:
        for _ in range(n // 50):
            batch = [
                client.get(
                    site.url, headers={"Host": "a.test"}, extensions={"sni_hostname": "a.test"}
                )
                for _ in range(50)
            ]
            for response in await asyncio.gather(*batch):
                assert response.status_code == 200
                versions[response.http_version] += 1
                routes[response.headers["X-Route"]] += 1
    assert versions == Counter({"HTTP/2": n})
    assert_share(routes["canary"], n, 0.10, max_tolerance=0.03, label="canary over h2")


@pytest.mark.parametrize(
    ("host", "name"),
    [("a.test:80", "a.test"), ("a.test", "a.test"), ("[::1]:8080", "[::1]"), ("[::1]", "[::1]")],
)
def test_plain_http_is_redirected_to_the_tls_bind(site: Site, host: str, name: str) -> None:
    response = httpx.get(f"http://127.0.0.1:{site.redirect}/cart?x=1", headers={"Host": host})
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{name}:{site.port}/cart?x=1"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda ca, old: "-----BEGIN CERTIFICATE-----\nAAAA\n", "has text outside"),
        (
            lambda ca, old: (
                ca.issue("a.test").pem.split("-----BEGIN PRIVATE")[0]
                + "-----BEGIN PRIVATE"
                + old.pem.split("-----BEGIN PRIVATE")[1]
            ),
            "the private key does not match the certificate",
        ),
        (lambda ca, old: ca.issue("a.test", days=1, starts_in=-3).pem, "expired on"),
    ],
    ids=["bad-pem", "mismatched-key", "expired"],
)
async def test_a_bad_certificate_is_refused_and_the_old_one_still_served(
    site: Site, make: Any, message: str
) -> None:
    before = site.stack.reloads()
    current = await site.served_serial("a.test")
    stored = (site.stack.state_dir / "certs" / "a.pem").read_text()
    status, body = site.put_certificate("a", make(site.ca, site.issued["a"]))
    assert status == 400, body
    assert body["problems"][0]["field"] == "pem" and message in body["problems"][0]["message"]
    assert await site.served_serial("a.test") == current
    assert (site.stack.state_dir / "certs" / "a.pem").read_text() == stored
    assert site.stack.reloads() == before


def test_a_certificate_a_gateway_uses_cannot_be_deleted(site: Site) -> None:
    response = site.stack.request("DELETE", "/api/v1/certificates/b")
    assert response.status == 409, response.body
    assert (site.stack.state_dir / "certs" / "b.pem").exists()


def test_a_gateway_naming_a_missing_certificate_is_refused_naming_the_field(
    site: Site, backends: BackendProcess
) -> None:
    before = site.stack.haproxy_snapshot(), site.stack.reloads()
    gateway = {
        "bind": f"127.0.0.1:{free_port()}",
        "tls": {"certificates": ["nope"]},
        "routes": {"stable": {"instances": addresses(backends, "stable")}},
    }
    response = site.stack.request("PUT", "/api/v1/gateways/ghost", gateway)
    assert response.status == 400, response.body
    assert response.body["problems"][0]["field"] == "gateways.ghost.tls.certificates"
    bad = {**gateway, "tls": {"certificates": ["a"], "ciphersuites": "TLS_AES_128_GCM_SHA256\n"}}
    response = site.stack.request("PUT", "/api/v1/gateways/ghost", bad)
    assert response.status == 400, response.body
    assert response.body["problems"][0]["field"].endswith("tls.ciphersuites")
    # a PEM file by path only from a directory allowed by name: no probing of other files
    for path in ("/etc/shadow", "/etc/ssl/private/x.pem", "/nonexistent/x.pem"):
        by_path = {**gateway, "tls": {"certificates": [path]}}
        response = site.stack.request("PUT", "/api/v1/gateways/ghost", by_path)
        assert response.status == 400, response.body
        problem = response.body["problems"][0]
        assert problem["field"] == "gateways.ghost.tls.certificates"
        assert "--allow-cert-path" in problem["message"] and "exist" not in problem["message"]
    assert (site.stack.haproxy_snapshot(), site.stack.reloads()) == before


async def test_a_renewed_certificate_is_served_at_once_with_no_reload_and_no_failure(
    site: Site,
) -> None:
    before = site.stack.reloads()
    renewed = site.ca.issue("a.test", key="rsa2048")
    async with SteadyLoad(
        site.url,
        rate=80,
        tls=site.trust(),
        server_hostname="a.test",
        headers={"Host": "a.test"},
        new_connection_each=True,
    ) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 80)
        status, body = await asyncio.to_thread(site.put_certificate, "a", renewed.pem)
        answered = time.monotonic()
        assert status == 200 and body["live"] == "replaced", body
        assert await site.served_serial("a.test") == int(renewed.cert.serial_number)
        await load.wait_until(lambda r: sum(1 for o in r.outcomes if o.sent_at > answered) >= 80)
    load.report.assert_no_failures(min_requests=160)
    assert site.stack.reloads() == before, "a renewal must not reload HAProxy"
    site.issued["a"] = renewed
    metrics = site.stack.request("GET", "/metrics").body
    series = 'weighbridge_certificate_expiry_timestamp_seconds{certificate="a"} '
    [value] = [line[len(series) :] for line in metrics.splitlines() if line.startswith(series)]
    assert float(value) == renewed.cert.not_valid_after_utc.timestamp()


async def test_a_new_name_in_a_renewed_certificate_is_answered_with_no_reload(site: Site) -> None:
    """SNI names come from the certificates (no filters in the crt-lists): a renewal that adds
    a name makes HAProxy answer it at once."""
    before = site.stack.reloads()
    assert await site.served_serial("new.a.test") == site.serial("b")  # the bind's default
    renewed = site.ca.issue("a.test", "new.a.test")
    status, body = site.put_certificate("a", renewed.pem)
    assert status == 200 and body["live"] == "replaced", body
    site.issued["a"] = renewed
    assert await site.served_serial("new.a.test") == site.serial("a")
    assert await site.served_serial("a.test") == site.serial("a")
    assert site.stack.reloads() == before
