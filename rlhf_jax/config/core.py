"""What every config section is made of: the error naming a bad field, the checks, and ``field``, a
dataclass field with a one-line doc (``rlhf-jax config show`` prints it beside the value)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

RENAMED_SECTIONS = {"ppo": "rl"}
"""Sections renamed since (old -> new): configs, config.json files and comparison arms written with the old
name still load."""


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the field."""


def field(default: Any = dataclasses.MISSING, doc: str = "") -> Any:
    """A frozen-dataclass field with its default (none: required) and its one-line doc."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config field '{name}': {message}")


def renamed_sections(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` (a config dict, or an arm's changes) with every section under its current name."""
    values = dict(values)
    for old, new in RENAMED_SECTIONS.items():
        if old in values:
            require(new not in values, old, f"the section is now called {new!r}: give {new!r} alone")
            values[new] = values.pop(old)
    return values


def require_positive_ints(config, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        value = getattr(config, name)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0, prefix + name,
                f"must be a positive integer, got {value!r}")
