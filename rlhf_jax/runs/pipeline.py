"""``rlhf-jax run`` for the whole pipeline: simulated preferences -> reward model -> RL of the policy (the
rl section's algorithm) -> evaluation -> report. Every stage whose valid output is in the workdir is reused, so an interrupted run picks
up where it stopped.

    WORKDIR/feedback/, WORKDIR/reward_model/   stages 1-3 (rlhf_jax.runs.reward_training)
    WORKDIR/rl/                                stage 4: checkpoints, metrics.jsonl, samples.jsonl, training.png
    WORKDIR/rl/evaluation.json                 stage 5: the trained policy vs the reference on held-out prompts

A workdir written before the stage was renamed keeps its ``ppo/`` directory (``policy_training.stage_dir``).
    WORKDIR/report.md                          stage 6: the numbers, samples before/after, the plots
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from rlhf_jax import assets, preemption
from rlhf_jax.rl.algorithms import ALGORITHMS
from rlhf_jax.config import ConfigError, ExperimentConfig, same_config, to_dict
from rlhf_jax.data import formats, records
from rlhf_jax.distributed import is_main_process
from rlhf_jax.feedback import arithmetic, language
from rlhf_jax.feedback.collect import sentiment_prompts
from rlhf_jax.feedback.labelers import gold_scorer
from rlhf_jax.files import write_atomic, write_json
from rlhf_jax.metrics import MetricsWriter, attach, read_metrics
from rlhf_jax.models import load_tokenizer
from rlhf_jax.models.pretrained import resolve_source
from rlhf_jax.runs import policy_training, reward_training
from rlhf_jax.scoring import EnsembleReward, RewardModel
from rlhf_jax.trained import restore

log = logging.getLogger(__name__)


def load_reward_model(exp: ExperimentConfig, rm_dir: str, normalization: dict) -> RewardModel:
    trained = restore(rm_dir, exp, local=True)  # each process scores its own rows
    return RewardModel(trained.graphdef, trained.params, trained.tokenizer, exp.data.max_length,
                       gain=normalization["gain"], bias=normalization["bias"])


def fetch_assets(exp: ExperimentConfig) -> None:
    """Fetch (and verify) the named assets a config uses, once, before any stage needs them; a model asset
    is made ready as the model loads it (a GGUF converted once)."""
    names = {exp.model.source, exp.model.tokenizer, exp.feedback.policy, exp.rl.policy, "rotten-tomatoes",
             "vader-lexicon"}
    for name in sorted(names & set(assets.ASSETS)):
        resolve_source(name)  # an asset's path, a GGUF model's converted directory


def reward_stage(exp: ExperimentConfig, workdir: str, progress: bool = True):
    """(reward-model results, the reward function PPO maximises). With ``rl.reward='language'`` there is
    no reward model: the simulated human's free-text comment on each sample, scored, is the reward; with
    'arithmetic' the exact-match grader is."""
    if exp.rl.reward == "language":
        return {}, language.LanguageReward.from_config(exp.feedback)
    if exp.rl.reward == "arithmetic":
        return {}, arithmetic.Grader()
    rm_results = reward_training.run(exp, workdir, progress)
    return rm_results, reward_scorer(exp, workdir, rm_results, progress)


def member_config(exp: ExperimentConfig, member: int) -> ExperimentConfig:
    """Ensemble member ``member``'s reward-model config: model.seed and train.seed moved by ``member``."""
    return dataclasses.replace(exp, model=dataclasses.replace(exp.model, seed=exp.model.seed + member),
                               train=dataclasses.replace(exp.train, seed=exp.train.seed + member))


def member_dir(workdir: str, member: int) -> str:
    """WORKDIR/reward_model for member 0 (the single reward model), WORKDIR/reward_model_<j> for the others."""
    return os.path.join(workdir, "reward_model" if member == 0 else f"reward_model_{member}")


def reward_scorer(exp: ExperimentConfig, workdir: str, rm_results: dict, progress: bool = True):
    """The reward PPO maximises: the trained reward model, or (rl.reward_models = K > 1) the ensemble of it
    and K - 1 more, trained here on the same feedback from other seeds (each reused when complete),
    combined as rl.ensemble says."""
    members = []
    for member in range(exp.rl.reward_models):
        config = reward_training.with_feedback_data(member_config(exp, member), workdir)
        results = rm_results if member == 0 else reward_training.reward_model_stage(
            config, member_dir(workdir, member), progress)
        members.append(load_reward_model(config, member_dir(workdir, member), results["normalization"]))
    if len(members) == 1:
        return members[0]
    return EnsembleReward(members, exp.rl.ensemble, exp.rl.ensemble_lambda)


def gold_of(exp: ExperimentConfig):
    """The gold scorer of the evaluation: the arithmetic grader, or the simulated human's gold labeler."""
    return arithmetic.Grader() if exp.rl.reward == "arithmetic" else gold_scorer(exp.feedback)


def file_prompts(path: str, count: int | None, prompt_tokens: int, tokenizer, split: str, seed: int) -> list[str]:
    """The prompts of one split of a file (``rl.prompts``), in an order of ``seed``, cycled to ``count`` when
    there are fewer; conversations rendered by the policy tokenizer's chat template."""
    rows = [r for r in formats.read_feedback(path, "prompt", formats.Renderer(tokenizer)) if r["split"] == split]
    if not rows:
        raise ConfigError(f"config field 'rl.prompts': {path} has no {split}-split prompts (a row's 'split' field, "
                          "or the hash of its id, puts it in train / validation / test)")
    prompts = [rows[i]["prompt"] for i in np.random.default_rng(seed).permutation(len(rows))]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    longest = int(np.argmax(lengths))
    if lengths[longest] > prompt_tokens:
        raise ConfigError(f"config field 'rl.prompt_tokens': {path}'s prompts take up to {lengths[longest]} tokens, "
                          f"got {prompt_tokens} (the longest: {prompts[longest]!r:.80})")
    return prompts if count is None else [prompts[i % len(prompts)] for i in range(count)]


def training_prompts(exp: ExperimentConfig) -> list[str]:
    """RL's training prompts: the train split (review openings, or arithmetic problems), in an order of
    ``rl.seed``."""
    return _prompts(exp, None, "train")


def held_out_prompts(exp: ExperimentConfig) -> list[str]:
    """The evaluation's ``rl.eval_prompts`` prompts: the test split, in an order of ``rl.seed``; the arithmetic
    task's problems cycled when there are fewer of them (each then sampled several times)."""
    return _prompts(exp, exp.rl.eval_prompts, "test")


def _prompts(exp: ExperimentConfig, count: int | None, split: str) -> list[str]:
    cfg = exp.rl
    tokenizer = load_tokenizer(cfg.policy)
    if cfg.prompts is not None:
        return file_prompts(cfg.prompts, count, cfg.prompt_tokens, tokenizer, split, cfg.seed)
    if cfg.reward != "arithmetic":
        return sentiment_prompts(count, cfg.prompt_tokens, tokenizer, split=split, seed=cfg.seed)
    prompts = [p.prompt for p in arithmetic.problems(cfg.arithmetic_max_operand, cfg.arithmetic_operations, split,
                                                     cfg.seed)]
    if count is not None:
        prompts = [prompts[i % len(prompts)] for i in range(count)]
    longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    if longest > cfg.prompt_tokens:
        raise ConfigError(f"config field 'rl.prompt_tokens': the arithmetic prompts take up to {longest} tokens, "
                          f"got {cfg.prompt_tokens}")
    return prompts


def trained(exp: ExperimentConfig, rl_dir: str) -> bool:
    """Whether ``rl_dir`` holds the checkpoint of the last iteration."""
    return os.path.isdir(os.path.join(rl_dir, "checkpoints", str(exp.rl.iterations)))


def policy_stage(exp: ExperimentConfig, rl_dir: str, reward_fn, gold, progress: bool = True,
                 save_policy: bool = False) -> tuple[dict, dict]:
    """RL of the policy in ``rl_dir``, then the held-out evaluation; reused when complete for this config.
    Returns (evaluation, timings); ``save_policy`` also writes the policy to ``rl_dir/policy``."""
    cfg = exp.rl
    evaluation_path = os.path.join(rl_dir, "evaluation.json")
    policy_dir = os.path.join(rl_dir, "policy")
    if os.path.exists(evaluation_path) and (os.path.isdir(policy_dir) or not save_policy):
        with open(evaluation_path) as f:
            evaluation = json.load(f)
        if same_config(evaluation.get("config", {}), exp):
            return evaluation, {}
    timings = {}
    tick = time.perf_counter()
    log.info("stage rl: %s in %s", cfg.algorithm, rl_dir)  # resumed from its newest intact checkpoint, if any
    out = policy_training.train(exp, rl_dir, reward_fn, gold, training_prompts(exp), progress=progress)
    setup, state = out["setup"], out["state"]
    timings[cfg.algorithm] = time.perf_counter() - tick
    preemption.between_stages(f"{cfg.algorithm}'s training")
    log.info("stage evaluation: %d held-out prompts", cfg.eval_prompts)
    tick = time.perf_counter()
    held_out = held_out_prompts(exp)
    evaluation = policy_training.evaluate(setup, state, reward_fn, gold, held_out)
    timings["evaluation"] = time.perf_counter() - tick
    evaluation.update(config=to_dict(exp), iteration=cfg.iterations)
    if save_policy:
        policy_training.save_policy(setup, state, policy_dir)
    writer = MetricsWriter(rl_dir)
    writer.write(cfg.iterations, "eval", evaluation["metrics"])
    writer.close()
    if is_main_process():
        write_json(evaluation_path, evaluation)  # written last: marks the stage complete
    return evaluation, timings


def run(exp: ExperimentConfig, workdir: str, progress: bool = True) -> dict:
    if exp.rl is None:
        raise ConfigError("config field 'rl': an RLHF run needs an rl section")
    timings = {}
    tick = time.perf_counter()
    log.info("stage assets")
    fetch_assets(exp)
    timings["assets"] = time.perf_counter() - tick
    tick = time.perf_counter()
    rm_results, reward_fn = reward_stage(exp, workdir, progress)
    timings["reward model (collect, train, evaluate)"] = time.perf_counter() - tick
    preemption.between_stages("the reward model")
    evaluation, policy_timings = policy_stage(exp, policy_training.stage_dir(workdir), reward_fn, gold_of(exp),
                                              progress)
    log.info("stage report")
    report = (write_report(exp, workdir, rm_results, evaluation, {**timings, **policy_timings})
              if is_main_process() else os.path.join(workdir, "report.md"))
    attach(policy_training.stage_dir(workdir), report)  # to the W&B run, when there is one
    return {"reward_model": rm_results, "rl": evaluation["metrics"], "report": report}


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def write_report(exp: ExperimentConfig, workdir: str, rm_results: dict, evaluation: dict, timings: dict,
                 samples: int = 8) -> str:
    """report.md: what was run, the reward model's and the trained policy's numbers, samples, plots."""
    cfg, fb = exp.rl, exp.feedback
    m = evaluation["metrics"]
    test = rm_results.get("test", {})
    rl_dir = policy_training.stage_dir(workdir)
    train_rows = [r for r in read_metrics(rl_dir) if r["split"] == "train"]
    first, last = (train_rows[0], train_rows[-1]) if train_rows else ({}, {})

    def fmt(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    algorithm = ALGORITHMS[cfg.algorithm].title
    if cfg.reward == "language":
        reward_line = (f"reward: the simulated human's free-text comment on each sample, scored by "
                       f"`{fb.comment_scorer}` (no reward model)")
        reward_section = []
    elif cfg.reward == "arithmetic":
        reward_line = (f"reward and gold: exact match of the first integer of the answer to problems a "
                       f"{' / '.join(cfg.arithmetic_operations)} b, operands in [0, {cfg.arithmetic_max_operand})")
        reward_section = []
    else:
        reward_line = f"reward model `{exp.model.source or 'random'}` ({exp.train.task})"
        reward_section = [
            "## Reward model (held-out test pairs)", "",
            _table([("gold accuracy (vs noise-free gold order)", fmt(test.get("gold_accuracy"))),
                    ("label accuracy (vs the noisy labels)", fmt(test.get("label_accuracy"))),
                    ("label agreement with gold", fmt(test.get("label_gold_agreement"))),
                    ("Spearman with gold score", fmt(test.get("spearman"))),
                    ("precision / recall / F1", f"{fmt(test.get('precision'))} / {fmt(test.get('recall'))} / "
                                                f"{fmt(test.get('f1'))}"),
                    ("test pairs", fmt(test.get("count"), 0))]), ""]
    if cfg.reward == "arithmetic":
        gold_line = ""
    elif fb.source:
        gold_line = f"; preferences from `{fb.source}`, gold labeler `{fb.labeler}`"
    else:
        gold_line = f"; gold labeler `{fb.labeler}` behind a simulated human at temperature {fb.temperature}"
    lines = [
        "# RLHF run report", "",
        f"Policy `{cfg.policy}`, trained by {algorithm}; {reward_line}{gold_line}.", "",
        *reward_section,
        f"## {algorithm} ({cfg.iterations} iterations x {cfg.rollout_prompts} prompts"
        f"{f' x {cfg.samples_per_prompt} samples' if cfg.samples_per_prompt > 1 else ''}, {cfg.epochs} epochs x "
        f"{cfg.minibatches} minibatches{', value head ' + cfg.value if ALGORITHMS[cfg.algorithm].uses_critic else ''})", "",
        _table([("reward score, first -> last iteration", f"{fmt(first.get('score'))} -> {fmt(last.get('score'))}"),
                ("gold score, first -> last iteration", f"{fmt(first.get('gold_score'))} -> {fmt(last.get('gold_score'))}"),
                ("KL to reference (nats/sequence), last iteration", fmt(last.get("kl"))),
                ("KL coefficient, last iteration", fmt(last.get("kl_coef"), 4)),
                ("seconds per iteration (mean)", fmt(sum(r["seconds_per_iteration"] for r in train_rows)
                                                     / max(len(train_rows), 1), 1))]), "",
        f"## Evaluation on {int(m['prompts'])} held-out prompts (trained policy vs reference, same sampling keys)", "",
        _table([("gold win rate (ties half)", fmt(m["gold_win_rate"])),
                ("gold score: policy / reference", f"{fmt(m['gold_score'])} / {fmt(m['reference_gold_score'])}"),
                *([(f"gold gain, 95% interval over {int(m['distinct_prompts'])} distinct prompts",
                    f"{fmt(m['gold_gain'])} ± {fmt(m['gold_gain_ci95'])}")] if "gold_gain_ci95" in m else []),
                ("reward win rate", fmt(m["rm_win_rate"])),
                ("reward score: policy / reference", f"{fmt(m['rm_score'])} / {fmt(m['reference_rm_score'])}"),
                ("KL(policy || reference), nats per sequence", fmt(m["kl"]))]), "",
        "## Samples (held-out prompts)", ""]
    for s in evaluation["samples"][:samples]:
        lines += [f"- **{s['prompt'].strip()}**",
                  f"  - reference ({s['gold_reference']:+.2f}): {s['reference'].strip()!r}",
                  f"  - trained ({s['gold_policy']:+.2f}): {s['policy'].strip()!r}"]
    lines += ["", "## Plots", "", f"![{algorithm} curves]({os.path.basename(rl_dir)}/training.png)", ""]
    if reward_section:
        lines += ["![reward model calibration](reward_model/calibration.png)", "",
                  "![reward model training](reward_model/training.png)", ""]
    if timings:
        lines += ["## Wall time of the stages run by this invocation", "",
                  _table([(name, f"{seconds:.0f} s") for name, seconds in timings.items()]), ""]
    return write_atomic(os.path.join(workdir, "report.md"), "\n".join(lines))
