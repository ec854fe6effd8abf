"""``rlhf-jax loop``: rounds of sample -> label -> reward model on all feedback so far -> PPO -> evaluate.

    WORKDIR/round_R/feedback/           this round's labels on samples of the round's policy (simulated), or
    WORKDIR/round_R/queue.jsonl, labels/  its queue for the labeling app and the app's export (people)
    WORKDIR/round_R/all_feedback.jsonl  the feedback of rounds 0..R: the reward model's training data
    WORKDIR/round_R/reward_model/       retrained from the pretrained encoder on all_feedback
    WORKDIR/round_R/rl/                 RL from the round's policy; rl/policy/ is the next round's
    WORKDIR/round_R/report.md
    WORKDIR/rounds.json, rounds.png     the metrics of every round, side by side

Round R samples from, and starts PPO at, the policy of round R-1 (round 0: ``rl.policy``), and that
starting policy is PPO's frozen KL reference for the round. Round R's feedback uses seed
``feedback.seed + R``, so its prompts, samples and item ids are its own. Every stage is reused when
its output is complete, so a stopped loop (or one waiting for people to label) continues where it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from rlhf_jax import preemption
from rlhf_jax.config import ConfigError, ExperimentConfig
from rlhf_jax.data import formats, records
from rlhf_jax.feedback import collect
from rlhf_jax.feedback.labelers import gold_scorer
from rlhf_jax.files import write_json, write_jsonl
from rlhf_jax.plots import plot_rounds
from rlhf_jax.runs import pipeline, policy_training, reward_training

log = logging.getLogger(__name__)


class AwaitingLabels(RuntimeError):
    """The round's queue is written and people have not labelled it yet; the message says what to run."""


def round_dir(workdir: str, r: int) -> str:
    return os.path.join(workdir, f"round_{r}")


def round_config(exp: ExperimentConfig, workdir: str, r: int) -> ExperimentConfig:
    policy = exp.rl.policy if r == 0 else os.path.join(policy_training.stage_dir(round_dir(workdir, r - 1)), "policy")
    feedback = dataclasses.replace(exp.feedback, policy=policy, seed=exp.feedback.seed + r)
    return dataclasses.replace(exp, feedback=feedback, rl=dataclasses.replace(exp.rl, policy=policy))


def feedback_file(exp_r: ExperimentConfig, directory: str) -> str:
    """The round's own training feedback (of ``feedback.kind``; people in the app give preferences)."""
    if exp_r.feedback.labels_from == "app":
        return os.path.join(directory, "labels", "preferences.jsonl")
    return collect.training_feedback(exp_r.feedback, os.path.join(directory, "feedback"))[0]


def feedback_stage(exp_r: ExperimentConfig, directory: str, db: str, progress: bool = True) -> str:
    """Collect the round's feedback: simulated, or through the labeling app (raises AwaitingLabels until
    the round's export exists)."""
    if exp_r.feedback.labels_from == "simulated":
        reward_training.collect_stage(exp_r, os.path.join(directory, "feedback"), progress)
        return feedback_file(exp_r, directory)
    labels = feedback_file(exp_r, directory)
    if os.path.exists(labels):
        return labels
    queue = os.path.join(directory, "queue.jsonl")
    if not os.path.exists(queue):
        collect.collect_queue(exp_r.feedback, queue, progress)
    raise AwaitingLabels(
        f"{directory}: waiting for people to label {queue}. Run\n"
        f"  rlhf-jax label serve --db {db} --queue {queue} --annotator NAME ...\n"
        f"  rlhf-jax label export --db {db} --out {os.path.dirname(labels)}\n"
        f"then run the loop again (it continues with this round).")


def combine(paths: list[str], out: str, kind: str) -> int:
    """All rounds' rows in one validated file (a duplicate id across rounds is an error); returns the count."""
    rows = formats.read_feedback(paths, kind)
    write_jsonl(rows, out)
    return len(rows)


def run(exp: ExperimentConfig, workdir: str, rounds: int, progress: bool = True) -> list[dict]:
    if exp.rl is None or exp.feedback is None:
        raise ConfigError("config fields 'rl' and 'feedback': a feedback loop needs both sections")
    if exp.rl.reward != "reward_model":
        raise ConfigError("config field 'rl.reward': the loop retrains a reward model each round; use 'reward_model'")
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    reward_training.check_reward_config(exp)
    pipeline.fetch_assets(exp)
    gold = gold_scorer(exp.feedback)
    db = os.path.join(workdir, "labels.sqlite")
    kind = collect.TRAINING_FEEDBACK[exp.feedback.kind][1] if exp.feedback.labels_from == "simulated" else "preference"
    history, own_files = [], []
    for r in range(rounds):
        exp_r = round_config(exp, workdir, r)
        directory = round_dir(workdir, r)
        own_files.append(feedback_stage(exp_r, directory, db, progress))
        data = os.path.join(directory, "all_feedback.jsonl")
        feedback_rows = combine(own_files, data, kind)
        rm_exp = reward_training.with_feedback_data(exp_r, directory, data)
        pairs = os.path.join(directory, "feedback", "preferences.jsonl") if kind == "rating" else None
        rm_dir = os.path.join(directory, "reward_model")
        rm_results = reward_training.reward_model_stage(rm_exp, rm_dir, progress, pairs)
        reward_fn = pipeline.load_reward_model(rm_exp, rm_dir, rm_results["normalization"])
        evaluation, timings = pipeline.policy_stage(exp_r, policy_training.stage_dir(directory), reward_fn, gold,
                                                           progress, save_policy=True)
        pipeline.write_report(exp_r, directory, rm_results, evaluation, timings)
        test = rm_results.get("test", {})
        history.append({"round": r, "policy": exp_r.rl.policy, "feedback_rows": feedback_rows,
                        "rm_gold_accuracy": test.get("gold_accuracy"), "rm_label_accuracy": test.get("label_accuracy"),
                        **evaluation["metrics"]})
        write_json(os.path.join(workdir, "rounds.json"), history)
        log.info("round %d: %s", r, history[-1])
        preemption.between_stages(f"round {r}")
    plot_rounds(history, os.path.join(workdir, "rounds.png"))
    return history
