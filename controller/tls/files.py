"""Gateways' crt-list files in `<state-dir>/certs`: written when HAProxy is to load them, removed
when nothing names them any more.

A gateway's crt-list has one name whatever its certificates (`compile.crt_list_file`), and the
file holds the list the gateway's stored record asks for: it is rewritten when a change of the
list is applied live (`CertificateManager.apply_lists`, put back if that fails), and before a
reload or a start loads it (`write_crt_lists`, put back if the reload fails). A new gateway's
file is written as soon as it is planned, so that `haproxy -c` can read it; a candidate that
is refused leaves it unused, and `stale_crt_lists` finds it. The certificates a gateway names
must exist first: a store name without its file is refused with the field named, rather than
left to HAProxy's words.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from controller.compile import CRT_LIST_SUFFIX, BindTls
from controller.errors import InvalidInput
from controller.files import list_files, read_text, remove, write_atomic
from controller.tls.pem import CertificateBundle, parse_bundle

if TYPE_CHECKING:
    from controller.plan import GatewayPlan

CRT_LIST_MODE = 0o600
Snapshot = dict[str, str | None]
"""crt-list file → its text before it was written (None: there was none)."""


def prepare_crt_list(name: str, tls: BindTls | None) -> None:
    """Check the gateway's certificates exist, and write its crt-list if there is none."""
    if tls is None:
        return
    for index, path in enumerate(tls.certificates):
        if not os.path.isfile(path):
            raise InvalidInput.for_field(
                f"gateways.{name}.tls.certificates",
                f"certificate {index + 1} ({Path(path).name}) does not exist: upload it "
                "first (PUT /api/v1/certificates/{name}) or give the path of a PEM file",
            )
    crt_list = Path(tls.crt_list)
    if not crt_list.exists():
        write_atomic(crt_list, tls.text, mode=CRT_LIST_MODE)


def read_certificate(path: str, field: str) -> CertificateBundle:
    """A certificate file a crt-list names, checked as HAProxy would load it (dates aside: a
    reload would load an expired one too). Errors name the file, never its content."""
    try:
        text = read_text(Path(path))
    except OSError:
        raise InvalidInput.for_field(field, f"{Path(path).name} cannot be read") from None
    return parse_bundle(text, check_dates=False, field=field)


def write_crt_list(path: str, text: str) -> str | None:
    """Write one crt-list if it differs; its previous text (for `restore_file`)."""
    try:
        previous: str | None = read_text(Path(path))
    except FileNotFoundError:
        previous = None
    if previous != text:
        write_atomic(Path(path), text, mode=CRT_LIST_MODE)
    return previous


def restore_file(path: str, previous: str | None) -> None:
    """Put back what `write_crt_list` returned: the old text, or no file."""
    if previous is None:
        remove([Path(path)])
    else:
        write_atomic(Path(path), previous, mode=CRT_LIST_MODE)


def tls_of(plan: GatewayPlan) -> BindTls | None:
    return plan.section.layout.tls if plan.section is not None else None


def crt_lists_of(plans: Iterable[GatewayPlan]) -> list[BindTls]:
    """The crt-lists the plans' sections name."""
    return [tls for plan in plans if (tls := tls_of(plan)) is not None]


def write_crt_lists(lists: Iterable[BindTls]) -> Snapshot:
    """The files a reload or a start loads, each with its gateway's desired list."""
    return {tls.crt_list: write_crt_list(tls.crt_list, tls.text) for tls in lists}


def restore_crt_lists(snapshot: Mapping[str, str | None]) -> None:
    for path, previous in snapshot.items():
        restore_file(path, previous)


def stale_crt_lists(cert_dir: Path, referenced: set[str]) -> list[Path]:
    """crt-list files of the directory that no configuration names (former content-named
    files, removed gateways', refused candidates')."""
    return [
        cert_dir / name
        for name in list_files(cert_dir, CRT_LIST_SUFFIX)
        if str(cert_dir / name) not in referenced
    ]
