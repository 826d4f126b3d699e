"""The YAML config file: the shape users write, loaded into the validated model."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.errors import InvalidInput
from controller.model import Config, validation_problems


class ConfigFileError(InvalidInput):
    """The file is missing, not YAML, or not a valid desired state; the message says where."""


def load_config(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        lines = [f"  {p['field']}: {p['message']}" for p in validation_problems(exc)]
        raise ConfigFileError(f"{path} is invalid:\n" + "\n".join(lines)) from exc
