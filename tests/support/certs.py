"""Certificates made in the test: a CA, leaves for given names, broken variants (no network)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PEM = serialization.Encoding.PEM


def new_key(kind: str = "ec256") -> Key:
    """`ec256`, `ec384`, `ec-secp256k1`, `rsa2048`, `rsa1024` ..."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    curve = {"ec256": ec.SECP256R1(), "ec384": ec.SECP384R1(), "ec-secp256k1": ec.SECP256K1()}
    return ec.generate_private_key(curve[kind])


def key_pem(key: Key) -> str:
    return key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def pem(self) -> str:
        """What HAProxy and the API take: leaf, chain, key."""
        return "".join(cert_pem(c) for c in [self.cert, *self.chain]) + key_pem(self.key)

    @property
    def serial(self) -> str:
        return f"{self.cert.serial_number:X}"

    @property
    def sha256(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


class Authority:
    """A test CA, optionally behind an intermediate (then leaves carry a chain)."""

    def __init__(self, name: str = "Weighbridge Test CA", *, intermediate: bool = False) -> None:
        self.key = new_key("ec256")
        now = dt.datetime.now(dt.UTC)
        self.cert = self._ca(_name(name), self.key, _name(name), self.key, now)
        self.chain: list[x509.Certificate] = []
        self.issuer_key, self.issuer_cert = self.key, self.cert
        if intermediate:
            key = new_key("ec256")
            middle = self._ca(_name(f"{name} Intermediate"), key, self.cert.subject, self.key, now)
            self.chain = [middle]
            self.issuer_key, self.issuer_cert = key, middle

    @staticmethod
    def _ca(
        subject: x509.Name, key: Key, issuer: x509.Name, signer: Key, now: dt.datetime
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return cert_pem(self.cert)

    def issue(
        self,
        *names: str,
        key: str = "ec256",
        days: float = 30,
        starts_in: float = -1,
        extra_sans: int = 0,
    ) -> Issued:
        """A leaf for `names` (CN = the first), valid from `starts_in` days for `days`."""
        leaf_key = new_key(key)
        now = dt.datetime.now(dt.UTC)
        start = now + dt.timedelta(days=starts_in)
        sans = [x509.DNSName(n) for n in names]
        sans += [x509.DNSName(f"extra-{i:04d}-{'x' * 40}.{names[0]}") for i in range(extra_sans)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.issuer_cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.issuer_key, hashes.SHA256())
        )
        return Issued(cert, leaf_key, list(self.chain))


async def served_serial(port: int, sni: str | None) -> int:
    """The serial of the certificate a fresh TLS handshake on 127.0.0.1:`port` gets for `sni`
    (not verified: any name, any issuer)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=sni
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.transport.abort()  # no close_notify exchange: only the handshake matters
    return int(x509.load_der_x509_certificate(der).serial_number)
