"""Gateways' crt-list files in `<state-dir>/certs`, written before HAProxy is asked to read them.

A crt-list is named by its content (`compile.bind_tls`), so it is written as soon as a gateway
is planned, before `haproxy -c`: a file of that name already holds that text, and a candidate
that is refused leaves only an unused file behind (a few hundred bytes; not removed yet). The
certificates a gateway names must exist first: a store name without its file is refused with
the field named, rather than left to HAProxy's words.
"""

from __future__ import annotations

import os
from pathlib import Path

from controller.compile import BindTls
from controller.errors import InvalidInput
from controller.files import write_atomic


def prepare_crt_list(name: str, tls: BindTls | None) -> None:
    """Check the gateway's certificates exist, and write its crt-list if it is new."""
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
        write_atomic(crt_list, tls.text, mode=0o600)
