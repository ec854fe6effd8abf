"""``rlhf-jax run`` for offline preference optimisation (``train.task`` 'dpo', 'ipo', 'kto', 'simpo' or 'orpo'): the policy learns
from the preference pairs directly, with no reward model and no sampling during training.

    WORKDIR/feedback/             stage 1: the simulated human's preferences (as for a reward model)
    WORKDIR/policy_training/      stage 2: the supervised trainer on those pairs (checkpoints, metrics)
    WORKDIR/policy_training/policy/          the trained policy, a transformers directory
    WORKDIR/policy_training/evaluation.json  stage 3: against the reference on held-out openings, as PPO
    WORKDIR/report.md

The comparison (``runs.comparison``) runs ``train_and_evaluate`` per arm and seed on its shared preferences.
The evaluation is PPO's (``policy_training.evaluate``): one continuation of each held-out opening from
the trained policy and from the reference with the same keys, the gold labeler's win rate and scores,
and KL(policy || reference) per sequence; the ``rl`` section gives its settings.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from rlhf_jax.config import ConfigError, ExperimentConfig, same_config, to_dict
from rlhf_jax.distributed import is_main_process
from rlhf_jax.feedback.collect import sentiment_prompts
from rlhf_jax.feedback.labelers import gold_scorer
from rlhf_jax.files import write_atomic, write_json
from rlhf_jax.metrics import MetricsWriter, read_metrics
from rlhf_jax.models import load_tokenizer
from rlhf_jax.runs import pipeline, policy_training, reward_training, supervised
from rlhf_jax.trained import export, restore


def check_config(exp: ExperimentConfig) -> None:
    if exp.feedback is None or exp.feedback.kind != "preferences":
        raise ConfigError("config field 'feedback.kind': preference optimisation trains on preference pairs")
    if exp.rl is None:
        raise ConfigError("config field 'rl': its policy, reference and evaluation settings are needed")
    if exp.train.task == "kto_unpaired" and exp.feedback.source is None:
        raise ConfigError("config field 'feedback.source': kto_unpaired learns from a file of unpaired rows "
                          "(prompt, completion, label); collected feedback is pairs (train.task='kto' reads them)")
    if exp.model.head != "causal_lm":
        raise ConfigError(f"config field 'model.head': {exp.train.task} trains a causal LM, got {exp.model.head!r}")


def save_policy(directory: str, exp: ExperimentConfig) -> str:
    """The latest checkpoint of ``directory`` as a transformers directory ``directory/policy`` (with LoRA:
    merged, the adapters beside it in PEFT's format: ``trained.export``)."""
    trained = restore(directory, exp, local=True)
    path = os.path.join(directory, "policy")
    if is_main_process():
        export(dataclasses.replace(trained, params=jax.device_get(trained.params)), path)
    return path


def run(exp: ExperimentConfig, workdir: str, progress: bool = True) -> dict:
    check_config(exp)
    reward_training.collect_stage(exp, os.path.join(workdir, "feedback"), progress)
    evaluation = train_and_evaluate(exp, workdir, os.path.join(workdir, "policy_training"), progress=progress)
    if is_main_process():
        write_report(exp, workdir, evaluation)
    return evaluation


def train_and_evaluate(exp: ExperimentConfig, workdir: str, directory: str, reward_model=None,
                       progress: bool = True) -> dict:
    """Train on ``workdir``'s collected preferences in ``directory``, then evaluate against the reference
    (also by ``reward_model`` when given); reused when ``directory/evaluation.json`` is of this config."""
    policy_exp = reward_training.with_feedback_data(exp, workdir)
    if not any(r["split"] == "test" and r["step"] == exp.train.steps for r in read_metrics(directory)):
        supervised.train(policy_exp, directory, progress=progress)
    evaluation_path = os.path.join(directory, "evaluation.json")
    if os.path.exists(evaluation_path):
        with open(evaluation_path) as f:
            evaluation = json.load(f)
        if same_config(evaluation.get("config", {}), exp) and (reward_model is None or "rm_score" in evaluation["metrics"]):
            return evaluation
    policy = save_policy(directory, policy_exp)
    cfg = dataclasses.replace(exp.rl, policy=policy, reference=exp.model.source)
    setup = policy_training.prepare(dataclasses.replace(exp, rl=cfg), None)
    held_out = pipeline.held_out_prompts(dataclasses.replace(exp, rl=cfg))  # the test split of rl.prompts too
    evaluation = policy_training.evaluate(setup, setup.state, reward_model, gold_scorer(exp.feedback), held_out)
    evaluation.update(config=to_dict(exp), step=exp.train.steps)
    writer = MetricsWriter(directory)
    writer.write(exp.train.steps, "eval", evaluation["metrics"])
    writer.close()
    if is_main_process():
        write_json(evaluation_path, evaluation)  # written last: marks the stage complete
    return evaluation


def preferences_of(fb) -> str:
    """Where the preferences came from, for a report."""
    return f"the preferences in `{fb.source}`" if fb.source else "the simulated human's preferences"


def write_report(exp: ExperimentConfig, workdir: str, evaluation: dict, samples: int = 8) -> str:
    m, t = evaluation["metrics"], exp.train
    test = next((r for r in reversed(read_metrics(os.path.join(workdir, "policy_training"))) if r["split"] == "test"),
                {})
    smoothing = f", label smoothing {t.label_smoothing}" if t.task == "dpo" and t.label_smoothing else ""
    lines = [f"# {t.task.upper()} run report", "",
             f"Policy `{exp.model.source}` trained by {t.task.upper()} (beta {t.beta}{smoothing}) for {t.steps} steps of "
             f"{t.batch_size} pairs on {preferences_of(exp.feedback)} (gold labeler `{exp.feedback.labeler}`).", "",
             "| | |", "|---|---|",
             f"| held-out pairs ordered as labelled (implicit reward) | {test.get('accuracy', float('nan')):.3f} |",
             f"| gold win rate vs the reference ({int(m['prompts'])} held-out openings) | {m['gold_win_rate']:.3f} |",
             f"| gold score: policy / reference | {m['gold_score']:.3f} / {m['reference_gold_score']:.3f} |",
             f"| KL(policy \\|\\| reference), nats per sequence | {m['kl']:.3f} |", "", "## Samples (held-out openings)", ""]
    for s in evaluation["samples"][:samples]:
        lines += [f"- **{s['prompt'].strip()}**", f"  - reference ({s['gold_reference']:+.2f}): {s['reference'].strip()!r}",
                  f"  - trained ({s['gold_policy']:+.2f}): {s['policy'].strip()!r}"]
    return write_atomic(os.path.join(workdir, "report.md"), "\n".join(lines) + "\n")
