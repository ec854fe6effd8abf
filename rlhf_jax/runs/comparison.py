"""``rlhf-jax run`` on a comparison config (configs/compare_*.py): the arms of its ``compare`` section (PPO,
RLOO, GRPO, DPO, IPO, best-of-n, ...) trained from one start, on one reward model and one set of simulated
preferences, each for several seeds, and evaluated alike.

    WORKDIR/feedback/, WORKDIR/reward_model/   shared by every arm (runs.reward_training)
    WORKDIR/ARM/seedS/                         one arm and seed: its run, evaluation.json
    WORKDIR/ARM/seedS/result.json              its metrics, budget, wall seconds, frontier points (written last)

Wall seconds are those of training (best-of-n: of sampling and scoring n per opening), read from the run's
own metrics, so an arm whose run is reused (e.g. a standalone run's workdir) still reports its own; the
offline arms' one pass of reference log-probs before training is not in them.
    WORKDIR/compare.json, compare.md, frontier.png

Seed s of every arm sets rl.seed = s, which picks the held-out openings, so all arms of one seed are
evaluated on the same openings against the same reference samples (``policy_training.evaluate``): gold win
rate, gold and reward-model scores, KL(policy || reference) per sequence. Across seeds: the mean and a
Student-t interval. The frontier: score gained over the reference against sqrt(KL), every online arm's
training iterations and final evaluations, every best-of-n n (analytic KL), every offline arm's evaluation,
with the forms of Gao et al. 2022 fitted (``rlhf_jax.frontier``).
"""

from __future__ import annotations

import json
import os
import time

import jax

from rlhf_jax import frontier, preemption
from rlhf_jax.losses import OFFLINE_LOSSES
from rlhf_jax.config import CompareConfig, ConfigError, ExperimentConfig, experiment_from_dict, to_dict
from rlhf_jax.config.comparison import BEST_OF_N
from rlhf_jax.config.core import renamed_sections
from rlhf_jax.files import write_atomic, write_json
from rlhf_jax.metrics import read_metrics
from rlhf_jax.plots import plot_frontier
from rlhf_jax.runs import best_of_n, parallel_seeds, pipeline, preference_training

REPORTED = ("gold_win_rate", "gold_score", "rm_score", "kl", "gold_gain", "seconds")


def arm_kind(name: str, arm: ExperimentConfig) -> str:
    if name == BEST_OF_N:
        return "best_of_n"
    return "offline" if arm.train.task in OFFLINE_LOSSES else "online"


def arm_config(base: ExperimentConfig, name: str, changes: dict, seed: int) -> ExperimentConfig:
    """The base config with an arm's changes, at seed ``seed`` (rl.seed; train.seed too for an offline arm,
    whose train section is its own trainer's, not the reward model's)."""
    values = to_dict(base)
    for section, fields in renamed_sections(changes).items():
        values[section] = {**(values.get(section) or {}), **fields}
    values["rl"]["seed"] = seed
    if values["train"]["task"] in OFFLINE_LOSSES:
        values["train"]["seed"] = seed
    try:
        return experiment_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"compare.arms.{name}: {error}") from None


def reward_key(arm: ExperimentConfig):
    """What an arm's reward is made of: the one reward model (or grader), or its ensemble and combination."""
    cfg = arm.rl
    return (cfg.reward_models, cfg.ensemble, cfg.ensemble_lambda) if cfg.reward_models > 1 else cfg.reward


def budget(kind: str, arm: ExperimentConfig, ns) -> dict:
    """What an arm spends: policy samples drawn while training, optimiser steps, and (offline) pairs seen."""
    if kind == "online":
        cfg = arm.rl
        return {"samples": cfg.iterations * cfg.rollout_rows, "gradient_steps": cfg.iterations * cfg.epochs
                * cfg.minibatches}
    if kind == "offline":
        return {"samples": 0, "gradient_steps": arm.train.steps, "pairs": arm.train.steps * arm.train.batch_size}
    return {"samples": 0, "gradient_steps": 0, "samples_per_opening": max(ns)}


def training_seconds(directory: str) -> float:
    """Wall seconds of a run's training steps, from its own metrics (so a reused run still reports them):
    the online arms' seconds per iteration; the offline arms' seconds per step over each logged window."""
    rows = [r for r in read_metrics(directory) if r["split"] == "train"]
    if rows and "seconds_per_iteration" in rows[0]:
        return float(sum(r["seconds_per_iteration"] for r in rows))
    steps = [0] + [r["step"] for r in rows]
    return float(sum(r["seconds_per_step"] * (step - before) for r, before, step in zip(rows, steps, steps[1:])))


def _points(rows, source: str, reference: dict) -> list[dict]:
    """Frontier points: KL and the gold and proxy (reward-model) score gained over the reference."""
    return [{"source": source, "kl": r["kl"], "gold_gain": r["gold"] - reference["gold"],
             "proxy_gain": r["proxy"] - reference["proxy"], **({"n": r["n"]} if "n" in r else {})} for r in rows]


def run_arm(name: str, kind: str, arm: ExperimentConfig, directory: str, workdir: str, reward_model, gold,
            compare: CompareConfig, progress: bool) -> dict:
    """One arm at one seed, reused when ``directory/result.json`` is of this config."""
    result_path = os.path.join(directory, "result.json")
    config = {"arm": to_dict(arm), **({"best_of_n": list(compare.best_of_n)} if kind == "best_of_n" else {})}
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
        if result.get("config") == config:
            return result
    tick = time.perf_counter()
    if kind == "best_of_n":
        per_n = best_of_n.evaluate(arm, reward_model, gold, pipeline.held_out_prompts(arm), compare.best_of_n)
        os.makedirs(directory, exist_ok=True)
        base = next(r for r in per_n if r["n"] == 1)  # draw 0: the reference sample
        reference = {"gold": base["gold_score"], "proxy": base["rm_score"]}
        metrics = {**per_n[-1], "reference_gold_score": reference["gold"], "reference_rm_score": reference["proxy"]}
        points = _points([{"kl": r["kl"], "gold": r["gold_score"], "proxy": r["rm_score"], "n": r["n"]}
                          for r in per_n], "best_of_n", reference)
        extra = {"per_n": per_n}
    else:
        if kind == "online":
            evaluation, _ = pipeline.policy_stage(arm, directory, reward_model, gold, progress)
        else:
            evaluation = preference_training.train_and_evaluate(arm, workdir, directory, reward_model, progress)
        metrics = evaluation["metrics"]
        reference = {"gold": metrics["reference_gold_score"], "proxy": metrics["reference_rm_score"]}
        points = _points([{"kl": metrics["kl"], "gold": metrics["gold_score"], "proxy": metrics["rm_score"]}],
                         "evaluation", reference)
        if kind == "online":  # each iteration's rollout (training openings): the path the policy took
            points += _points([{"kl": r["kl"], "gold": r["gold_score"], "proxy": r["score"]}
                               for r in read_metrics(directory) if r["split"] == "train"], "train", reference)
        extra = {}
    seconds = time.perf_counter() - tick if kind == "best_of_n" else training_seconds(directory)
    result = {"arm": name, "kind": kind, "seed": arm.rl.seed, "config": config, "seconds": seconds,
              "budget": budget(kind, arm, compare.best_of_n), "frontier": points, **extra,
              "metrics": {**{k: float(metrics[k]) for k in ("gold_win_rate", "gold_score", "rm_score", "kl",
                                                              "reference_gold_score", "reference_rm_score")},
                          "gold_gain": float(metrics["gold_score"] - metrics["reference_gold_score"])}}
    write_json(result_path, result)
    return result


def summarise(results: dict[str, list[dict]], compare: CompareConfig) -> dict:
    """Per arm: mean and interval over seeds of each reported number, the budget, the Gao et al. fits."""
    arms = {}
    for name, runs in results.items():
        kind = runs[0]["kind"]
        summary = {"kind": kind, "seeds": len(runs), "budget": runs[0]["budget"]}
        for metric in REPORTED:
            values = [r["seconds"] if metric == "seconds" else r["metrics"][metric] for r in runs]
            summary[metric] = frontier.mean_interval(values, compare.confidence)
        if kind == "best_of_n":
            summary["per_n"] = []
            for i, row in enumerate(runs[0]["per_n"]):
                summary["per_n"].append({"n": row["n"], "kl": row["kl"], **{
                    key: frontier.mean_interval([r["per_n"][i][key] for r in runs], compare.confidence)
                    for key in ("gold_win_rate", "gold_score", "rm_score")}})
        points = [p for r in runs for p in r["frontier"]]
        form = {"online": "rl", "best_of_n": "best_of_n"}.get(kind)
        if form and len(points) >= 2:
            summary["fit"] = {score: frontier.fit(form, [p["kl"] for p in points], [p[f"{score}_gain"] for p in points])
                              for score in ("gold", "proxy")}
        arms[name] = summary
    return arms


def run(exp: ExperimentConfig, compare: CompareConfig, workdir: str, progress: bool = True) -> dict:
    if jax.process_count() > 1:
        raise ConfigError("compare: a comparison runs as one process (each arm can run across processes with its own "
                          "config and 'rlhf-jax run')")
    if exp.rl is None or exp.feedback is None or exp.rl.reward not in ("reward_model", "arithmetic"):
        raise ConfigError("config field 'rl.reward': a comparison needs a feedback section, an rl section and a "
                          "reward model ('reward_model') for the online arms, best-of-n and the proxy score, or the "
                          "arithmetic grader ('arithmetic'), which is then both proxy and gold")
    arms = {name: [arm_config(exp, name, changes, seed) for seed in range(compare.seeds)]
            for name, changes in selected_arms(compare)}  # every arm's config checked before any work
    for name, configs in arms.items():
        if arm_kind(name, configs[0]) == "offline":
            if exp.rl.reward == "arithmetic":
                raise ConfigError(f"compare.arms.{name}: the arithmetic task has no preference pairs for an offline "
                                  "arm")
            preference_training.check_config(configs[0])
            if configs[0].feedback != exp.feedback:
                raise ConfigError(f"compare.arms.{name}: an offline arm learns from the shared preferences; it cannot "
                                  "change the feedback section")
    pipeline.fetch_assets(exp)
    rm_results, base_reward = pipeline.reward_stage(exp, workdir, progress)
    gold = pipeline.gold_of(exp)
    rewards = {reward_key(exp): base_reward}  # an arm with another ensemble optimises its own reward

    def reward_of(arm: ExperimentConfig):
        if reward_key(arm) not in rewards:
            rewards[reward_key(arm)] = pipeline.reward_scorer(arm, workdir, rm_results, progress)
        return rewards[reward_key(arm)]

    results = {}
    for name, configs in arms.items():
        kind = arm_kind(name, configs[0])
        reward_model = reward_of(configs[0])
        directories = [os.path.join(workdir, name, f"seed{seed}") for seed in range(compare.seeds)]
        pending = [(arm, d) for arm, d in zip(configs, directories) if not pipeline.trained(arm, d)]
        if kind == "online" and compare.parallel_seeds and len(pending) > 1:  # trained together, evaluated below
            parallel_seeds.train_seeds([a for a, _ in pending], [d for _, d in pending], reward_model, gold,
                                       [pipeline.training_prompts(a) for a, _ in pending], progress)
        results[name] = [run_arm(name, kind, arm, directory, workdir, reward_model, gold, compare, progress)
                         for arm, directory in zip(configs, directories)]
        summary = write_summary(exp, compare, workdir, rm_results, results)  # after every arm: the arms so far
        preemption.between_stages(f"arm {name}")
    return summary


def selected_arms(compare: CompareConfig) -> tuple[tuple[str, dict], ...]:
    """The arms this invocation runs and reports: ``compare.only``'s, in the arms' order, or all of them."""
    return tuple((name, changes) for name, changes in compare.arms if not compare.only or name in compare.only)


def write_summary(exp: ExperimentConfig, compare: CompareConfig, workdir: str, rm_results: dict,
                  results: dict[str, list[dict]]) -> dict:
    """compare.json, frontier.png and compare.md of the arms in ``results``."""
    complete = list(results) == [name for name, _ in selected_arms(compare)]
    summary = {"config": to_dict(exp), "compare": to_dict(compare), "reward_model": rm_results.get("test", {}),
               "arms": summarise(results, compare), "complete": complete}
    write_json(os.path.join(workdir, "compare.json"), summary)
    plot_frontier(results, summary["arms"], os.path.join(workdir, "frontier.png"))
    write_atomic(os.path.join(workdir, "compare.md"), report(summary))
    return summary


def _mean(stat: dict, digits: int = 3) -> str:
    half = stat.get("half_width")
    return f"{stat['mean']:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def report(summary: dict) -> str:
    """compare.md: one row per arm (mean ± half-width of the interval over seeds), best-of-n per n, the fits."""
    compare, arms = summary["compare"], summary["arms"]
    level = f"{compare['confidence']:.0%}"
    lines = [
        "# Comparison" + ("" if summary["complete"] else
                          f" (so far: {len(arms)} of {len(compare['only'] or compare['arms'])} arms)"), "",
        *([f"Only the arms named in compare.only: {', '.join(compare['only'])} (of "
           f"{', '.join(name for name, _ in compare['arms'])}).", ""] if compare["only"] else []),
        f"Every arm starts from `{summary['config']['rl']['policy']}`; the online arms and best-of-n use one reward "
        f"model, the offline arms the preferences it was trained on. {compare['seeds']} seed(s) per arm; mean ± the "
        f"half-width of the {level} Student-t interval over seeds. Evaluation: "
        f"{summary['config']['rl']['eval_prompts']} held-out openings per seed, one sample each from the policy and "
        "the reference with the same keys; gold gain = gold score - the reference's.", "",
        "| arm | gold win rate | gold score | gold gain | reward-model score | KL (nats/seq) | gold gain per nat "
        "| samples drawn | gradient steps | wall s per seed |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        b = a["budget"]
        kl, gain = a["kl"]["mean"], a["gold_gain"]["mean"]
        samples = f"{b['samples_per_opening']} per opening" if a["kind"] == "best_of_n" else str(b["samples"])
        steps = f"{b['gradient_steps']} ({b['pairs']} pairs)" if a["kind"] == "offline" else str(b["gradient_steps"])
        lines.append(f"| {name} | {_mean(a['gold_win_rate'])} | {_mean(a['gold_score'])} | {_mean(a['gold_gain'])} | "
                     f"{_mean(a['rm_score'])} | {_mean(a['kl'], 2)} | {f'{gain / kl:.3f}' if kl > 0.01 else 'n/a'} | "
                     f"{samples} | {steps} | {_mean(a['seconds'], 0)} |")
    for name, a in arms.items():
        if "per_n" in a:
            lines += ["", f"## {name}: per n (KL analytic, log n - (n - 1)/n)", "",
                      "| n | KL | gold win rate | gold score | reward-model score |", "|---|---|---|---|---|"]
            lines += [f"| {r['n']} | {r['kl']:.3f} | {_mean(r['gold_win_rate'])} | {_mean(r['gold_score'])} | "
                      f"{_mean(r['rm_score'])} |" for r in a["per_n"]]
    fits = [(name, a["fit"]) for name, a in arms.items() if "fit" in a]
    if fits:
        lines += ["", "## Gao et al. 2022 forms fitted to score gained against d = sqrt(KL)", "",
                  "best-of-n R = d (alpha - beta d); RL R = d (alpha - beta log d); fitted on every point of the arm "
                  "(training iterations and evaluations, all seeds).", "",
                  "| arm | score | alpha | beta | R^2 | peak at d | points |", "|---|---|---|---|---|---|---|"]
        # R^2 = 1 - SS_res / SS_tot about the points' mean: the forms have no intercept, so it can be negative
        for name, fit in fits:
            for score, f in fit.items():
                r2 = "n/a" if f["r2"] is None else f"{f['r2']:.2f}"
                peak = "none" if f["peak_sqrt_kl"] is None else f"{f['peak_sqrt_kl']:.2f}" + (
                    " (past the points)" if f["peak_sqrt_kl"] > f["max_sqrt_kl"] else "")
                lines.append(f"| {name} | {score} | {f['alpha']:.3f} | {f['beta']:.3f} | {r2} | {peak} | "
                             f"{f['points']} |")
    lines += ["", "![gold and proxy score gained against sqrt(KL)](frontier.png)", ""]
    return "\n".join(lines)
