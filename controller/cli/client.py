"""The CLI's HTTP side: one small client of the REST API, and the options that reach it.

Client commands import this, never the engine or HAProxy code: `weighbridge status` on a
laptop needs only the API's address and a token.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote

from controller.api.tokens import READ_TOKEN_ENV, WRITE_TOKEN_ENV, token_from
from controller.errors import Unavailable

DEFAULT_API = "127.0.0.1:9900"
TIMEOUT = 30.0
"""Seconds a request may take: a reload of a big state takes seconds, not minutes."""


class ApiClientError(Unavailable):
    """The controller could not be reached (or did not answer in time)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    """Names in lower case."""

    @property
    def ok(self) -> bool:
        return self.status < 400


@dataclass(frozen=True, repr=False)
class ApiClient:
    api: str
    token: str = ""

    def __repr__(self) -> str:  # never the token
        return f"ApiClient({self.api!r})"

    @property
    def url(self) -> str:
        return self.api if self.api.startswith("http") else f"http://{self.api}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        dry_run: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One JSON request under /api/v1; any status comes back, only no answer raises."""
        query = ""
        if dry_run:
            query = ("&" if "?" in path else "?") + "dry_run=true"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}{query}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return Reply(response.status, _decode(response.read()), _lower(response.headers))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, _decode(exc.read()), _lower(exc.headers))
        except OSError as exc:
            raise ApiClientError(f"cannot reach the controller at {self.url}: {exc}") from exc


def _lower(headers: Message) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def segment(name: str) -> str:
    """A name as one path segment: the controller refuses bad names, this keeps them whole."""
    return quote(name, safe="")


class _OnCommandLine(argparse.Action):
    """A token given as an argument: refused, `ps` shows it to every user of the machine."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        parser.error(
            f"{self.option_strings[0]} is no longer accepted (a token on the command line "
            f"shows in `ps`): use --token-file or ${WRITE_TOKEN_ENV}"
        )


def refuse_token_argument(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, action=_OnCommandLine, dest=f"{flag[2:]}_argument", help=argparse.SUPPRESS)


def add_client_options(p: argparse.ArgumentParser) -> None:
    """Where the controller is and how a client command finds its token."""
    p.add_argument(
        "--api", default=DEFAULT_API, metavar="HOST:PORT", help="the controller's REST API"
    )
    p.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the API token (default: ${WRITE_TOKEN_ENV}, else ${READ_TOKEN_ENV}; "
        "none when neither is set)",
    )
    refuse_token_argument(p, "--token")


def client_from(args: argparse.Namespace) -> ApiClient:
    token = token_from(args.token_file, WRITE_TOKEN_ENV) or token_from(None, READ_TOKEN_ENV)
    return ApiClient(args.api, token)
