"""``rlhf-jax run`` for reward models: collect simulated preferences -> train the reward model ->
evaluate it against the gold labeler. Each stage whose valid output is already in the workdir is
skipped, so an interrupted run picks up where it stopped.

    WORKDIR/feedback/preferences.jsonl   stage 1: pairs of policy samples, labelled
    WORKDIR/feedback/summary.json        (written last: marks stage 1 complete)
    WORKDIR/reward_model/                stage 2: trainer workdir (checkpoints, metrics.jsonl, curves)
    WORKDIR/reward_model/evaluation.json stage 3: gold accuracy, Spearman, P/R/F1, calibration,
                                         normalisation (gain, bias); also a metrics.jsonl row
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from rlhf_jax import preemption
from rlhf_jax.rl import reward
from rlhf_jax.config import ConfigError, ExperimentConfig, FeedbackConfig
from rlhf_jax.data import formats, records
from rlhf_jax.distributed import is_main_process, main_process_first
from rlhf_jax.feedback import collect
from rlhf_jax.feeding import gather_blocks, process_block
from rlhf_jax.files import write_json
from rlhf_jax.metrics import MetricsWriter, read_metrics
from rlhf_jax.plots import plot_calibration
from rlhf_jax.scoring import score_texts
from rlhf_jax.tasks import TASKS
from rlhf_jax.trained import restore

log = logging.getLogger(__name__)
NORMALIZATION_PAIRS = 4096


def collect_stage(exp: ExperimentConfig, directory: str, progress: bool = True) -> str:
    """Sample continuations of each prompt from the policy, label their pairs with the simulated human:
    on process 0 alone (on its own devices), the others then find the stage complete. With
    ``feedback.source`` the preferences are that file's, not copied: building the dataset from it reads and
    validates every row before anything is written."""
    if exp.feedback.source is not None:
        log.info("stage collect: nothing to collect, the preferences are %s", exp.feedback.source)
        return exp.feedback.source
    return main_process_first(lambda: _collect(exp, directory, progress), "collect feedback")


def _collect(exp: ExperimentConfig, directory: str, progress: bool) -> str:
    fb = exp.feedback
    path, summary_path = os.path.join(directory, "preferences.jsonl"), os.path.join(directory, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        try:
            complete = len(formats.read_feedback(path, "preference")) == summary["rows"]
            if fb.kind != "preferences":
                ratings = formats.read_feedback(*collect.training_feedback(fb, directory))
                complete = complete and len(ratings) == summary.get("rating_rows")
            if complete and _same_feedback(summary["feedback"], fb):
                log.info("stage collect: reusing %s", path)
                return path
        except records.DataError as error:
            log.warning("stage collect: %s is not valid (%s); collecting again", path, error)
    log.info("stage collect: sampling and labelling into %s", directory)
    summary = collect.collect_preferences(fb, path, progress)
    write_json(summary_path, summary)  # written last: marks the stage complete
    log.info("stage collect: %s", summary)
    return path


def _same_feedback(saved: dict, fb: FeedbackConfig) -> bool:
    """Whether a saved feedback section is ``fb`` (fields added since it was saved take their defaults)."""
    try:
        return FeedbackConfig(**saved) == fb
    except (TypeError, ConfigError):
        return False


def evaluate_stage(exp: ExperimentConfig, rm_dir: str, pairs: str | None = None) -> dict:
    """Held-out pair metrics against labels and gold; calibration plot; normalisation on policy samples.
    pairs: the preference file to evaluate on, when the model was trained on something else (ratings)."""
    from rlhf_jax.runs.supervised import load_examples

    trained = restore(rm_dir, exp, local=True)  # each process scores its block of the rows, below
    step = trained.step
    data = exp.data if pairs is None else dataclasses.replace(exp.data, dataset="preferences", source=pairs)
    examples = load_examples(data, trained.tokenizer)
    length = exp.data.max_length

    def scores(split, limit=None):
        every = examples[split][:limit]
        rows = every[process_block(len(every))]
        prompts = [r["prompt"] for r in rows]
        chosen, rejected = (score_texts(trained.graphdef, trained.params, trained.tokenizer, prompts, length,
                                        responses=[r[side] for r in rows]) if rows else np.zeros(0, np.float32)
                            for side in ("chosen", "rejected"))
        gold = np.asarray([[r["gold_chosen"], r["gold_rejected"]] for r in every], np.float64)
        return gather_blocks(chosen, len(every)), gather_blocks(rejected, len(every)), gold

    results, main = {}, is_main_process()
    writer = MetricsWriter(rm_dir)
    for split in ("validation", "test"):
        if split not in examples:
            continue
        chosen, rejected, gold = scores(split)
        metrics = reward.pair_metrics(chosen, rejected, gold[:, 0], gold[:, 1])
        results[split] = metrics
        writer.write(step, split, metrics)
        if split == "test":
            table = reward.calibration(1 / (1 + np.exp(-(chosen - rejected))))
            results["calibration"] = table
            if main:
                plot_calibration(table, os.path.join(rm_dir, "calibration.png"))
    writer.close()
    # Both sides are samples of the reference policy; the first NORMALIZATION_PAIRS training pairs
    # (in file order) pin mean and std to about 1-2% of a standard deviation without scoring 100k+ responses.
    train_chosen, train_rejected, _ = scores("train", NORMALIZATION_PAIRS)
    results["normalization"] = reward.normalization(np.concatenate([train_chosen, train_rejected]))
    results["step"] = step
    if main:
        write_json(os.path.join(rm_dir, "evaluation.json"), results)
    return results


def with_feedback_data(exp: ExperimentConfig, workdir: str, path: str | None = None) -> ExperimentConfig:
    """The reward model's config as trained: its data is the workdir's collected feedback of
    ``feedback.kind`` (or ``path``): preference pairs, or rating rows (ratings, scored comments)."""
    default, kind = collect.training_feedback(exp.feedback, os.path.join(workdir, "feedback"))
    dataset = "preferences" if kind == "preference" else "ratings"
    if TASKS[exp.train.task].feedback == "unpaired":  # KTO on unpaired examples: feedback.source's rows
        dataset = "unpaired_preferences"
    source = path or exp.feedback.source or default
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, dataset=dataset, source=source))


def reward_model_stage(exp: ExperimentConfig, rm_dir: str, progress: bool = True, pairs: str | None = None) -> dict:
    """Train the reward model on ``exp.data`` in ``rm_dir`` and evaluate it (on ``pairs`` if given); both
    reused when complete."""
    from rlhf_jax.runs.supervised import train

    finished = any(r["split"] == "test" and r["step"] == exp.train.steps for r in read_metrics(rm_dir))
    if not finished:
        log.info("stage reward model training: in %s", rm_dir)
        train(exp, rm_dir, progress=progress)
        preemption.between_stages("the reward model's training")
    evaluation = os.path.join(rm_dir, "evaluation.json")
    if os.path.exists(evaluation):
        with open(evaluation) as f:
            results = json.load(f)
        if results.get("step") == exp.train.steps:
            return results
    log.info("stage reward model evaluation: on held-out pairs")
    return evaluate_stage(exp, rm_dir, pairs)


def check_reward_config(exp: ExperimentConfig) -> None:
    if exp.feedback is None:
        raise ConfigError("config field 'feedback': a reward-model run needs a feedback section")
    reads = TASKS[exp.train.task].feedback
    if reads is None:
        raise ConfigError(f"config field 'train.task': a reward-model run needs a reward task, got {exp.train.task!r}")
    needs = "pairs" if exp.feedback.kind == "preferences" else "scores"
    if reads != needs:
        fitting = sorted(name for name, task in TASKS.items() if task.feedback == needs)
        raise ConfigError(f"config field 'train.task': feedback.kind={exp.feedback.kind!r} needs a task that reads "
                          f"{needs} ({', '.join(fitting)}), got {exp.train.task!r}")


def run(exp: ExperimentConfig, workdir: str, progress: bool = True) -> dict:
    check_reward_config(exp)
    pairs = collect_stage(exp, os.path.join(workdir, "feedback"), progress)
    preemption.between_stages("the feedback's collection")
    return reward_model_stage(with_feedback_data(exp, workdir), os.path.join(workdir, "reward_model"), progress,
                              None if exp.feedback.kind == "preferences" else pairs)
