"""Which driver ``rlhf-jax run`` runs for a config, and what the config's sections mean to it. The choice
follows from the config's shape, first match in ``DRIVERS``' order; it is printed at start, and
``rlhf-jax run --driver NAME`` states it (a config that implies another driver is then refused).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from rlhf_jax.config import CompareConfig, ConfigError, ExperimentConfig
from rlhf_jax.losses import OFFLINE_LOSSES
from rlhf_jax.runs import comparison, pipeline, preference_training, reward_training


@dataclasses.dataclass(frozen=True)
class Driver:
    name: str
    module: str  # rlhf_jax/runs/MODULE.py
    applies: Callable[[ExperimentConfig, CompareConfig | None], bool]
    sections: str  # what model / data / train (and rl) are for this driver
    run: Callable[[ExperimentConfig, CompareConfig | None, str], list[str]]  # -> the lines to print


def _comparison(exp, compare, workdir) -> list[str]:
    comparison.run(exp, compare, workdir)
    return [f"comparison: {os.path.join(workdir, 'compare.md')}, compare.json, frontier.png"]


def _preference(exp, compare, workdir) -> list[str]:
    evaluation = preference_training.run(exp, workdir)
    return ["eval: " + ", ".join(f"{k}={v:.4f}" for k, v in evaluation["metrics"].items()),
            f"report: {os.path.join(workdir, 'report.md')}"]


def _rlhf(exp, compare, workdir) -> list[str]:
    results = pipeline.run(exp, workdir)
    return ["eval: " + ", ".join(f"{k}={v:.4f}" for k, v in results["rl"].items()), f"report: {results['report']}"]


def _reward_model(exp, compare, workdir) -> list[str]:
    results = reward_training.run(exp, workdir)
    lines = [f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in results[split].items())
             for split in ("validation", "test") if split in results]
    return [*lines, f"normalization: {results['normalization']}"]


DRIVERS = {d.name: d for d in [
    Driver("comparison", "comparison", lambda exp, compare: compare is not None,
           "a compare section: each arm is the config with its changes; model / data / train are the shared "
           "reward model (unused when rl.reward is 'arithmetic': the grader scores), rl the online arms' policy",
           _comparison),
    Driver("preference", "preference_training", lambda exp, compare: exp.train.task in OFFLINE_LOSSES,
           "train.task dpo / ipo / kto / simpo / orpo / kto_unpaired: model / data / train are the policy and its "
           "preference training on the feedback; rl gives the reference and the evaluation", _preference),
    Driver("rlhf", "pipeline", lambda exp, compare: exp.rl is not None,
           "an rl section: model / data / train are the reward model, trained on the feedback; rl is the policy "
           "trained against it (rl.reward 'arithmetic' or 'language': no reward model, model / data / train unused)",
           _rlhf),
    Driver("reward_model", "reward_training", lambda exp, compare: True,
           "no rl section: model / data / train are the reward model, trained on the feedback", _reward_model),
]}


def choose(exp: ExperimentConfig, compare: CompareConfig | None, stated: str | None = None) -> Driver:
    """The driver for this config; ``stated`` (``--driver``), when given, must be it."""
    driver = next(d for d in DRIVERS.values() if d.applies(exp, compare))
    if stated is not None and stated != driver.name:
        if stated not in DRIVERS:
            raise ConfigError(f"--driver {stated!r}: not one of {sorted(DRIVERS)}")
        raise ConfigError(f"--driver {stated!r}: this config runs the {driver.name!r} driver ({driver.sections})")
    return driver
