"""A small authoritative DNS server on 127.0.0.1 (UDP) whose records a test changes live.

Real packets on a real socket, parsed and built with dnspython: unknown names get NXDOMAIN,
`drop` makes it stay silent (a resolver timeout), and every query is counted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from controller.backends import require_loopback

__all__ = ["DnsServer", "dns_server"]


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """`records[name] = (ttl, [addresses])`; A or AAAA is chosen by each address's form."""

    records: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    drop: bool = False
    queries: Counter[tuple[str, str]] = field(default_factory=Counter)
    port: int = 0
    _transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        if self.drop or self._transport is None:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            ttl, addresses = self.records[name]
            wanted = [a for a in addresses if (":" in a) == (rdtype == "AAAA")]
            if wanted and rdtype in ("A", "AAAA"):
                response.answer.append(
                    dns.rrset.from_text_list(question.name, ttl, "IN", rdtype, wanted)
                )
        self._transport.sendto(response.to_wire(), addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@asynccontextmanager
async def dns_server(host: str = "127.0.0.1") -> AsyncIterator[DnsServer]:
    """Serve on an ephemeral UDP port of `host` (loopback only) until the block ends."""
    loop = asyncio.get_running_loop()
    server = DnsServer()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: server, local_addr=(require_loopback(host), 0)
    )
    server.port = transport.get_extra_info("sockname")[1]
    try:
        yield server
    finally:
        server.close()
