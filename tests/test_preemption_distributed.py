"""Preemption with two processes (``rlhf-jax launch``, 2 x 4 simulated devices): a SIGTERM to one process
reaches both through JAX's preemption service, both save the same step and exit with status 75, and the
same command resumes to the uninterrupted run's outputs, bit for bit: in the reward model's (supervised)
training, in PPO, in GRPO."""

import os
import random
import shutil
import signal
import threading
import time

import jax
import numpy as np
import pytest
from conftest import CONFIGS
from test_distributed import MESH, launch, pids_running
from test_kill_anywhere import outputs

from rlhf_jax import preemption
from rlhf_jax.config import load_config
from rlhf_jax.launch import free_port
from rlhf_jax.runs import policy_training
from rlhf_jax.trained import restore

RNG = random.Random(28)


def overrides(policy, *extra):
    return [MESH, f"--config.feedback.policy={policy}", f"--config.rl.policy={policy}", "--config.train.steps=12",
            "--config.rl.iterations=8", *extra]


def rlhf_run(workdir, policy, *extra, preempt=None):
    """``rlhf-jax run`` of tiny_ppo.py on 2 processes; ``preempt`` = (process, ready): SIGTERM to that
    process, a random fraction of a second after ``ready(stderr so far)`` holds. Returns (status, stderr).

    JAX's notifier passes a SIGTERM on within about a second, and a tiny iteration takes one or two, so
    the runs have 8 iterations: a notice sent after the first is logged lands well before the last, and
    the run stops (a notice after the last step boundary lets the run finish, with status 0)."""
    port = free_port()
    process = launch("run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(workdir),
                     *overrides(policy, *extra), port=port)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    if preempt is not None:
        index, ready = preempt
        while process.poll() is None and not ready("".join(lines)):
            time.sleep(0.05)
        time.sleep(RNG.uniform(0.0, 0.5))
        for pid in pids_running(f"127.0.0.1:{port} --num-processes 2 --process-id {index}"):
            os.kill(pid, signal.SIGTERM)
    process.wait(timeout=600)
    reader.join(timeout=10)
    return process.returncode, "".join(lines)


def rows_in(path):
    def ready(_):
        return os.path.exists(path) and '"train"' in open(path).read()
    return ready


def same_parameters(a, b):
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.long
def test_sigterm_to_one_of_two_processes_in_reward_model_ppo_and_grpo_resumes_exactly(tmp_path, tiny_policy):
    code, err = rlhf_run(tmp_path / "straight", tiny_policy)
    assert code == 0, err[-3000:]
    # 1. Process 1 is told while the reward model trains: both stop at one step of it.
    code, err = rlhf_run(tmp_path / "stopped", tiny_policy,
                         preempt=(1, lambda err: "stage reward model training" in err))
    assert code == preemption.EXIT_STATUS, err[-3000:]
    assert "rlhf-jax: preempted: train reward_pairwise: stopped at step" in err
    # 2. Process 0 is told during PPO, after its first iteration is logged.
    code, err = rlhf_run(tmp_path / "stopped", tiny_policy, preempt=(0, rows_in(tmp_path / "stopped" / "rl" /
                                                                                "metrics.jsonl")))
    assert code == preemption.EXIT_STATUS, err[-3000:]
    assert "rlhf-jax: preempted: ppo: stopped at iteration" in err and "of 8" in err
    code, err = rlhf_run(tmp_path / "stopped", tiny_policy)
    assert code == 0, err[-3000:]
    assert outputs(tmp_path / "stopped") == outputs(tmp_path / "straight")
    exp = load_config(os.path.join(CONFIGS, "tiny_ppo.py"), overrides(tiny_policy))
    same_parameters(*(restore(str(tmp_path / name / "reward_model")).params
                           for name in ("straight", "stopped")))
    same_parameters(*(policy_training.restore(exp, str(tmp_path / name / "rl"))[1]
                           for name in ("straight", "stopped")))

    # 3. GRPO on the same reward model: process 1 told after the first logged iteration.
    grpo = ["--config.rl.algorithm='grpo'", "--config.rl.samples_per_prompt=4", "--config.rl.rollout_prompts=4",
            "--config.rl.kl_target=None"]
    for name in ("grpo_straight", "grpo_stopped"):
        for stage in ("feedback", "reward_model"):
            shutil.copytree(tmp_path / "straight" / stage, tmp_path / name / stage)
    code, err = rlhf_run(tmp_path / "grpo_straight", tiny_policy, *grpo)
    assert code == 0, err[-3000:]
    code, err = rlhf_run(tmp_path / "grpo_stopped", tiny_policy, *grpo,
                         preempt=(1, rows_in(tmp_path / "grpo_stopped" / "rl" / "metrics.jsonl")))
    assert code == preemption.EXIT_STATUS and "preempted: grpo: stopped at iteration" in err, err[-3000:]
    code, err = rlhf_run(tmp_path / "grpo_stopped", tiny_policy, *grpo)
    assert code == 0, err[-3000:]
    assert outputs(tmp_path / "grpo_stopped") == outputs(tmp_path / "grpo_straight")
    exp = load_config(os.path.join(CONFIGS, "tiny_ppo.py"), overrides(tiny_policy, *grpo))
    same_parameters(*(policy_training.restore(exp, str(tmp_path / name / "rl"))[1]
                           for name in ("grpo_straight", "grpo_stopped")))
