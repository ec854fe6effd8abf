"""Multi-process start-up: two processes with four simulated CPU devices each form one 8-device run
through ``rlhf-jax launch``, and a dead peer ends the run with a clear error instead of a hang."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from rlhf_jax.distributed import DistributedError, ProcessSetup
from rlhf_jax.launch import free_port


def launch(*command, port=None, timeout=180):
    args = [sys.executable, "-m", "rlhf_jax.cli", "launch", "--processes", "2", "--devices-per-process", "4"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the test session's 8 devices
    return subprocess.Popen(args + (["--port", str(port)] if port else []) + ["--", *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_of_four_devices_compute_as_one_run_of_eight():
    process = launch("devices")
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    view = json.loads(out.strip().splitlines()[-1])  # process 0's line
    assert (view["process_count"], view["local_devices"], view["devices"]) == (2, 4, 8)
    assert view["sum_of_rows"] == view["expected_sum"] == 4 * 1 + 4 * 2  # both processes' rows were summed


def pids_running(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (read from /proc, no pgrep needed)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_a_killed_process_stops_the_run_with_a_clear_error_within_60_s():
    port = free_port()
    process = launch("devices", "--hold", "300", port=port)
    marker = f"127.0.0.1:{port} --num-processes 2 --process-id 1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until both processes have joined (process 0 printed its view)
        line = process.stdout.readline()
        if line.startswith("{"):
            break
    peer = pids_running(marker)
    assert len(peer) == 1, peer
    killed_at = time.monotonic()
    os.kill(peer[0], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - killed_at < 60
    assert process.returncode != 0
    assert "process 1 killed by signal 9; stopping the other 1" in err
    assert pids_running(f"127.0.0.1:{port} --num-processes") == []  # none left behind


@pytest.mark.parametrize("flags,message", [
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2}, "missing --process-id"),
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, "--process-id 2"),
    ({"auto": True, "num_processes": 2}, "--auto-distributed takes no --num-processes"),
])
def test_an_incomplete_process_setup_names_the_flag(flags, message):
    with pytest.raises(DistributedError, match=message):
        ProcessSetup.from_flags(**flags, environ={})


def test_the_process_setup_can_come_from_the_environment():
    environ = {"RLHF_JAX_COORDINATOR": "10.0.0.1:8476", "RLHF_JAX_NUM_PROCESSES": "4", "RLHF_JAX_PROCESS_ID": "3"}
    assert ProcessSetup.from_flags(environ=environ) == ProcessSetup("10.0.0.1:8476", 4, 3)
    assert not ProcessSetup.from_flags(environ={}).multi_process


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
MESH = "--config.mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 2}"


def run_cli(command, processes):
    """``rlhf-jax COMMAND`` as 2 processes x 4 devices through ``rlhf-jax launch``, or 1 process x 8 devices."""
    if processes == 2:
        process = launch(*command)
    else:
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
        process = subprocess.Popen([sys.executable, "-m", "rlhf_jax.cli", *command], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def train(workdir, *extra, processes=2):
    """The tiny supervised run on a data 2 x fsdp 2 x tensor 2 mesh: 2 processes x 4 devices through
    ``rlhf-jax launch``, or 1 process x 8 devices."""
    command = ["train", "--config", os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", str(workdir), MESH, *extra]
    run_cli(command, processes)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")} for line in f]


def assert_close(rows, expected):
    assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in expected]
    for row, want in zip(rows, expected):
        for name, value in want.items():
            if name not in ("step", "split"):
                assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (row["step"], row["split"], name)


@pytest.mark.long
def test_supervised_run_two_processes_equal_one_and_resume_across_topologies(tmp_path):
    two = train(tmp_path / "two")
    one = train(tmp_path / "one", processes=1)
    # Every logged loss and metric, to float32 rounding (the all-reduce order differs); each row once, so
    # only process 0 wrote.
    assert_close(two, one)
    # Stopped after 4 steps and resumed, both with 2 processes: bit for bit the uninterrupted 2-process run.
    train(tmp_path / "resumed", "--stop-after", "4")
    shutil.copytree(tmp_path / "resumed", tmp_path / "moved")  # the same stopped run, continued elsewhere
    assert train(tmp_path / "resumed") == two
    # A 2-process checkpoint continued by 1 process of 8 devices (mesh from the config, not the checkpoint).
    assert_close(train(tmp_path / "moved", processes=1), two)


def rlhf_run(workdir, policy, processes, config="tiny_ppo.py"):
    """The tiny pipeline (collect feedback, reward model, 2 PPO iterations, evaluation; or only the first
    three with tiny_rm.py) on the data 2 x fsdp 2 x tensor 2 mesh."""
    command = ["run", "--config", os.path.join(CONFIGS, config), "--workdir", str(workdir), MESH,
               f"--config.feedback.policy={policy}"]
    if config == "tiny_ppo.py":
        command += [f"--config.rl.policy={policy}", "--config.rl.iterations=2"]
    run_cli(command, processes)
    with open(os.path.join(workdir, "reward_model", "evaluation.json")) as f:
        reward_model = json.load(f)
    if config != "tiny_ppo.py":
        return reward_model, None, None
    with open(os.path.join(workdir, "rl", "evaluation.json")) as f:
        evaluation = json.load(f)
    with open(os.path.join(workdir, "rl", "metrics.jsonl")) as f:
        ppo_rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("seconds")} for line in f]
    return reward_model, ppo_rows, evaluation


@pytest.mark.long
def test_reward_model_and_ppo_two_processes_equal_one(tmp_path, tiny_policy):
    import shutil

    import jax
    import numpy as np

    from rlhf_jax.config import load_config
    from rlhf_jax.runs import policy_training

    two = rlhf_run(tmp_path / "two", tiny_policy, 2)
    # Reward model (feedback collected by process 0, trained by both, each scoring its block of the held-out
    # rows) against one process: the held-out pair metrics and the normalisation's gain. Not its bias
    # (-mean / std): the reward's offset gets no gradient from Bradley-Terry, only rounding noise, which
    # Adam scales up to steps of the learning rate's size, differently on each topology.
    reward_model = rlhf_run(tmp_path / "one_rm", tiny_policy, 1, config="tiny_rm.py")[0]
    for split in ("validation", "test"):
        for name, value in reward_model[split].items():
            assert two[0][split][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, name)
    assert two[0]["normalization"]["gain"] == pytest.approx(reward_model["normalization"]["gain"], rel=1e-4)
    # PPO on that same reward model (its normalisation multiplies the tiny model's rounding by 2e4): one
    # process reuses the 2-process run's feedback and reward model, then runs PPO and the evaluation.
    for stage in ("feedback", "reward_model"):
        shutil.copytree(tmp_path / "two" / stage, tmp_path / "one" / stage)
    one = rlhf_run(tmp_path / "one", tiny_policy, 1)
    # Every logged metric of both iterations and of the held-out evaluation (all rows, not process 0's).
    assert_close(two[1], one[1])
    assert len([r for r in two[1] if r["split"] == "train"]) == 2
    assert two[2]["metrics"]["prompts"] == 24 and len(two[2]["samples"]) == 24
    assert [s["policy"] for s in two[2]["samples"]] == [s["policy"] for s in one[2]["samples"]]
    # PPO parameters after the 2 iterations, restored on the same 8-device mesh.
    exp = load_config(os.path.join(CONFIGS, "tiny_ppo.py"), [MESH, f"--config.rl.policy={tiny_policy}",
                                                             f"--config.feedback.policy={tiny_policy}",
                                                             "--config.rl.iterations=2"])
    params = [jax.device_get(policy_training.restore(exp, str(tmp_path / name / "rl"))[1].params)
              for name in ("two", "one")]
    for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
