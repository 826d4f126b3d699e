"""Errors of the Runtime API client.

Callers decide by type: a `TransientError` is worth retrying with backoff, a
`CommandError` means HAProxy refused the command (retrying the same text will
fail the same way), an `InvalidArgument` never reached the socket.
"""

from __future__ import annotations

from controller.errors import InvalidInput, Unavailable, shown


class RuntimeApiError(Unavailable):
    """Base of every error raised by `controller.runtime`."""


class TransientError(RuntimeApiError):
    """The socket is missing, refused, reset or slow: retrying later may help."""


class CannotLook(TransientError):
    """This process is out of file descriptors (EMFILE/ENFILE): HAProxy's state is unknown.

    Not evidence that HAProxy is gone: nothing may be restarted or removed on its account.
    """


class CommandError(RuntimeApiError):
    """HAProxy answered with an error text.

    `index` is the position of the command in an `execute_many` batch, if any.
    """

    def __init__(self, command: str, reply: str, *, index: int | None = None) -> None:
        self.command = command
        self.reply = reply
        self.index = index
        first_line = reply.strip().splitlines()[0] if reply.strip() else "(empty reply)"
        super().__init__(f"{command!r} failed: {first_line}")


class InvalidArgument(RuntimeApiError, InvalidInput, ValueError):
    """A value that must not reach the socket (it could inject or break a command)."""

    def __init__(self, field: str, reason: str, value: object = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(
            f"invalid {field}: {reason} (got {shown(value)})", [{"field": field, "message": reason}]
        )
