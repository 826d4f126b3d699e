"""PEM bundles (certificate + private key + optional chain): parsed, checked, made canonical.

`parse_bundle` is what an upload goes through: everything HAProxy would refuse at commit
time, or that would break clients, is refused here first with a message naming the field,
so a bad upload never reaches HAProxy. The canonical text (leaf, chain, key; no comments,
no empty lines) is what is stored and sent: an empty line would end a Runtime API payload.
Messages describe the problem, never quote the input.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from controller.errors import InvalidInput, TooLarge

MAX_PEM_BYTES = 64 * 1024
"""A leaf, a few intermediates and an RSA-8192 key fit in a quarter of this."""

MAX_CHAIN = 8
RSA_MIN_BITS, RSA_MAX_BITS = 2048, 8192
EC_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
"""What HAProxy and every current client accept; smaller RSA keys are refused by browsers."""

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----\n([A-Za-z0-9+/=\n]*?)\n?-----END \1-----")
_IGNORED_BLOCKS = frozenset({"EC PARAMETERS"})  # written by `openssl ecparam -genkey`

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What may be shown of a certificate: never anything of its key."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    serial: str  # upper-case hex, as `show ssl cert` prints it
    not_before: dt.datetime
    not_after: dt.datetime
    sha256_fingerprint: str  # lower-case hex
    sha1_fingerprint: str  # upper-case hex: what `show ssl cert` prints, to compare with it
    key_type: str  # "RSA2048", "EC256" ... as HAProxy names them
    chain_length: int

    def as_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "sha256_fingerprint": self.sha256_fingerprint,
            "key_type": self.key_type,
            "chain_length": self.chain_length,
        }


@dataclass(frozen=True, slots=True)
class CertificateBundle:
    """A checked bundle and its canonical PEM parts."""

    info: CertificateInfo
    certificates_pem: str  # leaf then chain, no trailing newline
    key_pem: str  # PKCS#8, unencrypted, no trailing newline

    @property
    def pem(self) -> str:
        """The file HAProxy loads: certificates, then the key."""
        return f"{self.certificates_pem}\n{self.key_pem}\n"


def _refuse(message: str, field: str = "pem") -> InvalidInput:
    return InvalidInput.for_field(field, message)


def _blocks(text: str, field: str) -> list[tuple[str, bytes]]:
    """The PEM blocks, in order; anything but whitespace between them is refused."""
    if not text.isascii():
        raise _refuse("must be ASCII PEM text", field)
    text = text.replace("\r\n", "\n")
    found: list[tuple[str, bytes]] = []
    position = 0
    for match in _BLOCK.finditer(text):
        if text[position : match.start()].strip():
            raise _refuse("has text outside PEM blocks (send only the BEGIN/END blocks)", field)
        found.append((match.group(1), match.group(0).encode()))
        position = match.end()
    if text[position:].strip():
        raise _refuse("has text outside PEM blocks, or a block that is cut or malformed", field)
    if not found:
        raise _refuse("contains no PEM block", field)
    return found


def _key_type(key: PrivateKey, field: str) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise _refuse(
                f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, "
                f"this one has {key.key_size}",
                field,
            )
        return f"RSA{key.key_size}"
    if key.curve.name not in EC_CURVES:
        raise _refuse(f"EC keys must use P-256, P-384 or P-521, not {key.curve.name}", field)
    return f"EC{key.curve.key_size}"


def _load_key(block: bytes, field: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except TypeError:
        raise _refuse("the private key is encrypted: HAProxy needs it unencrypted", field) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _refuse("the private key block cannot be read", field) from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise _refuse("only RSA and ECDSA keys are supported", field)
    return key


def _load_certificate(block: bytes, index: int, field: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(block)
    except ValueError:
        what = "the certificate" if index == 0 else f"chain certificate {index}"
        raise _refuse(f"{what} cannot be read", field) from None


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    value = extension.value
    assert isinstance(value, x509.SubjectAlternativeName)
    dns = [f"DNS:{name}" for name in value.get_values_for_type(x509.DNSName)]
    ips = [f"IP:{ip}" for ip in value.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def _utc(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_dates(cert: x509.Certificate, what: str, now: dt.datetime, field: str) -> None:
    if now < cert.not_valid_before_utc:
        raise _refuse(f"{what} is not valid before {_utc(cert.not_valid_before_utc)}", field)
    if now >= cert.not_valid_after_utc:
        raise _refuse(f"{what} expired on {_utc(cert.not_valid_after_utc)}", field)


def _same_public_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


def describe(
    leaf: x509.Certificate, key: PrivateKey, chain_length: int, field: str = "pem"
) -> CertificateInfo:
    """What a listing shows; the key only contributes its type and size."""
    return CertificateInfo(
        subject=_name(leaf.subject),
        issuer=_name(leaf.issuer),
        sans=_sans(leaf),
        serial=f"{leaf.serial_number:X}",
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sha256_fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        sha1_fingerprint=leaf.fingerprint(hashes.SHA1()).hex().upper(),  # to compare with HAProxy
        key_type=_key_type(key, field),
        chain_length=chain_length,
    )


def parse_bundle(
    text: object, *, now: dt.datetime | None = None, field: str = "pem", check_dates: bool = True
) -> CertificateBundle:
    """Parse and check a bundle; InvalidInput (naming `field`) or TooLarge if refused.

    Refused: no or several keys, no certificate, an encrypted or unsupported key, a key
    that does not match the certificate, a chain out of order or longer than MAX_CHAIN,
    and (with `check_dates`) a leaf or chain certificate expired or not yet valid.
    `check_dates=False` reads back a stored bundle, which may have expired since.
    """
    if not isinstance(text, str):
        raise _refuse("must be a string of PEM text", field)
    if len(text.encode()) > MAX_PEM_BYTES:
        raise TooLarge(
            f"{field} is larger than {MAX_PEM_BYTES} bytes",
            [{"field": field, "message": f"larger than {MAX_PEM_BYTES} bytes"}],
        )
    blocks = _blocks(text, field)
    keys = [block for kind, block in blocks if kind.endswith("PRIVATE KEY")]
    certificates = [block for kind, block in blocks if kind == "CERTIFICATE"]
    other = {kind for kind, _ in blocks if not kind.endswith("PRIVATE KEY")}
    other -= _IGNORED_BLOCKS | {"CERTIFICATE"}
    if other:
        raise _refuse(f"has unsupported PEM blocks: {', '.join(sorted(other))}", field)
    if len(keys) != 1:
        raise _refuse("must hold exactly one private key" if keys else "has no private key", field)
    if not certificates:
        raise _refuse("has no certificate", field)
    if len(certificates) > 1 + MAX_CHAIN:
        raise _refuse(f"has more than {MAX_CHAIN} chain certificates", field)
    key = _load_key(keys[0], field)
    parsed = [_load_certificate(block, i, field) for i, block in enumerate(certificates)]
    leaf, chain = parsed[0], parsed[1:]
    if not _same_public_key(leaf, key):
        raise _refuse("the private key does not match the certificate", field)
    for index, cert in enumerate(chain, start=1):
        if cert.subject != parsed[index - 1].issuer:
            raise _refuse(
                f"chain certificate {index} did not issue the certificate before it "
                "(order: certificate, then its issuer, then that one's issuer ...)",
                field,
            )
    if check_dates:
        moment = now or dt.datetime.now(dt.UTC)
        _check_dates(leaf, "the certificate", moment, field)
        for index, cert in enumerate(chain, start=1):
            _check_dates(cert, f"chain certificate {index}", moment, field)
    pem = serialization.Encoding.PEM
    certificates_pem = "".join(cert.public_bytes(pem).decode() for cert in parsed).strip("\n")
    key_pem = (
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
        .strip("\n")
    )
    return CertificateBundle(describe(leaf, key, len(chain), field), certificates_pem, key_pem)
