"""Preemption in one process: a SIGTERM or SIGINT at a random step of the supervised trainer, the reward
model, PPO and GRPO saves that step and stops; the run resumed from it equals the uninterrupted one bit for
bit. Damaged checkpoints are named, skipped for the one before and set aside; a full disk leaves the
checkpoints before it. (Two processes: test_distributed.py; SIGKILL anywhere: test_kill_anywhere.py.)"""

import glob
import itertools
import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import CONFIGS, ONE_DEVICE, LengthGold
from conftest import tiny_rl as tiny

from rlhf_jax import preemption
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.config import load_config
from rlhf_jax.metrics import TIMING, read_metrics
from rlhf_jax.models.convert import CheckpointError
from rlhf_jax.runs import policy_training, reward_training, supervised

SEED = 28  # the number: the random steps below are drawn from it


@pytest.fixture(autouse=True)
def handlers():
    preemption.install()
    yield
    preemption.uninstall()


def signal_at(monkeypatch, call: int, signum=signal.SIGTERM):
    """A real ``signum`` to this process just before the ``call``-th step-boundary check of the run."""
    check, calls = preemption.stop_requested, itertools.count(1)

    def stop_requested():
        if next(calls) == call:
            signal.raise_signal(signum)
        return check()

    monkeypatch.setattr(preemption, "stop_requested", stop_requested)


def rows(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(str(workdir))]


def assert_same_leaves(a, b):
    a, b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def classifier(*overrides):
    return load_config(os.path.join(CONFIGS, "tiny_cls.py"), [*ONE_DEVICE, "--config.train.log_every=2",
                                                               "--config.train.checkpoint_every=4", *overrides])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted tiny classifier run (8 steps)."""
    workdir = tmp_path_factory.mktemp("straight")
    return workdir, supervised.train(classifier(), str(workdir), progress=False)


@pytest.mark.parametrize("signum,draw", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_a_signal_at_a_random_step_of_the_supervised_trainer_resumes_exactly(tmp_path, monkeypatch, straight,
                                                                              signum, draw):
    step = random.Random(SEED + draw).randint(1, 7)  # a boundary inside the run, inside a logging window or not
    signal_at(monkeypatch, step, signum)
    with pytest.raises(preemption.Preempted, match=f"stopped at step {step} of 8"):
        supervised.train(classifier(), str(tmp_path), progress=False)
    assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == step
    monkeypatch.undo()
    preemption.reset()
    resumed = supervised.train(classifier(), str(tmp_path), progress=False)
    assert_same_leaves(resumed["params"], straight[1]["params"])
    assert rows(tmp_path) == rows(straight[0])  # every train row too: an open logging window is resumed


def test_a_second_signal_during_the_save_lets_it_finish(tmp_path, monkeypatch, straight, caplog):
    signal_at(monkeypatch, 3)
    save_now = Checkpointer.save_now

    def interrupted_save(self, *args):
        signal.raise_signal(signal.SIGTERM)  # the second notice arrives while the checkpoint is written
        save_now(self, *args)

    monkeypatch.setattr(Checkpointer, "save_now", interrupted_save)
    with caplog.at_level(logging.WARNING, "rlhf_jax"), pytest.raises(preemption.Preempted):
        supervised.train(classifier(), str(tmp_path), progress=False)
    assert "a checkpoint is being written; it completes first" in caplog.text
    monkeypatch.undo()
    preemption.reset()
    assert_same_leaves(supervised.train(classifier(), str(tmp_path), progress=False)["params"], straight[1]["params"])


def test_a_second_signal_outside_a_save_stops_at_once():
    signal.raise_signal(signal.SIGTERM)
    assert preemption.stop_requested()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received twice"):
        signal.raise_signal(signal.SIGTERM)


def test_a_signal_at_a_random_step_of_the_reward_model_resumes_exactly(tmp_path, monkeypatch, tiny_policy):
    exp = load_config(os.path.join(CONFIGS, "tiny_rm.py"), [f"--config.feedback.policy={tiny_policy}", *ONE_DEVICE,
                                                            "--config.train.steps=8"])
    straight = reward_training.run(exp, str(tmp_path / "straight"), progress=False)
    # Check 1 is the boundary after the collection; checks 2-8 follow the reward model's steps 1-7.
    step = random.Random(SEED).randint(1, 7)
    signal_at(monkeypatch, step + 1)
    with pytest.raises(preemption.Preempted, match=f"stopped at step {step} of 8"):
        reward_training.run(exp, str(tmp_path / "stopped"), progress=False)
    monkeypatch.undo()
    preemption.reset()
    resumed = reward_training.run(exp, str(tmp_path / "stopped"), progress=False)
    assert resumed == straight  # held-out accuracy, calibration, normalisation
    for name in ("feedback/preferences.jsonl", "feedback/summary.json"):
        assert (tmp_path / "stopped" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert rows(tmp_path / "stopped" / "reward_model") == rows(tmp_path / "straight" / "reward_model")


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_signal_at_a_random_iteration_of_online_rl_resumes_exactly(tmp_path, monkeypatch, tiny_policy, prompts,
                                                                     reward_model, algorithm):
    extra = ["--config.rl.algorithm='grpo'", "--config.rl.samples_per_prompt=4", "--config.rl.rollout_prompts=4",
             "--config.rl.kl_target=None"] if algorithm == "grpo" else []
    exp = tiny(tiny_policy, *ONE_DEVICE, "--config.rl.iterations=5", *extra)
    straight = policy_training.train(exp, str(tmp_path / "straight"), reward_model, LengthGold(), prompts,
                                     progress=False)
    iteration = random.Random(SEED).randint(1, 4)
    signal_at(monkeypatch, iteration)
    with pytest.raises(preemption.Preempted, match=f"{algorithm}: stopped at iteration {iteration} of 5"):
        policy_training.train(exp, str(tmp_path / "stopped"), reward_model, LengthGold(), prompts, progress=False)
    monkeypatch.undo()
    preemption.reset()
    resumed = policy_training.train(exp, str(tmp_path / "stopped"), reward_model, LengthGold(), prompts,
                                    progress=False)
    assert_same_leaves(resumed["state"], straight["state"])  # parameters, Adam, PRNG key, KL coefficient
    assert rows(tmp_path / "stopped") == rows(tmp_path / "straight")
    assert (tmp_path / "stopped" / "samples.jsonl").read_text() == (tmp_path / "straight" / "samples.jsonl").read_text()


def test_rlhf_jax_train_exits_75_on_sigterm_from_outside(tmp_path):
    """A real SIGTERM from outside, at whatever moment the run has reached after its first logged row."""
    command = [sys.executable, "-m", "rlhf_jax.cli", "train", "--config", os.path.join(CONFIGS, "tiny_cls.py"),
               "--workdir", str(tmp_path), *ONE_DEVICE, "--config.train.log_every=2",
               "--config.train.checkpoint_every=4", "--config.train.steps=400"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    metrics = tmp_path / "metrics.jsonl"
    while process.poll() is None and not any('"train"' in line for line in
                                             (metrics.read_text().splitlines() if metrics.exists() else [])):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == preemption.EXIT_STATUS, err[-2000:]
    assert "rlhf-jax: preempted: train classification: stopped at step" in err
    step = int(err.split("stopped at step ")[1].split()[0])
    assert 2 <= step < 400 and Checkpointer(str(tmp_path / "checkpoints")).latest_step() == step
    last = read_metrics(str(tmp_path))[-1]
    assert last["step"] <= step  # the metrics were flushed up to the stop, none past it


# Damage: the run stopped after step 6 (checkpoints 4 and 6 kept), then checkpoint 6 damaged one way.
def truncate_a_data_file(step_dir):
    path = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def remove_a_shard(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state", "ocdbt.process_0"))


def garble_the_tree_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": ')


def misstate_the_data_position(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    meta["data_position"] = 5
    with open(path, "w") as f:
        json.dump(meta, f)


def remove_the_commit_marker(step_dir):
    os.remove(os.path.join(step_dir, "commit_success.txt"))


DAMAGE = {"truncated file": (truncate_a_data_file, "cut short"), "missing shard": (remove_a_shard, "missing"),
          "wrong metadata": (garble_the_tree_metadata, "cannot restore"),
          "wrong data position": (misstate_the_data_position, "data position 5 does not match"),
          "no commit marker": (remove_the_commit_marker, "no commit_success.txt")}


@pytest.fixture(scope="module")
def stopped_at_6(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stopped_at_6")
    supervised.train(classifier("--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3"),
                     str(workdir), stop_at=6, progress=False)
    assert Checkpointer(str(workdir / "checkpoints")).steps() == [2, 4, 6]
    return workdir


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_skipped_and_set_aside(tmp_path, stopped_at_6, straight, kind, caplog):
    damage, message = DAMAGE[kind]
    workdir = tmp_path / "run"
    shutil.copytree(stopped_at_6, workdir)
    damage(str(workdir / "checkpoints" / "6"))
    with caplog.at_level(logging.WARNING, "rlhf_jax"):
        out = supervised.train(classifier("--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3"),
                               str(workdir), progress=False)
    assert f"damaged checkpoint skipped: {workdir}/checkpoints/6" in caplog.text and message in caplog.text
    assert os.path.isdir(f"{workdir}/checkpoints.damaged/6")  # kept for a person to look at
    assert Checkpointer(str(workdir / "checkpoints")).steps() == [4, 6, 8]  # 6 and 8 written again
    assert_same_leaves(out["params"], straight[1]["params"])  # as if it had never been damaged
    assert rows(workdir) == rows(straight[0])


def test_no_intact_checkpoint_is_an_error_that_names_each_and_moves_nothing(tmp_path, stopped_at_6):
    shutil.copytree(stopped_at_6, tmp_path / "run")
    for step in (2, 4, 6):
        remove_the_commit_marker(str(tmp_path / "run" / "checkpoints" / str(step)))
    with pytest.raises(CheckpointError, match="no intact checkpoint") as error:
        supervised.train(classifier("--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3"),
                         str(tmp_path / "run"), progress=False)
    assert all(f"checkpoints/{step}: no commit_success.txt" in str(error.value) for step in (2, 4, 6))
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4", "6"]


@pytest.fixture
def file_size_limit():
    """``limit(n)``: no file of this process grows past n bytes (EFBIG, as a full disk gives ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_a_full_disk_during_a_save_is_a_clear_error_and_keeps_the_checkpoint_before(tmp_path, monkeypatch, straight,
                                                                                   file_size_limit):
    save = Checkpointer.save

    def save_on_a_full_disk(self, step, *args):
        if step == 8:  # the disk fills up after checkpoint 4 is written: the weights' file no longer fits
            self.wait()
            file_size_limit(64 * 1024)
        save(self, step, *args)

    monkeypatch.setattr(Checkpointer, "save", save_on_a_full_disk)
    with pytest.raises(CheckpointError, match="checkpoints/8: cannot write this checkpoint .*the checkpoints before "
                                              "it are untouched"):
        supervised.train(classifier(), str(tmp_path), progress=False)
    file_size_limit(resource.RLIM_INFINITY)
    monkeypatch.undo()
    assert Checkpointer(str(tmp_path / "checkpoints")).steps() == [4]
    resumed = supervised.train(classifier(), str(tmp_path), progress=False)  # space again: from step 4
    assert_same_leaves(resumed["params"], straight[1]["params"])
    assert rows(tmp_path) == rows(straight[0])


def test_a_full_disk_during_a_metrics_write_is_a_clear_error_and_leaves_whole_lines(tmp_path, file_size_limit):
    from rlhf_jax.metrics import MetricsWriter

    writer = MetricsWriter(str(tmp_path))
    writer.write(1, "train", {"loss": 1.0})
    size = os.path.getsize(tmp_path / "metrics.jsonl")
    file_size_limit(size + 10)  # room for 10 bytes of the next line
    with pytest.raises(OSError, match="metrics.jsonl: cannot append a metrics row"):
        writer.write(2, "train", {"loss": 0.5, "accuracy": 0.75})
    file_size_limit(resource.RLIM_INFINITY)
    assert os.path.getsize(tmp_path / "metrics.jsonl") == size
    assert read_metrics(str(tmp_path)) == [{"step": 1, "split": "train", "loss": 1.0}]
    writer.close()
