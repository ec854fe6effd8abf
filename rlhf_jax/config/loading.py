"""From a ``configs/*.py`` file (``get_config()`` returning an ml_collections ``ConfigDict`` that sets only
what differs from the dataclass defaults) and ``--config.SECTION.FIELD=VALUE`` overrides to a validated,
frozen ``ExperimentConfig``; and back, as JSON or as the annotated listing of ``rlhf-jax config show``."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Mapping

from rlhf_jax.config.comparison import CompareConfig, comparison_from_dict
from rlhf_jax.config.core import ConfigError, require
from rlhf_jax.config.experiment import SECTIONS, ExperimentConfig


def _tupled(value):
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def _section(cls, values: Mapping[str, Any], prefix: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    require(not unknown, f"{prefix}.{unknown[0]}" if unknown else prefix, f"unknown field (known: {sorted(known)})")
    return cls(**{k: _tupled(v) for k, v in values.items()})


def experiment_from_dict(values: Mapping[str, Any]) -> ExperimentConfig:
    """Validate a (ConfigDict-converted) plain dict into an ExperimentConfig; absent fields take the
    dataclasses' defaults, a section given as None (feedback, ppo) is absent."""
    values = dict(values)
    unknown = sorted(set(values) - set(SECTIONS))
    require(not unknown, unknown[0] if unknown else "", f"unknown section (sections: {', '.join(SECTIONS)})")
    model = dict(values.get("model", {}))
    model["config"] = tuple(sorted(dict(model.get("config", {})).items()))
    mesh = dict(values.get("mesh", {}))
    if "shape" in mesh:
        mesh["shape"] = tuple((k, v) for k, v in dict(mesh["shape"]).items())
    if "rules" in mesh:
        mesh["rules"] = tuple((k, _tupled(v)) for k, v in dict(mesh["rules"]).items())
    parts = {"model": model, "data": values.get("data", {}), "train": values.get("train", {}), "mesh": mesh}
    parts.update({name: dict(values[name]) for name in ("feedback", "ppo") if values.get(name) is not None})
    if "ppo" in parts and "model_config" in parts["ppo"]:
        parts["ppo"]["model_config"] = tuple(sorted(dict(parts["ppo"]["model_config"]).items()))
    try:
        return ExperimentConfig(**{name: _section(SECTIONS[name], part, name) for name, part in parts.items()})
    except TypeError as error:  # e.g. a wrong argument type inside a dataclass
        raise ConfigError(f"config: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """'--config.train.steps=10' -> ('train.steps', 10); values are Python literals, else strings."""
    body = text[len("--config."):] if text.startswith("--config.") else text
    require("=" in body, text, "an override looks like --config.section.field=value")
    key, raw = body.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def _config_module(path: str):
    """The module of a config file. A file in a package (a folder with __init__.py, as configs/ is) is
    imported as a submodule of it, so configs build on each other with ``from . import base``."""
    path = os.path.abspath(path)
    folder, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        spec = importlib.util.spec_from_file_location(f"_rlhf_jax_config_{stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    package = "_rlhf_jax_configs_" + hashlib.sha256(folder.encode()).hexdigest()[:12]
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, os.path.join(folder, "__init__.py"),
                                                      submodule_search_locations=[folder])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.{stem}")


def _config_dict(path: str, overrides: list[str]) -> dict:
    """``get_config()`` of a configs/*.py file as a plain dict, with --config.x.y=v overrides applied."""
    require(os.path.isfile(path), "--config", f"no such file {path!r}")
    module = _config_module(path)
    require(hasattr(module, "get_config"), "--config", f"{path} has no get_config()")
    config = module.get_config()
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for override in overrides:
        key, value = parse_override(override)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            require(isinstance(node.get(part), dict), key, f"no section {part!r}")
            node = node[part]
        node[leaf] = value
    return config


def load_config(path: str, overrides: list[str] = ()) -> ExperimentConfig:
    """Run ``get_config()`` of a configs/*.py file, apply --config.x.y=v overrides, validate."""
    config = _config_dict(path, overrides)
    require("compare" not in config, "compare", f"{path} is a comparison: run it with 'rlhf-jax run'")
    return experiment_from_dict(config)


def load_run_config(path: str, overrides: list[str] = ()) -> tuple[ExperimentConfig, CompareConfig | None]:
    """(the experiment, its compare section or None): what ``rlhf-jax run`` runs."""
    config = _config_dict(path, overrides)
    compare = config.pop("compare", None)
    return experiment_from_dict(config), None if compare is None else comparison_from_dict(compare)


def to_dict(config) -> dict:
    """A JSON-friendly dict of any of these dataclasses (for logs and checkpoints)."""
    return json_ready(dataclasses.asdict(config))


def added_at_default(cls, field: str, value, saved: Mapping[str, Any]) -> bool:
    """Whether ``field`` of section ``cls`` is absent from a saved JSON section (it was added since) and
    ``value`` is its default: the behaviour before the field existed, so the same run."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return field not in saved and field in defaults and value == json_ready(defaults[field])


def same_config(saved: Mapping[str, Any], exp: ExperimentConfig) -> bool:
    """Whether a saved ``to_dict`` of a config (e.g. in an evaluation.json) is ``exp``'s, where a field
    added since it was saved counts as equal when ``exp`` has it at its default (``added_at_default``)."""
    current = to_dict(exp)
    if set(saved) != set(current):
        return False
    for name, values in current.items():
        before = saved[name]
        if values is None or before is None or set(before) - set(values):
            if values != before:
                return False
            continue
        if any(before.get(f) != v and not added_at_default(SECTIONS[name], f, v, before) for f, v in values.items()):
            return False
    return True


def json_ready(value):
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def describe(exp: ExperimentConfig, compare: CompareConfig | None = None) -> str:
    """Every field of the resolved config with its value and its doc, one line each, by section (and a
    comparison's compare section)."""
    lines = []
    sections = {name: getattr(exp, name) for name in SECTIONS}
    if compare is not None:
        sections["compare"] = compare
    for name, section in sections.items():
        if section is None:
            lines += [f"{name}: None  # {_doc(ExperimentConfig, name)}", ""]
            continue
        lines.append(f"{name}:  # {_doc(ExperimentConfig, name) if name in SECTIONS else 'the arms compared'}")
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name in ("config", "shape", "rules", "model_config") and isinstance(value, tuple):
                value = dict(value)
            lines.append(f"  {name}.{f.name} = {value!r}  # {f.metadata.get('doc', '')}")
        lines.append("")
    return "\n".join(lines)


def _doc(cls, name: str) -> str:
    return next(f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name == name)
