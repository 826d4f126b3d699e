"""Instance names (`api-1.internal:8080`) as values (pure: no resolver is loaded here).

`controller.model` validates a route's names with `parse_target`; `controller.discovery.dns`
resolves them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from controller.errors import shown

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, order=True)
class Target:
    """A host name and the port its instances listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_target(value: object) -> Target:
    """`name:port` with a DNS host name (lower-cased, ASCII, labels of 1-63, at most 253).

    IP literals are refused here: they are plain instances and need no resolving.
    """
    if not isinstance(value, str) or not value.isascii() or len(value) > 260:
        raise ValueError(f"{shown(value)} is not a name:port")
    host, sep, port = value.rpartition(":")
    host = host.lower()
    if not sep or not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{shown(value)}: expected name:port with a port of 1-65535")
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"{shown(value)}: {shown(host)} is not a DNS host name")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return Target(host.rstrip("."), int(port))
    raise ValueError(f"{shown(value)} is an IP address, not a name")
