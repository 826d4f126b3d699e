"""A gateway's crt-list changed live: the runtime steps from what HAProxy runs to the desired
list (pure).

A TLS gateway's crt-list file has a stable name (`<certs>/<gateway>.crt-list`), so its
certificates are not part of the configuration text: adding or removing one is planned here
as Runtime API steps, and only a different default certificate (the first line, which HAProxy
will not delete live) reloads. The steps, in the order `CertificateManager.apply_lists` sends
them:

1. `new ssl cert` + `set ssl cert` + `commit ssl cert` for a certificate HAProxy does not hold
   (`add ssl crt-list` refuses a certificate it does not know);
2. `add ssl crt-list FILE <<` + the line, for each line HAProxy lacks;
3. `del ssl crt-list FILE CERT:LINE`, for each line it has that is not desired;
4. `del ssl cert` for a certificate the list dropped, once no crt-list uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.compile import BindTls
from controller.runtime.parse import CrtListLine
from controller.tls.crtlist import CrtList, CrtListChanges, crt_list_changes, render_crt_list

Line = tuple[str, tuple[str, ...]]
"""(certificate, SNI filters) of one crt-list line."""


def gateway_crt_list(tls: BindTls) -> CrtList:
    """A gateway's list: its default certificate, then the others, none with a filter
    (HAProxy answers each SNI name with the certificate whose names match it)."""
    default, *others = tls.certificates
    return CrtList.build(default, {}, others)


@dataclass(frozen=True, slots=True)
class CrtListPlan:
    """One crt-list's way from what HAProxy runs (`before`) to `desired`."""

    crt_list: str
    desired: CrtList
    before: tuple[Line, ...]
    """The lines HAProxy runs now: what a failed change is brought back to."""
    changes: CrtListChanges
    load: tuple[str, ...] = ()
    """Certificates added that HAProxy does not hold yet."""
    unload: tuple[str, ...] = ()
    """Certificates the list drops: forgotten by HAProxy once no crt-list uses them."""

    @property
    def empty(self) -> bool:
        return self.changes.empty and not self.load

    @property
    def text(self) -> str:
        """The file: what a later reload or restart loads."""
        return render_crt_list(self.desired)

    @property
    def command_count(self) -> int:
        changes = self.changes
        return 3 * len(self.load) + len(changes.add) + len(changes.delete) + len(self.unload)

    def describe(self) -> list[str]:
        """The steps in words, as they are sent (certificate bodies left out)."""
        steps = [f"new ssl cert {cert} (set, commit)" for cert in self.load]
        for cert, sni in self.changes.add:
            steps.append(f"add ssl crt-list {self.crt_list} {cert}{f' {sni}' if sni else ''}")
        for cert, number in self.changes.delete:
            target = f"{cert}:{number}" if number is not None else cert
            steps.append(f"del ssl crt-list {self.crt_list} {target}")
        steps += [f"del ssl cert {cert} (once unused)" for cert in self.unload]
        return steps


def plan_crt_list(
    tls: BindTls, observed: Sequence[CrtListLine], loaded: frozenset[str]
) -> CrtListPlan:
    """Compare the gateway's desired list with `show ssl crt-list -n FILE` and the
    certificates HAProxy holds (`show ssl cert`). `changes.default_changed`: only a reload
    can do it (nothing else is planned then)."""
    desired = gateway_crt_list(tls)
    before = tuple((line.cert, line.filters) for line in observed)
    changes = crt_list_changes(desired, observed)
    if changes.default_changed:
        return CrtListPlan(tls.crt_list, desired, before, changes)
    added = dict.fromkeys(cert for cert, _ in changes.add)
    load = tuple(cert for cert in added if cert not in loaded)
    kept = desired.certificates
    unload = dict.fromkeys(cert for cert, _ in changes.delete if cert not in kept)
    return CrtListPlan(tls.crt_list, desired, before, changes, load, tuple(unload))
