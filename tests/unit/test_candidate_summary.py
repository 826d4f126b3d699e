"""`haproxy -c` output summarised for the client: where, our line, HAProxy's reason, and
nothing HAProxy read from a file or the environment (fed real 2.6.12 output lines)."""

from __future__ import annotations

import pytest

from controller.candidate import REDACTED, haproxy_env, summarise

CANDIDATE = "\n".join(
    [
        "# weighbridge-structure: 0123",
        "frontend wb.shop",
        "    bind 127.0.0.1:8080",
        "    acl wb_g0r0c0 req.hdr(x) -m ip -f /etc/passwd",
        '    bind "::1%$WEIGHBRIDGE_API_TOKEN":8081',
    ]
)
FILE = "/state/candidate.x/haproxy.cfg"


def alert(text: str) -> str:
    return f"[ALERT]    (8348) : config : {text}"


def test_a_file_read_by_an_acl_is_not_echoed() -> None:
    output = "\n".join(
        [
            "[NOTICE]   (8348) : haproxy version is 2.6.12-1+deb12u4",
            alert(
                f"parsing [{FILE}:4] : error detected while parsing ACL 'wb_g0r0c0' : "
                "'root:x:0:0:root:/root:/bin/bash' is not a valid IPv4 or IPv6 address at "
                "line 1 of file '/etc/passwd'."
            ),
            alert(f"Error(s) found in configuration file : {FILE}"),
            "[ALERT]    (8348) : config : Fatal errors found in configuration.",
        ]
    )
    summary = summarise(output, CANDIDATE, FILE)
    assert "root:x" not in summary
    assert summary == (
        "line 4: acl wb_g0r0c0 req.hdr(x) -m ip -f /etc/passwd — error detected while parsing "
        f"ACL 'wb_g0r0c0' : {REDACTED} is not a valid IPv4 or IPv6 address at line 1 of file "
        "'/etc/passwd'."
    )


def test_an_expanded_environment_variable_is_not_echoed() -> None:
    output = alert(f"parsing [{FILE}:5] : 'bind' : invalid address: ':' in '::1%s3cr3t-token'")
    summary = summarise(output, CANDIDATE, FILE)
    assert "s3cr3t" not in summary
    assert summary.startswith('line 5: bind "::1%$WEIGHBRIDGE_API_TOKEN":8081 — ')


@pytest.mark.parametrize(
    "reason",
    [
        "unterminated 's3cr3t",
        'odd "s3cr3t',
        "'ok' then 's3cr3t",
    ],
)
def test_an_unbalanced_quote_hides_everything_after_it(reason: str) -> None:
    summary = summarise(alert(f"parsing [{FILE}:3] : {reason}"), CANDIDATE, FILE)
    assert "s3cr3t" not in summary and summary.endswith(REDACTED)


def test_other_files_are_named_by_line_with_every_quoted_value_hidden() -> None:
    output = alert("parsing [/etc/haproxy/haproxy.cfg:12] : unknown keyword 'sekrit' in 'x'")
    assert summarise(output, CANDIDATE, FILE) == (
        f"line 12 of /etc/haproxy/haproxy.cfg: unknown keyword {REDACTED} in {REDACTED}"
    )


def test_scratch_map_paths_are_shown_as_the_live_ones() -> None:
    output = alert("parsing [/state/candidate.x/shop.map:2] : bad key")
    renamed = summarise(output, CANDIDATE, FILE, rename={"/state/candidate.x/shop.map": "/m"})
    assert renamed == "line 2 of /m: bad key"


def test_alerts_without_a_location_keep_only_what_the_candidate_says() -> None:
    output = alert("Proxy 'wb.shop': unable to find 'secret-backend'.")
    assert summarise(output, CANDIDATE, FILE) == (f"Proxy 'wb.shop': unable to find {REDACTED}.")


def test_no_alert_at_all_still_says_it_was_refused() -> None:
    assert "refused" in summarise("", CANDIDATE, FILE)


def test_haproxy_sees_only_the_variables_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_API_TOKEN", "s3cr3t")
    monkeypatch.setenv("CERT_DIR", "/etc/certs")
    assert haproxy_env(()) == {}
    assert haproxy_env(("CERT_DIR", "ABSENT")) == {"CERT_DIR": "/etc/certs"}


def test_angle_quoted_values_are_hidden_too() -> None:
    output = alert(f"parsing [{FILE}:4] : out of memory loading <root:x:0:0> from </etc/passwd>")
    assert summarise(output, CANDIDATE, FILE).endswith(
        f"out of memory loading {REDACTED} from </etc/passwd>"
    )
