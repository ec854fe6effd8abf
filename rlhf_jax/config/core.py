"""What every config section is made of: the error naming a bad field, the checks, and ``field``, a
dataclass field with a one-line doc (``rlhf-jax config show`` prints it beside the value)."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def field(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A frozen-dataclass field with its default (none: required) and its one-line doc."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{name}': {message}")


def require_positive_ints(config, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0, prefix + name,
                f"must be a positive integer, got {value!r}")
