"""Certificates and crt-lists changed in a running HAProxy, without a reload.

A certificate is replaced with one transaction: `set ssl cert FILE <<PEM`, a check that
the transaction holds exactly the uploaded certificate, `commit ssl cert FILE`, and a
read-back of what HAProxy now serves. New handshakes get the new certificate at once;
established connections keep theirs.

HAProxy 2.6 has ONE certificate transaction per process, shared by all CLI sessions, and
a `set ssl cert B` while A's transaction is open silently fills A's (checked on 2.6.12).
So every TLS change here runs under one lock, any transaction left open (by a crash, or by
hand) is aborted first, and each reply's transaction owner and fingerprint are checked.
Other Runtime API writes may interleave: they do not touch certificate transactions.

A command and its payload must fit HAProxy's CLI buffer (`tune.bufsize`, 16 KB by
default). At 16,384 bytes 2.6.12 stops answering and its worker then dies, so nothing that
size is ever sent: a bundle that does not fit is sent in two payloads (certificates, then
the key as `FILE.key`) in one transaction; one whose certificates alone do not fit is
refused (413).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from controller.errors import ConflictingState, InvalidInput, TooLarge
from controller.runtime.client import RuntimeClient
from controller.runtime.commands import (
    CLI_BUFFER,
    Command,
    abort_ssl_cert,
    add_ssl_crt_list,
    commit_ssl_cert,
    del_ssl_cert,
    del_ssl_crt_list,
    fits_cli_buffer,
    new_ssl_cert,
    set_ssl_cert,
    show_ssl_cert,
    show_ssl_crt_list,
    wire_size,
)
from controller.runtime.errors import CommandError, RuntimeApiError
from controller.runtime.parse import (
    SslCertDetails,
    SslCertList,
    parse_crt_list,
    parse_ssl_cert,
    parse_ssl_cert_list,
    reply_message,
    ssl_commit_succeeded,
    ssl_transaction_owner,
)
from controller.tls.crtlist import CrtList, CrtListChanges, crt_list_changes
from controller.tls.files import read_certificate, restore_file, write_crt_list
from controller.tls.listplan import CrtListPlan
from controller.tls.pem import CertificateBundle, CertificateInfo
from controller.tls.store import CertificateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Installed:
    """The outcome of `install`.

    `live`: "replaced" (HAProxy served an older version and now serves this one),
    "loaded" (HAProxy did not know it: it is loaded, unused until a crt-list names it),
    or "stored" (no HAProxy to tell: it takes effect when HAProxy loads the files).
    """

    info: CertificateInfo
    created: bool
    live: str
    payloads: int = 0


def _first_line(reply: str) -> str:
    lines = reply_message(reply).splitlines()
    return lines[0] if lines else "(empty reply)"


def _reason(reply: str) -> str:
    """HAProxy's words after its "Inserting certificate …" progress line, if any."""
    lines = [line for line in reply_message(reply).splitlines() if line.strip()]
    words = [line for line in lines if not line.startswith("Inserting certificate")]
    return " ".join(words) or "(empty reply)"


class CertificateManager:
    """The engine-facing part: store first, then the running HAProxy, both or neither."""

    def __init__(
        self,
        store: CertificateStore,
        runtime: RuntimeClient | None,
        *,
        bufsize: int = CLI_BUFFER,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.bufsize = bufsize
        self._lock = asyncio.Lock()

    # ---- certificates -------------------------------------------------------

    def payloads(self, name: str, bundle: CertificateBundle) -> list[Command]:
        """The `set ssl cert` commands for `bundle`: one if it fits the CLI buffer, else two."""
        return self._payloads_at(str(self.store.path(name)), bundle)

    def _payloads_at(self, path: str, bundle: CertificateBundle) -> list[Command]:
        whole = set_ssl_cert(path, bundle.pem.rstrip("\n"))
        if fits_cli_buffer(whole, self.bufsize):
            return [whole]
        split = [
            set_ssl_cert(path, bundle.certificates_pem),
            set_ssl_cert(path, bundle.key_pem, ".key"),
        ]
        if all(fits_cli_buffer(cmd, self.bufsize) for cmd in split):
            return split
        size = wire_size(split[0])
        message = (
            f"the certificate and its chain take {size} bytes on HAProxy's Runtime API, which "
            f"takes at most {self.bufsize - 1} (tune.bufsize): send a shorter chain"
        )
        raise TooLarge(message, [{"field": "pem", "message": message}])

    async def install(self, name: str, bundle: CertificateBundle) -> Installed:
        """Store `bundle` as `name` and make a running HAProxy serve it.

        If HAProxy refuses or cannot be reached, the previous file is put back and the
        served certificate is the previous one: nothing changed.
        """
        commands = self.payloads(name, bundle)  # TooLarge before anything is touched
        async with self._lock:
            previous = self.store.put(name, bundle)
            try:
                live = await self._push(str(self.store.path(name)), bundle, commands)
            except BaseException:
                self.store.restore(name, previous)
                raise
        return Installed(bundle.info, previous is None, live, len(commands))

    async def _push(self, path: str, bundle: CertificateBundle, commands: list[Command]) -> str:
        runtime = self.runtime
        if runtime is None:
            return "stored"
        listing = await self._abort_open("left open")
        known = path in listing.files
        if not known:
            await runtime.execute(new_ssl_cert(path))
        try:
            for cmd in commands:
                reply = await self._refusable(cmd, "HAProxy refused the certificate")
                owner = ssl_transaction_owner(reply)
                if owner != path:
                    raise ConflictingState(
                        f"HAProxy put the certificate into the transaction of {owner!r}: "
                        "another certificate change was in progress; nothing was changed",
                        [{"field": "pem", "message": "concurrent certificate transaction"}],
                    )
            pending = parse_ssl_cert(await runtime.execute(show_ssl_cert(path, transaction=True)))
            self._expect(pending, bundle, "the open transaction")
            reply = await self._refusable(commit_ssl_cert(path), "HAProxy did not commit it")
            if not ssl_commit_succeeded(reply):
                raise InvalidInput.for_field(
                    "pem", f"HAProxy did not commit it: {_first_line(reply)}"
                )
        except BaseException:
            with contextlib.suppress(RuntimeApiError):  # best effort: the first error is the news
                await self._abort_open("after a failed change")
                if not known:
                    await runtime.execute_many([del_ssl_cert(path)], check=False)
            raise
        served = parse_ssl_cert(await runtime.execute(show_ssl_cert(path)))
        self._expect(served, bundle, "the committed certificate")
        return "replaced" if known else "loaded"

    async def _abort_open(self, why: str) -> SslCertList:
        """Abort every open certificate transaction (ours or anyone's: a commit of a transaction
        HAProxy mixed up would serve the wrong certificate); the listing from before."""
        assert self.runtime is not None
        listing = parse_ssl_cert_list(await self.runtime.execute(show_ssl_cert()))
        for path in listing.transactions:
            log.warning("aborting the certificate transaction of %s (%s)", path, why)
            await self.runtime.execute_many([abort_ssl_cert(path)], check=False)
        return listing

    async def _refusable(self, cmd: Command, what: str) -> str:
        """Run `cmd`; an error reply is HAProxy refusing this input: 400 with its words."""
        assert self.runtime is not None
        try:
            return await self.runtime.execute(cmd)
        except CommandError as exc:
            raise InvalidInput.for_field("pem", f"{what}: {_first_line(exc.reply)}") from None

    @staticmethod
    def _expect(details: SslCertDetails, bundle: CertificateBundle, what: str) -> None:
        if details.sha1_fingerprint != bundle.info.sha1_fingerprint:
            raise ConflictingState(
                f"{what} is not the uploaded certificate (fingerprint "
                f"{details.sha1_fingerprint}): another change interfered",
                [{"field": "pem", "message": "concurrent certificate change"}],
            )

    async def served(self, name: str) -> SslCertDetails | None:
        """What HAProxy holds under `name`'s file, or None if it does not know it."""
        if self.runtime is None:
            return None
        path = str(self.store.path(name))
        listing = parse_ssl_cert_list(await self.runtime.execute(show_ssl_cert()))
        if path not in listing.files:
            return None
        return parse_ssl_cert(await self.runtime.execute(show_ssl_cert(path)))

    async def reconcile(self) -> list[str]:
        """Push every stored certificate HAProxy knows but serves in another version (after
        a controller restart, or a change by hand); level-based and safe to repeat."""
        pushed = []
        for name in self.store.names():
            served = await self.served(name)
            info = self.store.info(name)
            if served is None or served.sha1_fingerprint == info.sha1_fingerprint:
                continue
            bundle = self.store.read(name)
            async with self._lock:
                await self._push(str(self.store.path(name)), bundle, self.payloads(name, bundle))
            pushed.append(name)
        return pushed

    async def remove(self, name: str) -> None:
        """Forget `name` in HAProxy and delete its file; 409 while a crt-list still uses it."""
        path = str(self.store.path(name))
        self.store.info(name)  # NotFound first
        async with self._lock:
            if self.runtime is not None:
                listing = parse_ssl_cert_list(await self.runtime.execute(show_ssl_cert()))
                if path in listing.files:
                    try:
                        await self.runtime.execute(del_ssl_cert(path))
                    except CommandError as exc:
                        raise ConflictingState(
                            f"certificate {name!r} is still in use: {_first_line(exc.reply)}",
                            [{"field": "name", "message": "still used by a crt-list"}],
                        ) from None
            self.store.delete(name)

    # ---- crt-lists ----------------------------------------------------------

    async def apply_crt_list(self, crt_list: str, desired: CrtList) -> CrtListChanges:
        """Bring the live crt-list `crt_list` to `desired`, line by line.

        Every certificate it names must be installed first. If the default certificate
        differs, nothing is changed and the returned changes say `default_changed`: only a
        reload (with the file rendered by `render_crt_list`) can change it.
        """
        if self.runtime is None:
            return CrtListChanges((), (), False)
        async with self._lock:
            observed = parse_crt_list(await self.runtime.execute(show_ssl_crt_list(crt_list)))
            changes = crt_list_changes(desired, observed)
            if changes.default_changed:
                return changes
            await self._edit_list(self.runtime, crt_list, changes)
        return changes

    # ---- gateways' crt-lists (`controller.tls.listplan`) ------------------------

    def loadable(self, path: str, field: str) -> list[Command]:
        """The commands that load the certificate file `path` into HAProxy: InvalidInput
        (naming `field`) or TooLarge if it could not be, before anything is stored."""
        bundle = read_certificate(path, field)
        return self._payloads_at(path, bundle)

    async def apply_lists(self, plans: Sequence[CrtListPlan]) -> None:
        """Bring gateways' crt-lists to their planned content, file and live list.

        Under the certificate lock, and with the certificates HAProxy holds read again: a
        certificate another list dropped meanwhile is loaded again, not assumed. A failure
        brings that list back to the lines it had (added lines deleted, deleted ones added
        back, certificates it loaded forgotten) and its file to its old text, and is raised.
        """
        if self.runtime is None or not plans:
            return
        async with self._lock:
            for plan in plans:
                await self._apply_list(self.runtime, plan)

    async def _apply_list(self, runtime: RuntimeClient, plan: CrtListPlan) -> None:
        previous = write_crt_list(plan.crt_list, plan.text)
        loaded: list[str] = []
        try:
            listing = await self._abort_open("left open")
            for cert in dict.fromkeys(cert for cert, _ in plan.changes.add):
                if cert not in listing.files:
                    bundle = read_certificate(cert, "tls.certificates")
                    await self._push(cert, bundle, self._payloads_at(cert, bundle))
                    loaded.append(cert)
            await self._edit_list(runtime, plan.crt_list, plan.changes)
        except BaseException:
            restore_file(plan.crt_list, previous)
            try:
                await self._bring_back(runtime, plan, loaded)
            except (RuntimeApiError, ConflictingState) as exc:  # the first error is the news
                log.error("crt-list %s not brought back: %s", plan.crt_list, exc)
            raise
        await self._unload(runtime, plan.unload)

    async def _edit_list(
        self, runtime: RuntimeClient, crt_list: str, changes: CrtListChanges
    ) -> None:
        """Adds first (a name is answered at every moment), then deletes, each by its line
        number (2.6.12 keeps an entry's number: a deletion renumbers nothing)."""
        commands = [add_ssl_crt_list(crt_list, cert, sni) for cert, sni in changes.add]
        commands += [del_ssl_crt_list(crt_list, cert, line) for cert, line in changes.delete]
        for cmd in commands:
            try:
                reply = await runtime.execute(cmd)
            except CommandError as exc:
                reply = exc.reply
            else:  # an add failing while it builds the contexts says so after a plain line
                if cmd.payload is None or ssl_commit_succeeded(reply):
                    continue
            raise ConflictingState(
                f"HAProxy refused to change the crt-list {crt_list}: {_reason(reply)}",
                [{"field": "tls.certificates", "message": "crt-list not changed"}],
            )

    async def _bring_back(
        self, runtime: RuntimeClient, plan: CrtListPlan, loaded: list[str]
    ) -> None:
        live = parse_crt_list(await runtime.execute(show_ssl_crt_list(plan.crt_list)))
        back = crt_list_changes(CrtList.of_lines(plan.before), live)
        if not back.default_changed:
            await self._edit_list(runtime, plan.crt_list, back)
        await self._unload(runtime, loaded)

    async def _unload(self, runtime: RuntimeClient, certificates: Sequence[str]) -> None:
        """`del ssl cert` for each certificate no crt-list uses any more (best effort: an
        unused certificate HAProxy keeps only costs memory, and goes at the next reload)."""
        for cert in certificates:
            try:
                details = parse_ssl_cert(await runtime.execute(show_ssl_cert(cert)))
                if details.status == "Unused":
                    await runtime.execute(del_ssl_cert(cert))
            except (CommandError, ValueError) as exc:
                log.warning("certificate %s left loaded in HAProxy: %s", cert, exc)
