"""HAProxy's stats page as CSV, on a private unix socket: many proxies' counters in one walk.

Why not `show stat` on the Runtime API: filtered by a proxy, it still walks every proxy of the
process (2.6.12: 4.5–8 ms at 12,000 proxies, whatever their servers; docs/benchmarks.md), and
it takes one proxy per command, so a gateway of ten routes costs ten walks. The stats page
takes a `scope=` text and dumps every proxy whose name contains it, in one walk: a gateway's
pool backends (`wb.<gateway>.b<N>`) share the prefix `wb.<gateway>.`, so one request reads
them all. It is still a walk over every proxy (HAProxy skips the others by name); only one.

The scope is a case-insensitive *substring* of at most `SCOPE_MAX` characters (HAProxy cuts
longer ones, and shows everything if the text holds a character outside its own name
alphabet), so it may select more proxies than asked: callers keep only the rows they name
exactly (`controller.status`). The listener (`controller.render.status_listener`) is a unix
socket in the state directory, mode 0600, with no admin actions.
"""

from __future__ import annotations

import re

import aiohttp
from yarl import URL

from controller.runtime.errors import InvalidArgument, TransientError

SCOPE_MAX = 20
"""HAProxy keeps this many characters of `scope=` (STAT_SCOPE_TXT_MAXLEN, 2.6 to 3.x)."""
SCOPE_PATTERN = re.compile(rf"[A-Za-z0-9_.:-]{{1,{SCOPE_MAX}}}")
"""Characters HAProxy accepts in a scope (its `invalid_char` alphabet), and no URL syntax."""


def _checked(scope: str, given: object) -> str:
    if not isinstance(scope, str) or not SCOPE_PATTERN.fullmatch(scope):
        raise InvalidArgument("scope", f"must be 1-{SCOPE_MAX} of [A-Za-z0-9_.:-]", given)
    return scope


def scope_for(prefix: str) -> str:
    """The scope text that selects every proxy whose name starts with `prefix` (and maybe a
    few more: a substring, cut to `SCOPE_MAX`)."""
    return _checked(prefix[:SCOPE_MAX], prefix)


def page_path(uri: str, scope: str) -> str:
    """The CSV page of the proxies a scope selects (no auto-refresh header)."""
    return f"{uri};csv;norefresh?scope={_checked(scope, scope)}"


class StatsPage:
    """Reads the private stats page over its unix socket, one connection per read."""

    def __init__(self, path: str, uri: str, *, timeout: float = 5.0) -> None:
        self.path = path
        self.uri = uri
        self.timeout = timeout

    async def text(self, scope: str) -> str:
        """The CSV text of a scope; TransientError when the page cannot be read (no listener:
        e.g. a HAProxy started by an older version, until its next reload)."""
        url = URL(f"http://weighbridge{page_path(self.uri, scope)}", encoded=True)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=self.path),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    raise TransientError(f"stats page at {self.path}: HTTP {response.status}")
                return await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientError(f"stats page at {self.path}: {exc}") from exc
