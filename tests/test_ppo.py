"""PPO: a learning rate of 0 moves nothing, exact resume, 8 devices against 1, the tiny end-to-end run."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import CONFIGS, EIGHT_DEVICES, ONE_DEVICE, LengthGold, policy_iteration
from conftest import tiny_rl as tiny

from rlhf_jax.metrics import read_metrics
from rlhf_jax.runs import policy_training


def one_iteration(exp, prompts, scores_B=None):
    """(parameters before, rollout, scores, new state, metrics) of the first PPO iteration."""
    return policy_iteration(exp, prompts, scores_B)[1:]


def test_learning_rate_zero_keeps_ratio_one_and_moves_nothing(tiny_policy, prompts):
    exp = tiny(tiny_policy, "--config.rl.learning_rate=0.0", *ONE_DEVICE)
    before, experience, _, state, metrics = one_iteration(exp, prompts)
    # Every minibatch of every epoch recomputes the rollout's log-probs: the ratio is 1 up to float32
    # rounding (XLA compiles the rollout's forward and the update's separately, and its CPU GEMMs may
    # sum in another order: |log ratio| was at most 1e-6 here, so mean 0.5 log^2 ratio < 1e-12).
    assert metrics["ratio"] == 1.0 and metrics["first_ratio"] == 1.0
    assert metrics["approx_kl"] < 1e-12 and metrics["clip_fraction"] == 0.0
    assert metrics["grad_norm"] > 0  # there was a gradient; it just was not applied
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    assert experience.response_mask_BxN.sum() > 0


def test_value_head_starts_at_zero_and_learns(tiny_policy, prompts):
    exp = tiny(tiny_policy, *ONE_DEVICE)
    _, experience, _, state, metrics = one_iteration(exp, prompts)
    assert np.all(experience.values_BxN == 0)  # zero-initialised head
    assert np.any(np.asarray(state.params["value_head"]["kernel"][...]) != 0)
    assert metrics["approx_kl"] > 0 and np.isfinite(metrics["loss"])


def test_separate_value_model(tiny_policy, prompts):
    exp = tiny(tiny_policy, "--config.rl.value='separate'", *ONE_DEVICE)
    _, experience, _, state, metrics = one_iteration(exp, prompts)
    assert np.all(experience.values_BxN == 0) and np.isfinite(metrics["value_loss"])
    assert "value_model" in state.params and state.params.get("value_head") is None


def test_eight_devices_match_one(tiny_policy, prompts):
    """One PPO iteration on a 2x2x2 (data x fsdp x tensor) mesh equals the 1-device result."""
    _, exp1, scores, state1, metrics1 = one_iteration(tiny(tiny_policy, *ONE_DEVICE), prompts)
    _, exp8, _, state8, metrics8 = one_iteration(tiny(tiny_policy, *EIGHT_DEVICES), prompts, scores)
    np.testing.assert_array_equal(exp1.ids_BxT, exp8.ids_BxT)  # the same samples
    np.testing.assert_allclose(exp8.logp_BxN, exp1.logp_BxN, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exp8.ref_logp_BxN, exp1.ref_logp_BxN, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    for name in ("loss", "policy_loss", "value_loss", "kl", "approx_kl", "kl_coef"):
        np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_resume_equals_uninterrupted(tmp_path, tiny_policy, prompts, reward_model):
    exp = tiny(tiny_policy, *ONE_DEVICE)
    straight = policy_training.train(exp, str(tmp_path / "a"), reward_model, LengthGold(), prompts, progress=False)
    policy_training.train(exp, str(tmp_path / "b"), reward_model, LengthGold(), prompts, stop_at=2, progress=False)
    assert len(read_metrics(str(tmp_path / "b"))) == 2
    resumed = policy_training.train(exp, str(tmp_path / "b"), reward_model, LengthGold(), prompts, progress=False)
    a, b = jax.device_get(straight["state"]), jax.device_get(resumed["state"])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_iteration"} for r in rows]  # noqa: E731
    assert strip(read_metrics(str(tmp_path / "a"))) == strip(read_metrics(str(tmp_path / "b")))
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()
    assert int(a.step) == exp.rl.iterations and float(a.kl_coef) != exp.rl.kl_coef  # the controller moved
    assert (tmp_path / "a" / "training.png").stat().st_size > 1000


def test_resume_refuses_a_changed_config(tmp_path, tiny_policy, prompts, reward_model):
    from rlhf_jax.config import ConfigError

    exp = tiny(tiny_policy, *ONE_DEVICE)
    policy_training.train(exp, str(tmp_path), reward_model, LengthGold(), prompts, stop_at=2, progress=False)
    with pytest.raises(ConfigError, match="rl.learning_rate"):
        policy_training.train(tiny(tiny_policy, "--config.rl.learning_rate=0.5", *ONE_DEVICE), str(tmp_path),
                          reward_model, LengthGold(), prompts, progress=False)


def test_tiny_rlhf_run_end_to_end(tmp_path, tiny_policy):
    command = [sys.executable, "-m", "rlhf_jax.cli", "run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"),
               "--workdir", str(tmp_path), f"--config.rl.policy={tiny_policy}",
               f"--config.feedback.policy={tiny_policy}"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "eval"]
    assert len(rows) == 1
    assert {"gold_win_rate", "gold_score", "reference_gold_score", "rm_score", "kl"} <= set(rows[0])
    assert 0 <= rows[0]["gold_win_rate"] <= 1 and rows[0]["prompts"] == 24
    report = (tmp_path / "report.md").read_text()
    assert "gold win rate" in report and "rl/training.png" in report
    train_rows = [r for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for name in ("score", "gold_score", "kl", "entropy", "clip_fraction", "approx_kl", "value_loss",
                 "explained_variance", "kl_coef", "seconds_per_iteration"):
        assert all(np.isfinite(r[name]) for r in train_rows), name
    # a second run reuses every stage
    evaluation = json.loads((tmp_path / "rl" / "evaluation.json").read_text())
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "rl" / "evaluation.json").read_text()) == evaluation
    assert len([r for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "eval"]) == 1


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_seeds_in_parallel_equal_each_seed_alone(tmp_path, tiny_policy, prompts, reward_model, algorithm):
    """Seeds 0 and 3 as one vmapped program: seed 3's samples, metrics and parameters are those of seed 3
    run alone (float32 tolerance), and its workdir holds what the run alone writes; after seed 3's last
    checkpoint is lost, both resume from the last iteration they share and end the same."""
    from rlhf_jax.runs.parallel_seeds import train_seeds

    group = (["--config.rl.algorithm=grpo", "--config.rl.rollout_prompts=4", "--config.rl.samples_per_prompt=4",
              "--config.rl.kl_target=None"] if algorithm == "grpo" else [])
    exps = [tiny(tiny_policy, f"--config.rl.seed={seed}", "--config.rl.iterations=3", *group) for seed in (0, 3)]
    workdirs = [str(tmp_path / "s0"), str(tmp_path / "s3")]
    train_seeds(exps, workdirs, reward_model, LengthGold(), [prompts, prompts], progress=False)
    shutil.rmtree(tmp_path / "s3" / "checkpoints" / "3")  # seed 3's last save lost: both resume from iteration 2
    train_seeds(exps, workdirs, reward_model, LengthGold(), [prompts, prompts], progress=False)
    alone = policy_training.train(exps[1], str(tmp_path / "alone"), reward_model, LengthGold(), prompts, progress=False)

    def samples(name):
        return [(r["prompt"], r["response"]) for r in map(json.loads, (tmp_path / name / "samples.jsonl").open())]

    assert samples("s3") == samples("alone") and samples("s0") != samples("s3")  # the same draws; seeds differ
    parallel, single = read_metrics(str(tmp_path / "s3")), read_metrics(str(tmp_path / "alone"))
    assert [r["step"] for r in parallel] == [r["step"] for r in single] == [1, 2, 3]
    for p, s in zip(parallel, single):
        for name in ("loss", "policy_loss", "kl", "score", "gold_score", "kl_coef", "entropy"):
            np.testing.assert_allclose(p[name], s[name], rtol=1e-4, atol=1e-6, err_msg=name)
    restored = policy_training.restore(exps[1], str(tmp_path / "s3"))[1]
    for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)),
                    jax.tree.leaves(jax.device_get(alone["state"].params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
