"""crt-lists: which certificate a TLS bind presents for which SNI name (pure).

A bind `ssl crt-list FILE` loads FILE at start; the Runtime API edits the loaded list line
by line afterwards. Both follow one shape, so the file and the live list compare line for
line:

    /state/certs/main.pem              <- first line: the default certificate
    /state/certs/shop.pem shop.example <- then one line per SNI name
    /state/certs/shop.pem www.shop.example

A line without a filter (`plain`: a gateway's certificates) answers the names in its own
certificate (CN and SANs). The default certificate is presented when no line's name matches
(or no SNI is sent). HAProxy refuses to delete a bind's default certificate live: changing
the default needs a reload.
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
    plain: tuple[str, ...] = ()
    """Certificates without a filter after the default, in order."""

    @classmethod
    def build(cls, default: str, by_sni: Mapping[str, str], plain: Sequence[str] = ()) -> CrtList:
        """Checked whole: paths as the Runtime API takes them, SNI names as DNS names."""
        validate_cert_path(default, "default")
        pairs = []
        for sni, cert in by_sni.items():
            pairs.append((validate_sni(sni), validate_cert_path(cert)))
        others = tuple(validate_cert_path(cert) for cert in plain)
        return cls(default, tuple(sorted(pairs)), others)

    @classmethod
    def of_lines(cls, lines: Sequence[tuple[str, tuple[str, ...]]]) -> CrtList:
        """The list HAProxy ran (`show ssl crt-list`), lines with several filters left out:
        what a failed change brings the live list back to."""
        (default, _), rest = lines[0], lines[1:]
        plain = tuple(cert for cert, filters in rest if not filters)
        by_sni = tuple(sorted((filters[0], cert) for cert, filters in rest if len(filters) == 1))
        return cls(default, by_sni, plain)

    @property
    def lines(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(certificate, filters) per line, in file order."""
        return (
            (self.default, ()),
            *((cert, ()) for cert in self.plain),
            *((cert, (sni,)) for sni, cert in self.by_sni),
        )

    @property
    def certificates(self) -> frozenset[str]:
        return frozenset(cert for cert, _ in self.lines)


def render_crt_list(crt_list: CrtList) -> str:
    """The file a bind's `crt-list` loads."""
    return "".join(" ".join((cert, *filters)) + "\n" for cert, filters in crt_list.lines)


@dataclass(frozen=True, slots=True)
class CrtListChanges:
    """What turns a live crt-list into the desired one.

    Adds come before deletes, so a name moving to another certificate is answered at
    every moment. `default_changed`: the first line differs, which only a reload fixes.
    """

    add: tuple[tuple[str, str | None], ...]  # (certificate, sni or None: no filter)
    delete: tuple[tuple[str, int | None], ...]  # (certificate, line number)
    default_changed: bool

    @property
    def empty(self) -> bool:
        return not (self.add or self.delete or self.default_changed)


def crt_list_changes(desired: CrtList, observed: Sequence[CrtListLine]) -> CrtListChanges:
    """Compare with `show ssl crt-list -n` (parse_crt_list): lines with options or several
    filters were not written by us, and lines listed twice are extra: they are deleted."""
    if not observed:
        return CrtListChanges((), (), True)
    first, rest = observed[0], observed[1:]
    default_changed = (first.cert, first.filters, first.options) != (desired.default, (), "")
    wanted = set(desired.lines[1:])
    present: set[tuple[str, tuple[str, ...]]] = set()
    delete: list[tuple[str, int | None]] = []
    for line in rest:
        key = (line.cert, line.filters)
        if key in wanted and key not in present and len(line.filters) <= 1 and not line.options:
            present.add(key)
        else:
            delete.append((line.cert, line.line))
    add = tuple(
        (cert, filters[0] if filters else None)
        for cert, filters in desired.lines[1:]
        if (cert, filters) not in present
    )
    return CrtListChanges(add, tuple(delete), default_changed)
