"""TLS settings of gateways and routes, as validated values (pure).

A gateway's `tls` terminates TLS on its bind: certificates (store names or absolute paths),
the default one, protocol floor, cipher lists and ALPN. A route's `tls` originates TLS to its
instances, verified unless `verify: none` is asked for by name. Every string here reaches the
HAProxy configuration, so each is checked whole (`fullmatch`), and cipher names against the
OpenSSL library HAProxy links too (Python's `ssl` module uses the same one).
"""

from __future__ import annotations

import re
import ssl
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from controller.errors import shown
from controller.runtime.commands import validate_cert_path, validate_sni
from controller.runtime.errors import InvalidArgument

_STORE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
"""`controller.model.NAME_PATTERN`, which this module cannot import (the model imports it)."""
_CIPHERS = re.compile(r"[A-Za-z0-9_+!@=.-]{1,100}(?::[A-Za-z0-9_+!@=.-]{1,100}){0,63}")
_SUITES = re.compile(r"TLS_[A-Z0-9_]{1,40}(?::TLS_[A-Z0-9_]{1,40}){0,7}")
_DURATION = re.compile(r"[1-9][0-9]{0,6}(?:ms|s|m|h|d)?")

TLS13_SUITES = frozenset(
    {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    }
)
"""Every TLS 1.3 suite OpenSSL 1.1.1 and 3.x know (`ciphersuites` takes these only)."""

SYSTEM_CA = "@system-ca"
"""HAProxy's name (2.6+) for the operating system's trusted authorities."""


def check_certificate_ref(value: Any) -> str:
    """A certificate of the store (its name) or a PEM file HAProxy reads (an absolute path)."""
    if isinstance(value, str) and _STORE_NAME.fullmatch(value):
        return value
    try:
        return validate_cert_path(value)
    except InvalidArgument:
        raise ValueError(
            f"{shown(value)} is neither a certificate name (1-63 of a-z 0-9 _ -) nor an "
            "absolute path of [A-Za-z0-9_./-]"
        ) from None


def check_ciphers(value: Any) -> str:
    """A TLS 1.2 cipher list whose every named cipher (or alias) OpenSSL knows."""
    if not isinstance(value, str) or not _CIPHERS.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a cipher list: names of A-Z a-z 0-9 _ + ! @ = . - "
            "separated by ':'"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for element in value.split(":"):
        if element[0] in "!-+@":
            continue  # exclusions and orderings select nothing of their own
        try:
            context.set_ciphers(element)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL knows no cipher {element!r}") from None
    return value


def check_ciphersuites(value: Any) -> str:
    """A TLS 1.3 suite list: TLS_… names separated by ':', each one OpenSSL has."""
    if not isinstance(value, str) or not _SUITES.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a TLS 1.3 suite list (TLS_… names, ':')")
    unknown = [suite for suite in value.split(":") if suite not in TLS13_SUITES]
    if unknown:
        raise ValueError(
            f"unknown TLS 1.3 suite {unknown[0]!r}: use {', '.join(sorted(TLS13_SUITES))}"
        )
    return value


def check_duration(value: Any) -> str:
    """An HAProxy time: digits and an optional unit (ms, s, m, h, d; default ms)."""
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return value
    raise ValueError(f"{shown(value)} is not a duration like 500ms, 30s, 5m, 1h or 1d")


def check_verify(value: Any) -> str:
    """`none` (asked for by name), `@system-ca`, or the absolute path of a CA file."""
    if value in ("none", SYSTEM_CA):
        return str(value)
    try:
        return validate_cert_path(value, "verify")
    except InvalidArgument:
        raise ValueError(
            f"{shown(value)}: use the absolute path of a CA file, '@system-ca', or 'none'"
        ) from None


def check_server_name(value: Any) -> str:
    try:
        return validate_sni(value)
    except InvalidArgument:
        raise ValueError(f"{shown(value)} is not a lowercase DNS name") from None


CertificateRef = Annotated[str, BeforeValidator(check_certificate_ref)]
Ciphers = Annotated[str, BeforeValidator(check_ciphers)]
CipherSuites = Annotated[str, BeforeValidator(check_ciphersuites)]
Duration = Annotated[str, BeforeValidator(check_duration)]
ServerName = Annotated[str, BeforeValidator(check_server_name)]
Alpn = Literal["h2", "http/1.1"]


class TlsTermination(BaseModel):
    """How a gateway's bind speaks TLS (the gateway model adds `redirect_http`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certificates: tuple[CertificateRef, ...] = Field(min_length=1, max_length=64)
    default: CertificateRef | None = None
    """Presented to clients whose SNI matches no certificate; the first one if not given."""
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    ciphers: Ciphers | None = None
    ciphersuites: CipherSuites | None = None
    alpn: tuple[Alpn, ...] = Field(default=("h2", "http/1.1"), min_length=1, max_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> TlsTermination:
        if len(set(self.certificates)) != len(self.certificates):
            raise ValueError("a certificate is listed twice")
        if len(set(self.alpn)) != len(self.alpn):
            raise ValueError("a protocol is listed twice in alpn")
        if self.default is not None and self.default not in self.certificates:
            raise ValueError(f"default {self.default!r} is not one of the certificates")
        return self

    @property
    def default_certificate(self) -> str:
        return self.default or self.certificates[0]

    @property
    def ordered(self) -> tuple[str, ...]:
        """The certificates, the default first (HAProxy presents a bind's first one)."""
        first = self.default_certificate
        return (first, *(c for c in self.certificates if c != first))

    def bind_options(self) -> tuple[str, ...]:
        """What the bind line says besides its certificates (shared binds must agree)."""
        options = [f"ssl-min-ver {self.min_version}"]
        if self.ciphers:
            options.append(f"ciphers {self.ciphers}")
        if self.ciphersuites:
            options.append(f"ciphersuites {self.ciphersuites}")
        options.append(f"alpn {','.join(self.alpn)}")
        return tuple(options)


class RouteTls(BaseModel):
    """TLS from HAProxy to a route's instances; verified against `verify` unless `none`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verify: Annotated[str, BeforeValidator(check_verify)] = SYSTEM_CA
    sni: ServerName | None = None
    """The server name sent (and, when verifying, checked against the certificate)."""

    def server_options(self, alpn: str | None) -> str:
        """The `server` line options; `alpn` h2 for HTTP/2 over TLS."""
        if self.verify == "none":
            parts = ["ssl", "verify none"]
        else:
            parts = ["ssl", "verify required", f"ca-file {self.verify}"]
        if self.sni:
            parts.append(f"sni str({self.sni})")
            if self.verify != "none":
                parts.append(f"verifyhost {self.sni}")
        if alpn:
            parts.append(f"alpn {alpn}")
        return " ".join(parts)
