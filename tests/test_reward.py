"""Reward-model metrics against plain loops, and a tiny end-to-end `rlhf-jax run`."""

import json
import os

import numpy as np
import pytest

from rlhf_jax.config import load_config
from rlhf_jax.metrics import read_metrics
from rlhf_jax.rl import reward

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def spearman_loop(a, b):
    def ranks(v):
        out = []
        for x in v:
            below = sum(1 for y in v if y < x)
            equal = sum(1 for y in v if y == x)
            out.append(below + (equal + 1) / 2)
        return out

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def test_spearman_with_ties_matches_a_loop():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.normal(size=40)
    assert abs(reward.spearman(a, b) - spearman_loop(a, b)) < 1e-12
    assert reward.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)


def test_pair_metrics_on_a_hand_example():
    out = reward.pair_metrics(np.array([2.0, 1.0, 0.0, 3.0]), np.array([1.0, 2.0, 1.0, 1.0]),
                              np.array([0.5, 0.1, 0.2, 0.3]), np.array([0.1, 0.4, 0.2, 0.6]))
    assert out["label_accuracy"] == 0.5  # pairs 0 and 3
    # gold differs on pairs 0, 1, 3; the model orders 0 and 1 as gold does, not 3
    assert out["gold_accuracy"] == pytest.approx(2 / 3) and out["gold_pairs"] == 3
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(2 / 3)


def test_normalization_and_calibration():
    r = np.random.default_rng(1).normal(3.0, 2.0, 500)
    norm = reward.normalization(r)
    normalized = norm["gain"] * r + norm["bias"]
    assert abs(normalized.mean()) < 1e-9 and abs(normalized.std() - 1) < 1e-9
    table = reward.calibration(np.array([0.9, 0.9, 0.1, 0.6]))
    assert sum(row["count"] for row in table) == 8
    assert all(0 <= row["observed"] <= 1 for row in table)


def test_tiny_reward_run_end_to_end(tmp_path, tiny_policy):
    from rlhf_jax.runs.reward_training import run

    exp = load_config(os.path.join(CONFIGS, "tiny_rm.py"), [f"--config.feedback.policy='{tiny_policy}'"])
    results = run(exp, str(tmp_path), progress=False)
    preferences = tmp_path / "feedback" / "preferences.jsonl"
    rows = [json.loads(line) for line in preferences.read_text().splitlines()]
    assert 0 < len(rows) <= 80 * 6 and all(r["chosen"] != r["rejected"] for r in rows)  # 4 samples: 6 pairs each
    by_prompt = {}
    for r in rows:  # ids are s<seed>-<prompt>-<i><j>: every pair of one prompt is in one split
        by_prompt.setdefault(r["id"].rsplit("-", 1)[0], set()).add(r["split"])
    assert len(by_prompt) < len(rows) and all(len(splits) == 1 for splits in by_prompt.values())
    assert {"train", "validation", "test"} <= {r["split"] for r in rows}
    summary = json.loads((tmp_path / "feedback" / "summary.json").read_text())
    assert summary["rows"] == len(rows)
    test_rows = [
        r for r in read_metrics(str(tmp_path / "reward_model")) if r["split"] == "test" and "gold_accuracy" in r
    ]
    assert len(test_rows) == 1
    assert {"gold_accuracy", "label_accuracy", "spearman", "precision", "recall", "f1"} <= set(test_rows[0])
    assert (tmp_path / "reward_model" / "calibration.png").stat().st_size > 1000
    assert results["normalization"]["gain"] > 0
    # every stage's output is valid: a second run redoes nothing
    stamp = preferences.stat().st_mtime_ns
    again = run(exp, str(tmp_path), progress=False)
    assert preferences.stat().st_mtime_ns == stamp and again == json.loads(
        (tmp_path / "reward_model" / "evaluation.json").read_text()
    )
    assert (
        len([r for r in read_metrics(str(tmp_path / "reward_model")) if "gold_accuracy" in r and r["split"] == "test"])
        == 1
    )


def test_collect_cli(tmp_path, tiny_policy):
    import subprocess
    import sys

    out = tmp_path / "prefs.jsonl"
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "collect", "--policy", tiny_policy, "--pairs", "40",
                             "--response-tokens", "6", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    from rlhf_jax.data.formats import read_feedback

    rows = read_feedback(str(out), "preference")
    assert 0 < len(rows) <= 40 and f"{len(rows)} preference pairs" in result.stdout


def test_grouped_loss_equals_the_pairwise_loss_on_the_same_pairs():
    """Scoring each prompt's responses once and comparing all their pairs gives the pairwise loss."""
    import jax.numpy as jnp
    from flax import nnx

    from rlhf_jax.config import ModelConfig
    from rlhf_jax.models import build_model, load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    model = build_model(ModelConfig(family="bert", head="scalar", vocab_size=len(tokenizer), hidden_size=32,
                                    num_layers=1, num_heads=4, intermediate_size=64, pooling="mean"), seed=1)
    pairs = [("p1", "great", "bad"), ("p1", "great", "fine"), ("p1", "fine", "bad"), ("p2", "lovely", "awful"),
             ("p3", "ok", "meh"), ("p3", "meh", "dull")]
    examples = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    grouped = reward.tokenize_groups(reward.group_pairs(examples), tokenizer, 16)
    assert grouped["ids"].shape == (3, 3, 16) and grouped["pair_weights"].sum() == len(pairs)
    flat = reward.tokenize_pairs(examples, tokenizer, 16)
    as_jax = lambda arrays: {k: jnp.asarray(v) for k, v in arrays.items()}  # noqa: E731
    # jitted: eager calls would compile each operation of the model
    loss_g, metrics_g = nnx.jit(lambda m, b: reward.grouped(m, b, None))(model, as_jax(grouped))
    loss_p, metrics_p = nnx.jit(lambda m, b: reward.pairwise(m, b, None))(model, as_jax(flat))
    np.testing.assert_allclose(float(loss_g), float(loss_p), rtol=1e-5)
    assert float(metrics_g["correct_sum"]) == float(metrics_p["correct_sum"])
    assert float(metrics_g["count"]) == float(metrics_p["count"]) == len(pairs)
