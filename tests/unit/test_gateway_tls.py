"""TLS, protocols and SNI on gateways and routes: validation and rendering (pure).

The integration tests (test_gateway_tls.py, test_gateway_protocols.py) show HAProxy doing
it; these pin what is refused, and the lines the model becomes.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.cli import build_parser
from controller.desired import Desired
from controller.errors import InvalidInput
from controller.model import Config, Gateway, validation_problems
from controller.plan import Observed, plan_changes, render_plan
from controller.render import RenderSettings, Section

CERTS = "/state/certs"
SETTINGS = RenderSettings(admin_socket="/state/admin.sock", cert_dir=CERTS, cert_paths=("/pki",))
NOTHING = Observed(None, {}, {})


def gateway(**fields: Any) -> dict[str, Any]:
    routes = fields.pop("routes", {"app": {"instances": ["127.0.0.1:9000"]}})
    return {"bind": "127.0.0.1:8443", "routes": routes, **fields}


def refused(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        Gateway.model_validate(data)
    return validation_problems(caught.value)[0]


def rendered(gateways: dict[str, dict[str, Any]]) -> str:
    config = Config.model_validate({"gateways": gateways})
    return render_plan(plan_changes(config, NOTHING, "/state/maps", SETTINGS), SETTINGS)


@pytest.mark.parametrize(
    ("tls", "field", "message"),
    [
        ({"certificates": []}, "tls.certificates", "at least 1"),
        ({"certificates": ["a", "a"]}, "tls", "listed twice"),
        ({"certificates": ["a"], "default": "b"}, "tls", "not one of the certificates"),
        ({"certificates": ["../a"]}, "tls.certificates.0", "neither a certificate name"),
        ({"certificates": ["/etc/x.pem\n"]}, "tls.certificates.0", "neither"),
        ({"certificates": ["a"], "ciphers": "NOT-A-CIPHER"}, "tls.ciphers", "knows no cipher"),
        ({"certificates": ["a"], "ciphers": "ECDHE-RSA-AES128-GCM-SHA256\n"}, "tls.ciphers", ""),
        ({"certificates": ["a"], "ciphers": "AES128 alpn h2"}, "tls.ciphers", "not a cipher"),
        ({"certificates": ["a"], "ciphersuites": "TLS_FAKE_SHA1"}, "tls.ciphersuites", "unknown"),
        (
            {"certificates": ["a"], "ciphersuites": "TLS_AES_128_GCM_SHA256\n"},
            "tls.ciphersuites",
            "not a TLS 1.3 suite list",
        ),
        ({"certificates": ["a"], "min_version": "TLSv1.0"}, "tls.min_version", ""),
        ({"certificates": ["a"], "alpn": ["h3"]}, "tls.alpn.0", ""),
        ({"certificates": ["a"], "redirect_http": "example.com:80"}, "tls.redirect_http", ""),
    ],
)
def test_bad_tls_settings_are_refused_naming_the_field(
    tls: dict[str, Any], field: str, message: str
) -> None:
    problem = refused(gateway(tls=tls))
    assert problem["field"] == field and message in problem["message"], problem


def test_good_cipher_lists_pass_as_written() -> None:
    tls = {
        "certificates": ["a", "/etc/ssl/b.pem"],
        "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:!aNULL:@STRENGTH",
        "ciphersuites": "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
    }
    parsed = Gateway.model_validate(gateway(tls=tls)).tls
    assert parsed is not None and parsed.ciphers == tls["ciphers"]


@pytest.mark.parametrize(
    ("route", "field", "message"),
    [
        ({"protocol": "h2"}, "routes.app", "protocol h2 is HTTP/2 over TLS"),
        ({"protocol": "h3"}, "routes.app.protocol", ""),
        ({"tls": {"verify": "ca.pem"}}, "routes.app.tls.verify", "absolute path"),
        ({"tls": {"verify": "/ca.pem verify none"}}, "routes.app.tls.verify", ""),
        ({"tls": {"verify": "None"}}, "routes.app.tls.verify", ""),  # by its exact name only
        ({"tls": {"sni": "a.test\n"}}, "routes.app.tls.sni", "lowercase DNS name"),
    ],
)
def test_bad_route_protocols_are_refused(route: dict[str, Any], field: str, message: str) -> None:
    problem = refused(gateway(routes={"app": {"instances": ["127.0.0.1:1"], **route}}))
    assert problem["field"] == field and message in problem["message"], problem


@pytest.mark.parametrize(
    ("route", "options"),
    [
        ({}, ""),
        ({"protocol": "h2c"}, "proto h2"),
        ({"tls": {}}, "ssl verify required ca-file @system-ca"),
        (
            {"protocol": "h2", "tls": {"verify": "/pki/ca.pem", "sni": "api.test"}},
            "ssl verify required ca-file /pki/ca.pem sni str(api.test) verifyhost api.test "
            "alpn h2",
        ),
        ({"tls": {"verify": "none", "sni": "x.test"}}, "ssl verify none sni str(x.test)"),
    ],
)
def test_route_protocols_become_server_options(route: dict[str, Any], options: str) -> None:
    parsed = Gateway.model_validate(gateway(routes={"app": {**route}}))
    assert parsed.routes["app"].server_options == options
    text = rendered({"g": gateway(routes={"app": {"instances": ["127.0.0.1:9"], **route}})})
    slot = next(line for line in text.splitlines() if line.startswith("    server s1 127.0.0.1:9"))
    assert slot.endswith(f" {options}" if options else "127.0.0.1:9")


@pytest.mark.parametrize("path", ["/ca.pem", "/pkix/ca.pem", "/state/certs/ca.pem"])
def test_files_by_path_only_from_allowed_directories(path: str) -> None:
    """`--allow-cert-path /pki` allows /pki/… only: not a sibling sharing its prefix."""
    routes = {"app": {"instances": ["127.0.0.1:9"], "tls": {"verify": path}}}
    with pytest.raises(InvalidInput) as refused_path:
        rendered({"g": gateway(routes=routes)})
    assert "--allow-cert-path" in str(refused_path.value)


def test_tcp_gateways_pass_tls_through_and_speak_no_http_protocol() -> None:
    tcp = gateway(mode="tcp", tls={"certificates": ["a"]})
    assert "passes TLS through" in refused(tcp)["message"]
    h2c = gateway(mode="tcp", routes={"app": {"protocol": "h2c"}})
    assert "protocol h2c needs http" in refused(h2c)["message"]


def test_two_gateways_on_a_tls_bind_share_one_bind_line_the_default_first_by_name() -> None:
    tls = {"redirect_http": "127.0.0.1:8080"}
    text = rendered(
        {
            "zed": gateway(
                virtual_hosts=["z.test"], tls={"certificates": ["z", "/pki/z.pem"], **tls}
            ),
            "abc": gateway(virtual_hosts=["a.test"], tls={"certificates": ["a"], **tls}),
        }
    )
    [bind] = [line for line in text.splitlines() if line.startswith("    bind 127.0.0.1:8443")]
    words = bind.split()
    lists = [w for w in words if w.endswith(".crt-list")]
    assert [w.split("/")[-1].split(".")[0] for w in lists] == ["abc", "zed"]
    assert all(w.startswith(f"{CERTS}/") for w in lists)
    assert words[2:3] == ["ssl"] and bind.endswith("ssl-min-ver TLSv1.2 alpn h2,http/1.1")
    redirect = text.split("frontend wb.redirect.8080.127-0-0-1\n", 1)[1].split("\n\n")[0]
    assert "    bind 127.0.0.1:8080" in redirect
    location = "https://%[req.hdr(host),regsub(:[0-9]+$,)]:8443%[capture.req.uri]"
    assert f"http-request redirect location {location} code 301" in redirect


def test_a_crt_list_has_one_name_and_only_its_default_is_structure() -> None:
    def section_of(certificates: list[str], default: str | None = None) -> Section:
        tls: dict[str, object] = {"certificates": certificates}
        if default:
            tls["default"] = default
        config = Config.model_validate({"gateways": {"g": gateway(tls=tls)}})
        plan = plan_changes(config, NOTHING, "/state/maps", SETTINGS)
        return plan.sections[0]

    first = section_of(["a", "/pki/b.pem"])
    assert first.layout.tls is not None
    assert first.layout.tls.crt_list == f"{CERTS}/g.crt-list"
    assert first.layout.tls.text == f"{CERTS}/a.pem\n/pki/b.pem\n"
    more = section_of(["a", "/pki/b.pem", "c"])
    fewer = section_of(["a"])
    assert more.layout.tls is not None and more.layout.tls.crt_list == first.layout.tls.crt_list
    # the other certificates change live: same structure; the default only with a reload
    assert first.fingerprint == more.fingerprint == fewer.fingerprint
    assert section_of(["a", "/pki/b.pem"], "/pki/b.pem").fingerprint != first.fingerprint


def test_shared_binds_must_agree_on_tls() -> None:
    a = Gateway.model_validate(gateway(virtual_hosts=["a.test"], tls={"certificates": ["a"]}))
    plain = Gateway.model_validate(gateway(virtual_hosts=["b.test"]))
    tls13 = Gateway.model_validate(
        gateway(virtual_hosts=["b.test"], tls={"certificates": ["b"], "min_version": "TLSv1.3"})
    )
    desired = Desired().with_gateway("a", a, 1)
    for other in (plain, tls13):
        with pytest.raises(InvalidInput) as caught:
            desired.with_gateway("b", other, 2)
        assert caught.value.problems[0]["field"] == "gateways.b.tls"
        with pytest.raises(ValidationError, match="not its tls settings"):
            Config.model_validate({"gateways": {"a": a.model_dump(), "b": other.model_dump()}})


def test_timeout_tunnel_is_rendered_in_the_gateway_s_backends() -> None:
    text = rendered({"ws": gateway(timeout_tunnel="1h")})
    assert text.count("    timeout tunnel 1h") >= 2  # its route's backend and the spare
    assert refused(gateway(timeout_tunnel="1h\n"))["field"] == "timeout_tunnel"
    assert refused(gateway(timeout_tunnel="0s"))["field"] == "timeout_tunnel"


def test_sni_conditions_read_the_hello_on_tcp_and_the_handshake_on_http() -> None:
    routes = {
        "a": {"weight": 0, "condition": "sni == a.test", "instances": ["127.0.0.1:1"]},
        "b": {"weight": 100, "instances": ["127.0.0.1:2"]},
    }
    tcp = rendered({"t": gateway(mode="tcp", routes=routes)})
    assert "    tcp-request inspect-delay 5s" in tcp
    assert "req.ssl_sni -m str -i -- 'a.test'" in tcp
    http = rendered({"h": gateway(routes=routes)})
    assert "ssl_fc_sni -m str -i -- 'a.test'" in http and "inspect-delay" not in http
    bad = {**routes, "a": {**routes["a"], "condition": "sni == 'a.test\nx'"}}
    assert refused(gateway(mode="tcp", routes=bad))["field"].startswith("routes.a")


def test_hard_stop_after_is_checked_whole_on_the_command_line() -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "--hard-stop-after", "10m"])
    assert args.hard_stop_after == "10m"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--hard-stop-after", "10m\n"])


def test_the_redirect_listener_is_no_gateway_s_bind() -> None:
    same = gateway(tls={"certificates": ["a"], "redirect_http": "127.0.0.1:8443"})
    assert "another address than bind" in refused(same)["message"]
    plain = Gateway.model_validate(gateway(bind="127.0.0.1:8080"))
    desired = Desired().with_gateway("web", plain, 1)
    tls = gateway(tls={"certificates": ["a"], "redirect_http": "127.0.0.1:8080"})
    with pytest.raises(InvalidInput) as caught:
        desired.check("shop", Gateway.model_validate(tls))
    assert caught.value.problems[0]["field"] == "gateways.shop.tls.redirect_http"


def test_tls_and_protocol_changes_are_described_as_structural() -> None:
    from controller.diff import diff_gateway

    before = Gateway.model_validate(gateway())
    after = Gateway.model_validate(
        gateway(
            timeout_tunnel="1h",
            tls={"certificates": ["a"]},
            routes={"app": {"instances": ["127.0.0.1:9000"], "protocol": "h2c"}},
        )
    )
    texts = {c.text: c.live for c in diff_gateway("g", before, after)}
    assert texts == {
        'g: tls set to {"certificates":["a"]}': False,
        "g: timeout_tunnel set to 1h": False,
        "g.app: protocol http1 → h2c": False,
    }
