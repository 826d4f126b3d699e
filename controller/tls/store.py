"""Certificate files in the state directory: `<state-dir>/certs/<name>.pem`, mode 0600.

The files are what HAProxy loads on a (re)load, so the store is the certificates' source
of truth; the Runtime API only brings a running HAProxy up to date with it. Writes are
atomic and never follow a symlink (`controller.files`). The store keeps each certificate's
public description in memory, for listings and metrics, so neither re-reads a key.
"""

from __future__ import annotations

import errno
import logging
import re
import stat
from pathlib import Path

from controller.errors import InvalidInput, NotFound, WeighbridgeError
from controller.files import list_files, read_text, remove, write_atomic
from controller.model import NAME_PATTERN
from controller.tls.pem import CertificateBundle, CertificateInfo, parse_bundle

log = logging.getLogger(__name__)

CERT_DIR = "certs"
SUFFIX = ".pem"
FILE_MODE = 0o600
_NAME = re.compile(NAME_PATTERN)


def check_certificate_name(value: object, field: str = "name") -> str:
    """Certificate names follow gateway names: 1-63 of [a-z0-9_-], alphanumeric at both ends."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidInput.for_field(
            field,
            "use 1-63 lowercase letters, digits, '-' or '_', starting and ending with a "
            "letter or digit",
        )
    return value


class CertificateStore:
    """The certificate files of one state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o077:
            raise InvalidInput.for_field(
                "state-dir", f"{directory} must be a directory private to its owner (0700)"
            )
        self._infos: dict[str, CertificateInfo] = {}
        for file_name in list_files(directory, SUFFIX):
            name = file_name.removesuffix(SUFFIX)
            if not _NAME.fullmatch(name):
                continue
            try:
                self._infos[name] = self.read(name).info
            except WeighbridgeError as exc:
                log.warning("certificate file %s%s is ignored: %s", name, SUFFIX, exc.message)

    @classmethod
    def in_state_dir(cls, root: Path) -> CertificateStore:
        return cls(root / CERT_DIR)

    def path(self, name: str) -> Path:
        """The file HAProxy names the certificate by (in crt-lists and `set ssl cert`)."""
        return self.directory / f"{check_certificate_name(name)}{SUFFIX}"

    def names(self) -> list[str]:
        return sorted(self._infos)

    def infos(self) -> dict[str, CertificateInfo]:
        return dict(self._infos)

    def info(self, name: str) -> CertificateInfo:
        found = self._infos.get(check_certificate_name(name))
        if found is None:
            raise NotFound(
                f"no certificate {name!r}", [{"field": "name", "message": "unknown certificate"}]
            )
        return found

    def read(self, name: str) -> CertificateBundle:
        """The stored bundle, dates unchecked (it may have expired since it was stored)."""
        try:
            text = read_text(self.path(name))
        except FileNotFoundError:
            raise NotFound(
                f"no certificate {name!r}", [{"field": "name", "message": "unknown certificate"}]
            ) from None
        return parse_bundle(text, check_dates=False, field="name")

    def put(self, name: str, bundle: CertificateBundle) -> str | None:
        """Store `bundle` under `name`; returns the previous file's text (for `restore`)."""
        path = self.path(name)
        try:
            previous: str | None = read_text(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP):
                raise
            previous = None  # none, or a symlink: replaced, never read or written through
        write_atomic(path, bundle.pem, mode=FILE_MODE)
        self._infos[name] = bundle.info
        return previous

    def restore(self, name: str, previous: str | None) -> None:
        """Put back what `put` returned: the old file, or no file."""
        if previous is None:
            self.delete(name)
            return
        write_atomic(self.path(name), previous, mode=FILE_MODE)
        self._infos[name] = parse_bundle(previous, check_dates=False, field="name").info

    def delete(self, name: str) -> bool:
        self._infos.pop(name, None)
        return remove([self.path(name)]) > 0
