"""HAProxy Runtime API and master CLI: typed commands, parsers and asyncio clients."""

from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command, CommandKind
from controller.runtime.errors import (
    CommandError,
    InvalidArgument,
    RuntimeApiError,
    TransientError,
)
from controller.runtime.master import MasterClient
from controller.runtime.parse import (
    MapEntry,
    MapInfo,
    ProcessEntry,
    ProcInfo,
    ServerState,
    is_error_reply,
)

__all__ = [
    "Command",
    "CommandError",
    "CommandKind",
    "InvalidArgument",
    "MapEntry",
    "MapInfo",
    "MasterClient",
    "ProcInfo",
    "ProcessEntry",
    "RuntimeApiError",
    "RuntimeClient",
    "ServerState",
    "TransientError",
    "is_error_reply",
]
