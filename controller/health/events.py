"""HAProxy's own word that a server changed state, read from its log as it is written.

HAProxy writes a line to its stderr (the controller's `<state-dir>/haproxy.log`) whenever a
server changes state: `Server wb.shop.b1/s2 is DOWN, reason: …`, `… is UP`, `… is going
DOWN for maintenance`, `… enters drain mode`, `backend wb.shop.b1 has no server
available!` (the same words on 2.6, 2.8 and 3.x). Reading the new bytes of that file costs
nothing when nothing happens, whatever the number of servers, where reading every server's
state costs HAProxy ~0.1 s a time at 128,000 slots (`show servers state`, measured on
2.6.12). The lines are only a trigger: the watch then reads the named backends' servers
themselves, so a line missed or misread delays a decision until the watch's sweep, and a
line that says nothing new costs one read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from controller.observe import BACKEND_PREFIX

_PREFIX = re.escape(BACKEND_PREFIX)
_NAME = rf"{_PREFIX}[A-Za-z0-9_.:-]+?"
_NAMED = re.compile(rf"\bServer ({_NAME})/|\b[Bb]ackend '?({_NAME})'? has no server")
READ_AT_MOST = 1 << 20
"""Bytes read a time: a storm (100,000 servers down at a start) is read over a few ticks."""


def changed_backends(text: str) -> set[str]:
    """Our backends that lines of HAProxy's log say a server of changed state in."""
    return {a or b for a, b in _NAMED.findall(text)}


class LogTail:
    """The lines appended to a file since the last look (whole lines only).

    The first look starts at the end (what happened before is read from HAProxy itself); a
    file replaced or cut shorter is read again from its start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._at: tuple[int, int] | None = None
        """(inode, offset) read up to."""

    def read(self) -> str | None:
        """New whole lines (may be ""); None when the file cannot be read."""
        try:
            with self.path.open("rb") as file:
                stat = os.fstat(file.fileno())
                inode, offset = self._at or (stat.st_ino, stat.st_size)
                if inode != stat.st_ino or stat.st_size < offset:
                    offset = 0
                if stat.st_size == offset:
                    self._at = (stat.st_ino, offset)
                    return ""
                file.seek(offset)
                chunk = file.read(READ_AT_MOST)
        except OSError:
            return None
        whole = chunk.rfind(b"\n") + 1
        if whole == 0 and len(chunk) == READ_AT_MOST:
            whole = len(chunk)  # a line longer than a read: skip it rather than stall
        self._at = (stat.st_ino, offset + whole)
        return chunk[:whole].decode("utf-8", "replace")
