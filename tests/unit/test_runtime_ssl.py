"""Runtime API certificate and crt-list commands: what they send, and their replies parsed.

Reply texts are HAProxy 2.6.12's, captured with `set severity-output number`.
"""

from __future__ import annotations

import dataclasses

import pytest

from controller.runtime import commands as c
from controller.runtime.errors import InvalidArgument
from controller.runtime.parse import (
    is_error_reply,
    parse_crt_list,
    parse_ssl_cert,
    parse_ssl_cert_list,
    ssl_commit_succeeded,
    ssl_transaction_owner,
    strip_payload_prompts,
)

CERT = "/s/certs/shop.pem"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def test_commands_text_and_payload() -> None:
    assert c.show_ssl_cert().text == "show ssl cert"
    assert c.show_ssl_cert(CERT, transaction=True).text == f"show ssl cert *{CERT}"
    assert c.new_ssl_cert(CERT).text == f"new ssl cert {CERT}"
    assert c.commit_ssl_cert(CERT).text == f"commit ssl cert {CERT}"
    assert c.abort_ssl_cert(CERT).text == f"abort ssl cert {CERT}"
    assert c.del_ssl_cert(CERT).text == f"del ssl cert {CERT}"
    assert c.show_ssl_crt_list().text == "show ssl crt-list"
    assert c.show_ssl_crt_list("/s/l").text == "show ssl crt-list -n /s/l"
    assert c.del_ssl_crt_list("/s/l", CERT, 3).text == f"del ssl crt-list /s/l {CERT}:3"
    set_cert = c.set_ssl_cert(CERT, PEM)
    assert set_cert.wire == f"set ssl cert {CERT} <<\n{PEM}\n"
    assert set_cert.kind is c.CommandKind.WRITE and not set_cert.idempotent
    assert c.set_ssl_cert(CERT, PEM, ".key").text == f"set ssl cert {CERT}.key"
    add = c.add_ssl_crt_list("/s/l", CERT, "*.shop.example")
    assert add.wire == f"add ssl crt-list /s/l <<\n{CERT} *.shop.example\n"
    assert c.show_ssl_cert().wire == "show ssl cert"
    # the final newline the client adds
    assert c.wire_size(set_cert) == len(set_cert.wire) + 1


@pytest.mark.parametrize(
    "build",
    [
        lambda: c.new_ssl_cert("relative.pem"),
        lambda: c.new_ssl_cert("/s/../etc/x.pem"),
        lambda: c.new_ssl_cert("/s/a b.pem"),
        lambda: c.new_ssl_cert("/s/a.pem;show info"),
        lambda: c.new_ssl_cert("/s/a.pem\n"),
        lambda: c.show_ssl_cert(transaction=True),
        lambda: c.set_ssl_cert(CERT, PEM, ".issuer"),
        lambda: c.set_ssl_cert(CERT, ""),
        lambda: c.set_ssl_cert(CERT, PEM + "\n"),  # an empty line would end the payload early
        lambda: c.set_ssl_cert(CERT, PEM.replace("MIIB", "MIIB\n\nshow info")),
        lambda: c.set_ssl_cert(CERT, PEM.replace("MIIB", "MI IB")),
        lambda: c.add_ssl_crt_list("/s/l", CERT, "a.example [verify none]"),
        lambda: c.add_ssl_crt_list("/s/l", CERT, "a.example\n/s/other.pem"),
        lambda: c.add_ssl_crt_list("/s/l", CERT, "A.example"),
        lambda: c.add_ssl_crt_list("/s/l", CERT, "x" * 254),
        lambda: c.del_ssl_crt_list("/s/l", CERT, 0),
    ],
)
def test_unsafe_arguments_never_make_a_command(build: object) -> None:
    with pytest.raises(InvalidArgument):
        build()  # type: ignore[operator]


def test_a_payload_cannot_be_smuggled_in_afterwards() -> None:
    cmd = c.set_ssl_cert(CERT, PEM)
    with pytest.raises(InvalidArgument):
        dataclasses.replace(cmd, payload="A\n\nshow info")
    with pytest.raises(InvalidArgument):
        dataclasses.replace(cmd, text="show ssl cert *a *b;x")


def test_the_cli_buffer_bound_is_strict() -> None:
    """16,384 bytes on the wire stalls 2.6.12's CLI and kills its worker: one byte less fits."""
    head = len(f"set ssl cert {CERT} <<\n") + 2  # and the payload's closing "\n\n"
    body_len = c.CLI_BUFFER - 1 - head
    lines = ["A" * 64] * (body_len // 65)
    rest = body_len - 65 * len(lines)
    payload = "\n".join([*lines, "A" * rest]) if rest else "\n".join(lines)
    fits = c.set_ssl_cert(CERT, payload)
    assert c.wire_size(fits) == c.CLI_BUFFER - 1 and c.fits_cli_buffer(fits)
    too_big = c.set_ssl_cert(CERT, payload + "A")
    assert c.wire_size(too_big) == c.CLI_BUFFER and not c.fits_cli_buffer(too_big)
    assert c.fits_cli_buffer(too_big, bufsize=32768)


def test_payload_prompts_are_stripped() -> None:
    message = "[5]: Transaction created for certificate /s/certs/shop.pem!"
    assert strip_payload_prompts("+ + + + " + message) == message
    assert strip_payload_prompts("# filename") == "# filename"
    refused = strip_payload_prompts(
        "+ + + + [3]: unable to load certificate from file '/s/certs/shop.pem'.\n"
        "Can't load the payload\nCan't update /s/certs/shop.pem!"
    )
    assert is_error_reply(refused)


def test_transaction_replies() -> None:
    created = "[5]: Transaction created for certificate /s/certs/a.pem!"
    hijacked = "[5]: Transaction updated for certificate /s/certs/a.pem!"  # after `set … b.pem`
    assert ssl_transaction_owner(created) == "/s/certs/a.pem"
    assert ssl_transaction_owner(hijacked) == "/s/certs/a.pem"
    assert ssl_transaction_owner("[3]: No ongoing transaction!") is None
    assert ssl_commit_succeeded("Committing /s/certs/a.pem.\nSuccess!")
    assert ssl_commit_succeeded("Committing /s/certs/c.pem\nSuccess!")
    failed = "[3]: No ongoing transaction! !\nCan't commit /s/certs/a.pem!"
    assert not ssl_commit_succeeded(failed) and is_error_reply(failed)
    for error in (
        "[3]: Certificate '/s/certs/d.pem' already exists!",
        "[3]: Can't remove the certificate: certificate '/s/certs/a.pem' in use, can't be deleted!",
        "[3]: Can't edit the crt-list: certificate '/s/certs/zz.pem' does not exist!",
        "[3]: Can't display the certificate: Not found or the certificate is a bundle!",
        "[3]: didn't find the specified filename",
    ):
        assert is_error_reply(error), error
    for fine in (
        "[5]: New empty certificate store '/s/certs/d.pem'!",
        "[5]: Certificate '/s/certs/d.pem' deleted!",
        "[5]: Entry '/s/certs/c.pem' deleted in crtlist '/s/l'!",
        "Inserting certificate '/s/certs/c.pem' in crt-list '/s/l'.\nSuccess!",
    ):
        assert not is_error_reply(fine), fine


def test_show_ssl_cert_list_and_details() -> None:
    listing = parse_ssl_cert_list(
        "# transaction\n*/s/certs/a.pem\n# filename\n/s/certs/a.pem\n/s/certs/b.pem"
    )
    assert listing.transactions == ("/s/certs/a.pem",)
    assert listing.files == ("/s/certs/a.pem", "/s/certs/b.pem")
    assert parse_ssl_cert_list("# filename\n/s/certs/a.pem").transactions == ()
    details = parse_ssl_cert(
        "Filename: */s/certs/a.pem\nStatus: Unused\n"
        "Serial: 1689E90A8D2ACF3A9DAC1F4139DD7919AAA02D91\n"
        "notBefore: Nov 27 10:14:00 2026 GMT\nnotAfter: Dec  8 10:14:00 2026 GMT\n"
        "Subject Alternative Name: DNS:a.test\nAlgorithm: RSA2048\n"
        "SHA1 FingerPrint: AE1D847712206D65667F1FAB1E78EC1A471474B9\nSubject: /CN=a.test\n"
        "Issuer: /CN=Test CA\nOCSP Response Key: "
    )
    assert details.filename == "/s/certs/a.pem" and details.status == "Unused"
    assert details.sha1_fingerprint == "AE1D847712206D65667F1FAB1E78EC1A471474B9"
    assert details.not_after == "Dec  8 10:14:00 2026 GMT" and details.subject == "/CN=a.test"
    with pytest.raises(ValueError):
        parse_ssl_cert("[3]: Can't display the certificate: Not found or the certificate is ...")


def test_show_ssl_crt_list() -> None:
    lines = parse_crt_list(
        "# /s/l\n/s/certs/a.pem:1\n/s/certs/b.pem:2 b.test\n"
        "/s/certs/c.pem:3 [verify none allow-0rtt] c.test !x.test\n"
    )
    assert [(x.cert, x.line, x.options, x.filters) for x in lines] == [
        ("/s/certs/a.pem", 1, "", ()),
        ("/s/certs/b.pem", 2, "", ("b.test",)),
        ("/s/certs/c.pem", 3, "verify none allow-0rtt", ("c.test", "!x.test")),
    ]
    assert parse_crt_list("# /s/l\n/s/certs/a.pem b.test")[0].line is None
