"""API tokens: a write token (every write; implies read) and an optional read token.

Tokens come from files or the environment, never from the command line (`ps` shows it to
every user). Nothing here ever puts a token, or a token file's content, into a message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.errors import InvalidInput

log = logging.getLogger(__name__)

WRITE_TOKEN_ENV = "WEIGHBRIDGE_API_TOKEN"
READ_TOKEN_ENV = "WEIGHBRIDGE_READ_TOKEN"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")
"""RFC 6750's b64token alphabet, at least 16 characters (e.g. `openssl rand -hex 32`)."""

Grant = Literal["write", "read"]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


@dataclass(frozen=True, repr=False)
class Tokens:
    """What a bearer token grants. Empty: that token is not required."""

    write: str = ""
    read: str = ""

    def __repr__(self) -> str:  # never in a log line or a traceback
        state = {name: "set" if value else "none" for name, value in vars(self).items()}
        return f"Tokens(write={state['write']}, read={state['read']})"

    def grant(self, authorization: str | None) -> Grant | None:
        """What an `Authorization` header grants; the scheme `Bearer` in any case."""
        scheme, _, given = (authorization or "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return None
        # compare digests: constant time, and the lengths of the secrets do not show either
        presented = _digest(given)
        if self.write and hmac.compare_digest(presented, _digest(self.write)):
            return "write"
        if self.read and hmac.compare_digest(presented, _digest(self.read)):
            return "read"
        return None


def check_token(value: str, source: str) -> str:
    """The token as given (surrounding whitespace dropped), or InvalidInput naming the source."""
    token = value.strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise InvalidInput.for_field(
            source, "a token must be 16-512 characters of A-Z a-z 0-9 . _ ~ + / = -"
        )
    return token


def read_token_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not readable"
        raise InvalidInput.for_field(str(path), f"cannot read the token file: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is accessible by group or others: chmod 600 it", path)
    return check_token(text, str(path))


def token_from(
    path: Path | None, env_name: str, environ: MutableMapping[str, str] | None = None
) -> str:
    """The token in `path` if given, else in `$env_name`, else ''."""
    env = os.environ if environ is None else environ
    if path is not None:
        return read_token_file(path)
    value = env.get(env_name, "")
    return check_token(value, f"${env_name}") if value else ""


def load_tokens(
    write_file: Path | None,
    read_file: Path | None,
    environ: MutableMapping[str, str] | None = None,
) -> Tokens:
    """The controller's tokens; their variables are then removed from the environment, so no
    child process (HAProxy, `haproxy -c`, a webhook helper) ever inherits them."""
    env = os.environ if environ is None else environ
    tokens = Tokens(
        write=token_from(write_file, WRITE_TOKEN_ENV, env),
        read=token_from(read_file, READ_TOKEN_ENV, env),
    )
    for name in (WRITE_TOKEN_ENV, READ_TOKEN_ENV):
        env.pop(name, None)
    if tokens.read and not tokens.write:
        raise InvalidInput.for_field(
            "--read-token-file", "a read token needs a write token too (writes would be open)"
        )
    return tokens
