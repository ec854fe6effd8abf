"""The ``compare`` section of a comparison config (``rlhf-jax run`` on configs/compare_*.py): which
algorithms, "arms", start from the base config's policy, reward model and preferences, and how many seeds
each. An arm is the base config with the arm's changes, ``{section: {field: value}}``; its kind follows
from what it is:

  online     an rl section algorithm (ppo, reinforce, rloo, grpo, dr_grpo): samples, scored by the reward model
  offline    train.task 'dpo' or 'ipo': the preference pairs themselves, no reward model, no sampling
  best_of_n  the arm named 'best_of_n': n samples from the reference, the reward model's pick
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_jax.config.core import field, renamed_sections, require

BEST_OF_N = "best_of_n"


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    arms: tuple[tuple[str, Any], ...] = field((), "(name, {section: {field: value}}) pairs, each arm's changes to "
                                                  "the base config; the arm named 'best_of_n' samples the reference")
    seeds: int = field(2, "seeds per arm: seed s sets rl.seed = s (prompt order, sampling keys, the held-out "
                          "openings) and an offline arm's train.seed = s (batch order)")
    best_of_n: tuple[int, ...] = field((1, 2, 4, 8, 16), "the n of the best-of-n arm")
    confidence: float = field(0.95, "confidence of the interval over seeds (Student's t)")
    parallel_seeds: bool = field(False, "train an online arm's seeds as one vmapped program (runs.parallel_seeds; "
                                        "S copies of the parameters and Adam state); False: one after another")
    only: tuple[str, ...] = field((), "run and report just these arms, by name, in the arms' order (e.g. the ones "
                                      "added since the last run; finished arms in the workdir are reused); "
                                      "empty: every arm")

    def __post_init__(self):
        require(len(self.arms) > 0, "compare.arms", "name at least one arm")
        names = [name for name, _ in self.arms]
        require(len(set(names)) == len(names), "compare.arms", f"arm names repeat: {names}")
        for name, changes in self.arms:
            require(isinstance(changes, dict) and all(isinstance(v, dict) for v in changes.values()),
                    f"compare.arms.{name}", "an arm's changes look like {section: {field: value}}")
            require("compare" not in changes, f"compare.arms.{name}", "an arm cannot change the compare section")
        require(isinstance(self.seeds, int) and self.seeds >= 1, "compare.seeds", f"must be >= 1, got {self.seeds!r}")
        require(len(self.best_of_n) > 0 and min(self.best_of_n) >= 1, "compare.best_of_n",
                f"every n must be >= 1, got {self.best_of_n}")
        unknown = sorted(set(self.only) - set(names))
        require(not unknown, "compare.only", f"no arm named {unknown[0]!r} (arms: {names})" if unknown else "")
        require(0 < self.confidence < 1, "compare.confidence", f"must be in (0, 1), got {self.confidence}")


def comparison_from_dict(values: dict) -> CompareConfig:
    """The compare section of a config dict; arms: (name, changes) pairs, or a {name: changes} mapping."""
    values = dict(values)
    known = {f.name for f in dataclasses.fields(CompareConfig)}
    unknown = sorted(set(values) - known)
    require(not unknown, f"compare.{unknown[0]}" if unknown else "compare", f"unknown field (known: {sorted(known)})")
    arms = values.pop("arms", ())
    arms = list(arms.items()) if hasattr(arms, "items") else list(arms)
    require(all(isinstance(a, (list, tuple)) and len(a) == 2 and isinstance(a[0], str) for a in arms), "compare.arms",
            "(arm name, {section: {field: value}}) pairs")
    if isinstance(values.get("only"), str):  # --config.compare.only=dapo
        values["only"] = (values["only"],)
    if "only" in values:
        values["only"] = tuple(values["only"])
    if "best_of_n" in values:
        values["best_of_n"] = tuple(sorted({int(n) for n in values["best_of_n"]}))
    return CompareConfig(arms=tuple((name, renamed_sections(_plain(changes))) for name, changes in arms), **values)


def _plain(value):
    """A ConfigDict's nested mappings as plain dicts."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    return value
