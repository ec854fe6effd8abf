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
from collections.abc import Callable, Collection, Mapping
from typing import Any

from rlhf_jax.config.comparison import CompareConfig, comparison_from_dict
from rlhf_jax.config.core import RENAMED_SECTIONS, ConfigError, renamed_sections, require
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
    dataclasses' defaults, a section given as None (feedback, rl) is absent; a section under its old name
    (``RENAMED_SECTIONS``: ppo) is read as the new one."""
    values = renamed_sections(values)
    unknown = sorted(set(values) - set(SECTIONS))
    require(not unknown, unknown[0] if unknown else "", f"unknown section (sections: {', '.join(SECTIONS)})")
    model = dict(values.get("model", {}))
    model["config"] = tuple(sorted(dict(model.get("config", {})).items()))
    model["lora"] = tuple(sorted(dict(model.get("lora", {})).items()))
    mesh = dict(values.get("mesh", {}))
    if "shape" in mesh:
        mesh["shape"] = tuple((k, v) for k, v in dict(mesh["shape"]).items())
    if "rules" in mesh:
        mesh["rules"] = tuple((k, _tupled(v)) for k, v in dict(mesh["rules"]).items())
    parts = {"model": model, "data": values.get("data", {}), "train": values.get("train", {}), "mesh": mesh}
    parts.update({name: dict(values[name]) for name in ("feedback", "rl") if values.get(name) is not None})
    for name in ("model_config", "lora"):
        if "rl" in parts and name in parts["rl"]:
            parts["rl"][name] = tuple(sorted(dict(parts["rl"][name]).items()))
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
    config = renamed_sections(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    for override in overrides:
        key, value = parse_override(override)
        section, dot, rest = key.partition(".")
        key = RENAMED_SECTIONS.get(section, section) + dot + rest
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


def first_difference(saved: Mapping[str, Any], current: Mapping[str, Any], sections: Collection[str] | None = None,
                     bookkeeping: Collection[str] = (), retired: bool = True,
                     equal: Callable[[str, Any, Any], bool] | None = None) -> tuple[str, Any, Any] | None:
    """The one test of "is this the same run?": the first ``(section.field, saved value, current value)`` at
    which ``saved``, a ``to_dict`` of a config written perhaps before fields were added or a section was
    renamed, differs from ``current``, a ``to_dict`` of today's; None when they are the same run.

    Only ``sections`` count (default: all of ``current``'s). Fields named in ``bookkeeping`` ('train.steps')
    may differ. A field added since is the same at its default (``added_at_default``: the behaviour before
    it existed). With ``retired``, a saved field this version no longer has is a difference. ``equal(name,
    before, now)`` may call other values the same (two paths to files with one content)."""
    saved = renamed_sections(saved)
    names = list(current if sections is None else sections)
    if retired and sections is None and set(saved) - set(current):
        extra = sorted(set(saved) - set(current))[0]
        return extra, saved[extra], None
    for name in names:
        before, now = saved.get(name), current.get(name)
        if before is None or now is None:
            if before != now:
                return name, before, now
            continue
        if retired and set(before) - set(now):
            gone = sorted(set(before) - set(now))[0]
            return f"{name}.{gone}", before[gone], None
        for field_name, value in now.items():
            key, old = f"{name}.{field_name}", before.get(field_name)
            if old == value or key in bookkeeping or added_at_default(SECTIONS[name], field_name, value, before):
                continue
            if equal is None or not equal(key, old, value):
                return key, old, value
    return None


def same_config(saved: Mapping[str, Any], exp: ExperimentConfig) -> bool:
    """Whether a saved ``to_dict`` of a config (e.g. in an evaluation.json) is ``exp``'s: ``first_difference``
    over every section, a retired field counting as a difference."""
    return first_difference(saved, to_dict(exp)) is None


def check_same_run(saved: Mapping[str, Any], current: Mapping[str, Any], sections: Collection[str],
                   bookkeeping: Collection[str] = (), equal: Callable[[str, Any, Any], bool] | None = None) -> None:
    """Refuse to resume a checkpoint whose config (``saved``) is another run than ``current`` in ``sections``,
    naming the first field that differs (``first_difference``; a field retired since is ignored)."""
    difference = first_difference(saved, current, sections, bookkeeping, retired=False, equal=equal)
    if difference is not None:
        name, before, now = difference
        raise ConfigError(f"config field '{name}': the checkpoint was made with {before!r}, this run has {now!r}; "
                          "use a new workdir")


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
            if f.name in ("config", "shape", "rules", "model_config", "lora") and isinstance(value, tuple):
                value = dict(value)
            lines.append(f"  {name}.{f.name} = {value!r}  # {f.metadata.get('doc', '')}")
        lines.append("")
    return "\n".join(lines)


def _doc(cls, name: str) -> str:
    return next(f.metadata.get("doc", "") for f in dataclasses.fields(cls) if f.name == name)
