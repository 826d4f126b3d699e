"""Certificate bundles: what an upload must be, and the messages that say why it is not."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from controller.errors import InvalidInput, TooLarge
from controller.tls.pem import MAX_PEM_BYTES, parse_bundle
from tests.support.certs import Authority, cert_pem, key_pem, new_key


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


def refusal(text: object, **kwargs: object) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_bundle(text, **kwargs)  # type: ignore[arg-type]
    [problem] = info.value.problems
    assert problem["field"] == kwargs.get("field", "pem")
    return problem["message"]


def test_a_good_bundle_is_described_and_made_canonical(ca: Authority) -> None:
    leaf = ca.issue("shop.example", "www.shop.example")
    messy = "\r\n\n" + leaf.pem.replace("\n", "\r\n") + "\n\n"
    bundle = parse_bundle(messy)
    info = bundle.info
    assert info.subject == "CN=shop.example" and info.issuer == "CN=Weighbridge Test CA"
    assert info.sans == ("DNS:shop.example", "DNS:www.shop.example")
    assert info.serial == leaf.serial and info.sha256_fingerprint == leaf.sha256
    assert info.key_type == "EC256" and info.chain_length == 0
    assert info.not_after == leaf.cert.not_valid_after_utc
    assert "\n\n" not in bundle.pem and "\r" not in bundle.pem
    assert bundle.pem == cert_pem(leaf.cert) + key_pem(leaf.key)
    assert "PRIVATE" not in str(info.as_json())


def test_chain_order_is_kept_and_checked() -> None:
    ca = Authority(intermediate=True)
    leaf = ca.issue("api.example", key="rsa2048")
    bundle = parse_bundle(leaf.pem)
    assert bundle.info.chain_length == 1 and bundle.info.key_type == "RSA2048"
    assert bundle.certificates_pem.count("BEGIN CERTIFICATE") == 2
    swapped = cert_pem(ca.chain[0]) + cert_pem(leaf.cert) + key_pem(leaf.key)
    # the intermediate comes first: its key is not the certificate's
    assert refusal(swapped) == "the private key does not match the certificate"
    unrelated = cert_pem(leaf.cert) + cert_pem(Authority().cert) + key_pem(leaf.key)
    assert refusal(unrelated).startswith("chain certificate 1 did not issue")


def test_the_key_must_match(ca: Authority) -> None:
    one, other = ca.issue("a.example"), ca.issue("a.example")
    text = cert_pem(one.cert) + key_pem(other.key)
    assert refusal(text) == "the private key does not match the certificate"


@pytest.mark.parametrize(
    ("days", "starts_in", "message"),
    [(1, -2, "the certificate expired on "), (30, 1, "the certificate is not valid before ")],
)
def test_dates_are_checked(ca: Authority, days: float, starts_in: float, message: str) -> None:
    leaf = ca.issue("old.example", days=days, starts_in=starts_in)
    assert refusal(leaf.pem).startswith(message)
    # a stored bundle is read back whatever its dates
    assert parse_bundle(leaf.pem, check_dates=False).info.subject == "CN=old.example"


def test_expiry_is_judged_at_the_given_moment(ca: Authority) -> None:
    leaf = ca.issue("soon.example", days=10)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
    assert refusal(leaf.pem, now=later).startswith("the certificate expired on ")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("rsa1024", "RSA keys must have 2048 to 8192 bits, this one has 1024"),
        ("ec-secp256k1", "EC keys must use P-256, P-384 or P-521, not secp256k1"),
    ],
)
def test_weak_or_exotic_keys_are_refused(ca: Authority, key: str, message: str) -> None:
    assert refusal(ca.issue("k.example", key=key).pem) == message


def test_an_encrypted_key_is_refused(ca: Authority) -> None:
    leaf = ca.issue("enc.example")
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    message = refusal(cert_pem(leaf.cert) + encrypted)
    assert message == "the private key is encrypted: HAProxy needs it unencrypted"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "contains no PEM block"),
        ("hello", "has text outside PEM blocks, or a block that is cut or malformed"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n", "has text outside PEM blocks, or a block"),
        ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "has text outside"),
        ("caf\u00e9", "must be ASCII PEM text"),
        (42, "must be a string of PEM text"),
    ],
)
def test_not_pem(text: object, message: str) -> None:
    assert refusal(text).startswith(message)


def test_blocks_are_counted(ca: Authority) -> None:
    leaf = ca.issue("b.example")
    cert, key = cert_pem(leaf.cert), key_pem(leaf.key)
    assert refusal(cert) == "has no private key"
    assert refusal(key) == "has no certificate"
    assert refusal(cert + key + key_pem(new_key())) == "must hold exactly one private key"
    assert refusal("Subject: x\n" + cert + key).startswith("has text outside PEM blocks")
    assert refusal(cert + "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n" + key) == (
        "has unsupported PEM blocks: X509 CRL"
    )
    garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    assert refusal(garbage + key) == "the certificate cannot be read"
    assert refusal(cert + garbage + key) == "chain certificate 1 cannot be read"


def test_the_field_is_named_and_the_input_never_echoed(ca: Authority) -> None:
    leaf = ca.issue("f.example")
    with pytest.raises(InvalidInput) as info:
        parse_bundle(cert_pem(leaf.cert) + "secret-looking-text\n" + key_pem(leaf.key))
    assert "secret-looking-text" not in str(info.value) + str(info.value.problems)
    assert refusal(leaf.pem, field="certificate", now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))


def test_size_is_bounded() -> None:
    with pytest.raises(TooLarge) as info:
        parse_bundle("x" * (MAX_PEM_BYTES + 1))
    message = f"larger than {MAX_PEM_BYTES} bytes"
    assert info.value.problems == [{"field": "pem", "message": message}]
