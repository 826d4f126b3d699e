"""crt-lists: which certificate a TLS bind presents for which SNI name (pure).

A bind `ssl crt-list FILE` loads FILE at start; the Runtime API edits the loaded list line
by line afterwards. Both follow one shape, so the file and the live list compare line for
line:

    /state/certs/main.pem              <- first line: the default certificate
    /state/certs/shop.pem shop.example <- then one line per SNI name
    /state/certs/shop.pem www.shop.example

The default certificate is presented when no line's name matches (or no SNI is sent); its
line has no filter, so it also answers the names in its own certificate. HAProxy refuses
to delete a bind's default certificate live: changing the default needs a reload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.runtime.commands import validate_cert_path, validate_sni
from controller.runtime.parse import CrtListLine


@dataclass(frozen=True, slots=True)
class CrtList:
    """A crt-list's content: the default certificate and SNI name → certificate file."""

    default: str
    by_sni: tuple[tuple[str, str], ...]  # (sni, certificate path), sorted by name

    @classmethod
    def build(cls, default: str, by_sni: Mapping[str, str]) -> CrtList:
        """Checked whole: paths as the Runtime API takes them, SNI names as DNS names."""
        validate_cert_path(default, "default")
        pairs = []
        for sni, cert in by_sni.items():
            pairs.append((validate_sni(sni), validate_cert_path(cert)))
        return cls(default, tuple(sorted(pairs)))

    @property
    def lines(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(certificate, filters) per line, in file order."""
        return ((self.default, ()), *((cert, (sni,)) for sni, cert in self.by_sni))


def render_crt_list(crt_list: CrtList) -> str:
    """The file a bind's `crt-list` loads."""
    return "".join(" ".join((cert, *filters)) + "\n" for cert, filters in crt_list.lines)


@dataclass(frozen=True, slots=True)
class CrtListChanges:
    """What turns a live crt-list into the desired one.

    Adds come before deletes, so a name moving to another certificate is answered at
    every moment. `default_changed`: the first line differs, which only a reload fixes.
    """

    add: tuple[tuple[str, str], ...]  # (certificate, sni)
    delete: tuple[tuple[str, int | None], ...]  # (certificate, line number)
    default_changed: bool

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete or self.default_changed)


def crt_list_changes(desired: CrtList, observed: Sequence[CrtListLine]) -> CrtListChanges:
    """Compare with `show ssl crt-list -n` (parse_crt_list): lines with options or several
    filters were not written by us and are deleted."""
    if not observed:
        return CrtListChanges((), (), True)
    first, rest = observed[0], observed[1:]
    default_changed = (first.cert, first.filters, first.options) != (desired.default, (), "")
    wanted = {(cert, filters[0]) for cert, filters in desired.lines[1:]}
    present: set[tuple[str, str]] = set()
    delete: list[tuple[str, int | None]] = []
    for line in rest:
        key = (line.cert, line.filters[0]) if len(line.filters) == 1 else None
        if key in wanted and key not in present and not line.options:
            present.add(key)
        else:
            delete.append((line.cert, line.line))
    add = tuple((cert, sni) for sni, cert in desired.by_sni if (cert, sni) not in present)
    return CrtListChanges(add, tuple(delete), default_changed)
