"""Supervised training: exact resume, 8 devices = 1 device, the CLI, and config errors that name the field."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax.config import ConfigError, load_config
from rlhf_jax.metrics import read_metrics
from rlhf_jax.runs.supervised import train

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def config(name="tiny_cls", *overrides):
    return load_config(os.path.join(CONFIGS, f"{name}.py"), list(overrides))


def without_timing(rows):
    return [{k: v for k, v in row.items() if k != "seconds_per_step"} for row in rows]


def leaves(params):
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_resume_is_exact(tmp_path):
    exp = config("tiny_mlm")  # MLM: the PRNG key (masking) must be resumed too
    straight = train(exp, str(tmp_path / "straight"), progress=False)
    first = train(exp, str(tmp_path / "resumed"), stop_at=4, progress=False)
    assert first["step"] == 4
    resumed = train(exp, str(tmp_path / "resumed"), progress=False)
    assert resumed["step"] == 8
    assert without_timing(read_metrics(str(tmp_path / "resumed"))) == without_timing(
        read_metrics(str(tmp_path / "straight"))
    )
    for a, b in zip(leaves(straight["params"]), leaves(resumed["params"]), strict=True):
        np.testing.assert_array_equal(a, b)
    # the train rows really moved the model: the final params differ from the untrained ones
    untrained = train(
        config("tiny_mlm", "--config.train.steps=1", "--config.train.warmup_steps=0"),
        str(tmp_path / "one"),
        progress=False,
    )
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(untrained["params"]), leaves(straight["params"])))


def test_eight_devices_match_one(tmp_path):
    assert jax.device_count() == 8
    one = train(config("tiny_cls", "--config.mesh.shape={'data': 1, 'fsdp': 1, 'tensor': 1}"),
                str(tmp_path / "one"), progress=False)
    eight = train(config("tiny_cls", "--config.mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 2}"),
                  str(tmp_path / "eight"), progress=False)
    sharded = [x for x in jax.tree.leaves(eight["params"]) if len(x.sharding.device_set) == 8 and
               x.addressable_shards[0].data.size < x.size]
    assert len(sharded) > 10  # parameters really were split across devices
    for a, b in zip(leaves(one["params"]), leaves(eight["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rows_one, rows_eight = read_metrics(str(tmp_path / "one")), read_metrics(str(tmp_path / "eight"))
    for a, b in zip(rows_one, rows_eight, strict=True):
        for key in ("loss", "accuracy"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a, b)


def test_sft_loss_falls_and_evaluation_is_logged(tmp_path):
    exp = config("tiny_sft", "--config.train.steps=12", "--config.train.learning_rate=3e-3")
    result = train(exp, str(tmp_path / "sft"), progress=False)
    rows = read_metrics(str(tmp_path / "sft"))
    validation = [r for r in rows if r["split"] == "validation"]
    assert validation[0]["step"] == 0 and validation[-1]["step"] == 12
    assert validation[-1]["perplexity"] < validation[0]["perplexity"]
    assert {"test"} <= {r["split"] for r in rows}
    assert result["metrics"]["test"]["perplexity"] > 1


def test_mlm_logs_the_unigram_baseline(tmp_path):
    train(config("tiny_mlm", "--config.train.steps=2"), str(tmp_path / "mlm"), progress=False)
    row = [r for r in read_metrics(str(tmp_path / "mlm")) if r["split"] == "validation"][-1]
    assert 0 < row["unigram_accuracy"] < 1 and row["unigram_perplexity"] > 1 and row["count"] > 0


def check_export_matches_checkpoint(exp, workdir, exported):
    """transformers' model from the exported directory gives the checkpoint's logits."""
    import torch
    import transformers
    from flax import nnx

    from rlhf_jax.trained import restore

    trained = restore(workdir, exp)
    ids = np.array([[101, 2023, 3185, 2001, 2307, 102]], np.int32)
    ours = np.asarray(nnx.merge(trained.graphdef, trained.params)(ids, np.ones_like(ids)))
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_cli_train_then_eval(tmp_path):
    workdir = str(tmp_path / "cli")
    base = [sys.executable, "-m", "rlhf_jax.cli"]
    trained = subprocess.run(base + ["train", "--config", os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", workdir,
                                     "--config.train.steps=4"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "step 4 test:" in trained.stdout and "f1=" in trained.stdout
    rows = read_metrics(workdir)
    assert {"precision", "recall", "f1", "accuracy"} <= set(rows[-1])
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.path.getsize(os.path.join(workdir, "training.png")) > 1000
    evaluated = subprocess.run(base + ["eval", "--config", os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", workdir,
                                       "--config.train.steps=4"], capture_output=True, text=True)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    # Evaluating the final checkpoint reproduces the end-of-training test exactly: the same printed line, and
    # metrics.jsonl does not take the equal row twice.
    line = [text for text in trained.stdout.splitlines() if text.startswith("step 4 test:")]
    assert line and line == [text for text in evaluated.stdout.splitlines() if text.startswith("step 4 test:")]
    assert len([r for r in read_metrics(workdir) if r["split"] == "test"]) == 1
    exported = subprocess.run(base + ["export", "--config", os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", workdir,
                                      "--config.train.steps=4", "--out", str(tmp_path / "exported")],
                              capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-2000:]
    check_export_matches_checkpoint(config("tiny_cls", "--config.train.steps=4"), workdir, str(tmp_path / "exported"))
    changed = subprocess.run(base + ["train", "--config", os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", workdir,
                                     "--config.train.learning_rate=0.5"], capture_output=True, text=True)
    assert changed.returncode == 2 and "train.learning_rate" in changed.stderr
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["learning_rate"] == 1e-3  # the failed resume changed nothing


@pytest.mark.parametrize("override,field", [
    ("--config.model.head='scalar'", "model.head"),
    ("--config.model.head='unknown'", "model.head"),
    ("--config.train.batch_size=6", "train.batch_size"),
    ("--config.data.source='no-such-asset'", "no-such-asset"),
    ("--config.train.colour=1", "train.colour"),
])
def test_bad_config_fails_at_start_naming_the_field(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        exp = config("tiny_cls", override, "--config.mesh.shape={'data': 4, 'fsdp': 1, 'tensor': 1}")
        train(exp, str(tmp_path / "bad"), progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()
