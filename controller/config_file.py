"""The YAML config file: the shape users write, loaded into the validated model."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.errors import InvalidInput
from controller.model import Config, acl_policy_problems, validation_problems


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
