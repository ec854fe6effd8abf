"""The comparison: Gao et al.'s forms and the seed interval against direct computations, the arms' configs
against the standalone configs they stand for, and a tiny comparison end to end."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from rlhf_jax import frontier
from rlhf_jax.config import ConfigError, load_config, load_run_config, to_dict
from rlhf_jax.runs import comparison

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("form", frontier.FORMS)
def test_fit_recovers_the_form_it_was_drawn_from(form):
    d = np.linspace(0.1, 3.0, 25)
    alpha, beta = 0.4, 0.15
    gain = d * (alpha - beta * (d if form == "best_of_n" else np.log(d)))
    fit = frontier.fit(form, d ** 2, gain)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-9) and fit["beta"] == pytest.approx(beta, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0)
    peak = alpha / (2 * beta) if form == "best_of_n" else math.exp(alpha / beta - 1)
    assert fit["peak_sqrt_kl"] == pytest.approx(peak)
    np.testing.assert_allclose(frontier.curve(form, alpha, beta, d), gain, rtol=1e-12)


def test_fit_is_the_least_squares_solution_of_noisy_points():
    """Against the normal equations solved in float64 by hand: X^T X w = X^T y, X = [d, -d log d]."""
    rng = np.random.default_rng(0)
    kl = rng.uniform(0, 9, size=40)
    gain = rng.normal(size=40)
    d = np.sqrt(kl)
    columns = [d, -np.array([x * math.log(x) if x > 0 else 0.0 for x in d])]
    xtx = [[sum(a * b for a, b in zip(u, v)) for v in columns] for u in columns]
    xty = [sum(a * b for a, b in zip(u, gain)) for u in columns]
    det = xtx[0][0] * xtx[1][1] - xtx[0][1] * xtx[1][0]
    alpha = (xty[0] * xtx[1][1] - xtx[0][1] * xty[1]) / det
    beta = (xtx[0][0] * xty[1] - xtx[1][0] * xty[0]) / det
    fit = frontier.fit("rl", kl, gain)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-9) and fit["beta"] == pytest.approx(beta, rel=1e-9)


def test_mean_interval_is_students_t():
    values = [0.61, 0.70, 0.66]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    out = frontier.mean_interval(values, 0.95)
    assert out["mean"] == pytest.approx(mean) and out["half_width"] == pytest.approx(
        4.302652729911275 * sd / math.sqrt(3)
    )
    assert frontier.mean_interval([0.5])["half_width"] is None  # one seed: no interval


def test_seed_zero_arms_are_the_standalone_configs():
    """compare_sentiment's seed-0 PPO and GRPO arms are exactly configs/sentiment_quick.py and grpo_quick.py,
    its DPO arm dpo_quick.py at the online arms' 80 Adam steps, and compare_label_smoothing's DPO arm
    dpo_quick.py itself: the comparisons' numbers and the standalone runs' are the same runs."""
    exp, compare = load_run_config(os.path.join(CONFIGS, "compare_sentiment.py"))
    arms = dict(compare.arms)
    for arm, standalone in (("ppo", "sentiment_quick.py"), ("grpo", "grpo_quick.py")):
        standalone = load_config(os.path.join(CONFIGS, standalone))
        assert to_dict(comparison.arm_config(exp, arm, arms[arm], 0)) == to_dict(standalone)
    dpo_quick = to_dict(load_config(os.path.join(CONFIGS, "dpo_quick.py")))
    dpo_arm = to_dict(comparison.arm_config(exp, "dpo", arms["dpo"], 0))
    assert {k: v for k, v in dpo_arm["train"].items() if dpo_quick["train"][k] != v} == {
        "steps": 80, "warmup_steps": 8, "checkpoint_every": 80}
    assert {**dpo_arm, "train": None} == {**dpo_quick, "train": None}
    smoothing_exp, smoothing = load_run_config(os.path.join(CONFIGS, "compare_label_smoothing.py"))
    smoothing_arms = dict(smoothing.arms)
    assert to_dict(comparison.arm_config(smoothing_exp, "dpo", smoothing_arms["dpo"], 0)) == dpo_quick
    cdpo = to_dict(comparison.arm_config(smoothing_exp, "cdpo", smoothing_arms["cdpo"], 0))
    assert cdpo["train"] == {**dpo_quick["train"], "label_smoothing": 0.2}
    seed1 = comparison.arm_config(exp, "dpo", arms["dpo"], 1)
    assert (seed1.rl.seed, seed1.train.seed) == (1, 1)  # an offline arm's own trainer takes the seed too
    rm_arm = comparison.arm_config(exp, "rloo", arms["rloo"], 1)
    assert rm_arm.train == exp.train  # an online arm leaves the reward model's trainer alone


def test_bad_comparisons_are_refused_by_name():
    exp, _ = load_run_config(os.path.join(CONFIGS, "compare_quick.py"))
    with pytest.raises(ConfigError, match="compare.arms.grpo: config field 'rl.samples_per_prompt'"):
        comparison.arm_config(exp, "grpo", {"ppo": {"algorithm": "grpo", "samples_per_prompt": 1}}, 0)
    with pytest.raises(ConfigError, match="compare.seeds"):
        load_run_config(os.path.join(CONFIGS, "compare_quick.py"), ["--config.compare.seeds=0"])
    with pytest.raises(ConfigError, match="compare.bogus"):
        load_run_config(os.path.join(CONFIGS, "compare_quick.py"), ["--config.compare.bogus=1"])
    with pytest.raises(ConfigError, match="is a comparison"):
        load_config(os.path.join(CONFIGS, "compare_quick.py"))
    with pytest.raises(ConfigError, match="compare.only.*no arm named 'dapo_v2'"):
        load_run_config(os.path.join(CONFIGS, "compare_quick.py"), ["--config.compare.only=('ppo', 'dapo_v2')"])


def test_config_show_lists_the_compare_section():
    from rlhf_jax.config import describe

    text = describe(*load_run_config(os.path.join(CONFIGS, "compare_quick.py"), ["--config.compare.seeds=3"]))
    assert "compare.seeds = 3  # seeds per arm" in text and "rl.iterations = 4" in text


@pytest.mark.long
def test_tiny_comparison_end_to_end(tmp_path, tiny_policy):
    exp, compare = load_run_config(os.path.join(CONFIGS, "tiny_compare.py"),
                                   [f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}"])
    arms = tuple((name, {**changes, "model": {**changes["model"], "source": tiny_policy}} if name == "dpo"
                  else changes) for name, changes in compare.arms)
    compare = dataclasses.replace(compare, arms=arms)
    summary = comparison.run(exp, compare, str(tmp_path), progress=False)
    assert list(summary["arms"]) == ["ppo", "grpo", "dpo", "best_of_n"] and summary["complete"]
    for name, arm in summary["arms"].items():
        assert arm["seeds"] == 2 and arm["gold_win_rate"]["half_width"] is not None, name
        results = [json.loads((tmp_path / name / f"seed{s}" / "result.json").read_text()) for s in (0, 1)]
        assert results[0]["metrics"] != results[1]["metrics"], name  # the seeds are different runs
        win_rates = [r["metrics"]["gold_win_rate"] for r in results]
        assert arm["gold_win_rate"]["mean"] == pytest.approx(np.mean(win_rates))
    assert summary["arms"]["ppo"]["budget"] == {"samples": 2 * 16, "gradient_steps": 2 * 2 * 2}
    assert summary["arms"]["grpo"]["budget"]["samples"] == 2 * 4 * 4
    bon = summary["arms"]["best_of_n"]["per_n"]
    assert [r["n"] for r in bon] == [1, 2, 4] and bon[0]["gold_win_rate"]["mean"] == 0.5  # n = 1: the reference sample
    assert summary["arms"]["ppo"]["fit"]["gold"]["form"] == "rl"
    assert summary["arms"]["best_of_n"]["fit"]["gold"]["form"] == "best_of_n"
    text = (tmp_path / "compare.md").read_text()
    assert "| grpo |" in text and "| dpo |" in text and (tmp_path / "frontier.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "compare.json").read_text())["arms"]["dpo"]["kind"] == "offline"
    again = comparison.run(exp, compare, str(tmp_path), progress=False)  # every arm reused: the same numbers
    assert again["arms"] == summary["arms"]
    only = comparison.run(exp, dataclasses.replace(compare, only=("best_of_n", "grpo")), str(tmp_path), progress=False)
    assert list(only["arms"]) == ["grpo", "best_of_n"] and only["complete"]  # the arms' order, not only's
    assert only["arms"]["grpo"] == summary["arms"]["grpo"]
    assert "Only the arms named in compare.only: best_of_n, grpo" in (tmp_path / "compare.md").read_text()


def test_an_ensemble_arm_optimises_its_own_reward_and_the_rest_share_one():
    exp, compare = load_run_config(os.path.join(CONFIGS, "compare_ensemble.py"))
    arms = {name: comparison.arm_config(exp, name, changes, 0) for name, changes in compare.arms}
    assert comparison.reward_key(arms["ppo"]) == comparison.reward_key(exp) == "reward_model"
    assert comparison.reward_key(arms["ppo_ensemble"]) == (3, "pessimistic", 1.0)
    sentiment, full = load_run_config(os.path.join(CONFIGS, "compare_sentiment.py"))
    keys = {comparison.reward_key(comparison.arm_config(sentiment, name, changes, 0))
            for name, changes in full.arms}
    assert keys == {"reward_model", (3, "pessimistic", 1.0)}


def test_the_arithmetic_comparison_refuses_an_offline_arm(tmp_path):
    from rlhf_jax.runs.comparison import run

    exp, compare = load_run_config(os.path.join(CONFIGS, "compare_arith.py"))
    offline = dict(load_run_config(os.path.join(CONFIGS, "compare_sentiment.py"))[1].arms)["dpo"]
    compare = dataclasses.replace(compare, arms=(*compare.arms, ("dpo", offline)))
    with pytest.raises(ConfigError, match="compare.arms.dpo: the arithmetic task has no preference pairs"):
        run(exp, compare, str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)  # refused before any work
