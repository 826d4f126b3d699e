"""The YAML config file: the shape users write, loaded into the validated model."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.errors import InvalidInput
from controller.files import write_atomic
from controller.model import Config, acl_policy_problems, validation_problems

log = logging.getLogger(__name__)


class ConfigFileError(InvalidInput):
    """The file is missing, not YAML, or not a valid desired state; the message says where."""


def load_config(path: Path, *, allow_unsafe_acls: bool = False) -> Config:
    """The file's desired state; raw ACLs are checked against the controller's policy.

    The controller passes its own setting, so a refused file is never stored as the seed;
    a client (`apply`, `plan`) passes True and lets the controller decide.
    """
    try:
        # libyaml's safe loader when there is one: 100,000 instances parse in a second, not ten
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc
    try:
        config = Config.model_validate(data or {})
    except ValidationError as exc:
        raise _invalid(path, validation_problems(exc)) from exc
    problems = acl_policy_problems(config, allow_unsafe=allow_unsafe_acls)
    if problems:
        raise _invalid(path, problems)
    return config


def _invalid(path: Path, problems: list[dict[str, str]]) -> ConfigFileError:
    lines = [f"  {p['field']}: {p['message']}" for p in problems]
    return ConfigFileError(f"{path} is invalid:\n" + "\n".join(lines), problems)


SEEN_FILE = "config-file.seen"
"""In the state directory: the config file as the last start found it (`ConfigSeen`)."""


@dataclass(frozen=True)
class ConfigSeen:
    """A config file the controller validated (its bytes, the ACL policy and the code's
    version, as one digest), and the store revision whose gateways it equals (-1: none).

    A restart with the same file and a store at that revision need not parse it again: it is
    valid and says nothing the store does not (100,000 instances take seconds to parse, and
    adopting a running HAProxy is meant to take fewer, issue 11)."""

    digest: str
    revision: int = -1


def config_digest(path: Path, *, allow_unsafe_acls: bool, version: str) -> str | None:
    """The digest `ConfigSeen` compares; None when the file cannot be read."""
    try:
        content = path.read_bytes()
    except OSError:
        return None
    head = f"{version}\0{allow_unsafe_acls}\0".encode()
    return hashlib.sha256(head + content).hexdigest()


def read_seen(state_dir: Path) -> ConfigSeen | None:
    """What the last start wrote; None when absent or unreadable (then the file is parsed)."""
    try:
        digest, revision = (state_dir / SEEN_FILE).read_text(encoding="ascii").split()
        return ConfigSeen(digest, int(revision))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def write_seen(state_dir: Path, seen: ConfigSeen) -> None:
    """Best effort: a failure costs the next start a parse, nothing else."""
    try:
        write_atomic(
            state_dir / SEEN_FILE, f"{seen.digest} {seen.revision}\n", mode=0o600, durable=False
        )
    except OSError as exc:
        log.warning("could not remember the config file's digest: %s", exc)
