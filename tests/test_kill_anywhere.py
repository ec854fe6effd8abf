"""Kill anywhere: ``rlhf-jax run`` on the tiny pipeline killed with SIGKILL at 26 seeded moments spread
over its stages, restarted after each, ends with the outputs of an uninterrupted run, bit for bit: the
feedback, the reward model, the policy, evaluation.json, the metrics and samples, the report's numbers."""

import json
import os
import random
import sys

import jax
import numpy as np
import pytest
from conftest import CONFIGS, tiny_rl

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
from kill_and_resume import ORBAX_WRITE, STAGES, Moment, attempt, landed_per_stage, run_with_kills

from rlhf_jax.metrics import TIMING, read_metrics
from rlhf_jax.runs import policy_training
from rlhf_jax.trained import restore


def command(workdir, policy):
    return [sys.executable, "-m", "rlhf_jax.cli", "run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"),
            "--workdir", str(workdir), f"--config.rl.policy={policy}", f"--config.feedback.policy={policy}"]


def moments(timeline, total, rng) -> list[Moment]:
    """Two kills in the start-up, one at a uniform moment of the first half of each stage of ``timeline`` (the
    uninterrupted run's (stage, start) pairs: an attempt whose stage runs a little faster than that run's still
    takes it there, where the evaluation lasts 2 s), 15 at uniform moments of the whole run and two in the
    first orbax writes seen (from the reward model's training on), in the order they come."""
    starts = {}
    for stage, start in timeline:
        starts.setdefault(stage, start)
    stages = sorted(starts.items(), key=lambda item: item[1])
    ends = [start for _, start in stages[1:]] + [total]

    def at(t):  # a moment of the uninterrupted run -> (its stage, seconds into it)
        for (stage, start), end in zip(stages, ends):
            if start <= t < end:
                return stage, t - start
        return stages[-1][0], t - stages[-1][1]

    times = [rng.uniform(start, (start + end) / 2) for (_, start), end in zip(stages, ends)]
    times += [rng.uniform(stages[0][1], total) for _ in range(15)]
    timed = [(t, Moment(*at(t))) for t in times]
    timed += [(starts["reward model training"], Moment(ORBAX_WRITE, 0.0))] * 2  # the first writes come there
    startup = [Moment(None, rng.uniform(0.5, stages[0][1])) for _ in range(2)]
    return startup + [moment for _, moment in sorted(timed, key=lambda pair: pair[0])]


def outputs(workdir) -> dict:
    """Everything of a finished run that must not depend on how often it was killed."""
    def text(name):
        with open(os.path.join(workdir, name)) as f:
            return f.read()

    def rows(stage):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(os.path.join(workdir, stage))]

    report = text("report.md").split("## Wall time")[0].splitlines()
    return {"feedback": text("feedback/preferences.jsonl"), "summary": text("feedback/summary.json"),
            "reward_model": json.loads(text("reward_model/evaluation.json")), "rm_rows": rows("reward_model"),
            "evaluation": json.loads(text("rl/evaluation.json")), "rl_rows": rows("rl"),
            "samples": text("rl/samples.jsonl"), "report": [line for line in report if "seconds per" not in line]}


@pytest.mark.long
def test_sigkill_at_26_moments_over_the_stages_changes_no_output(tmp_path, tiny_policy, monkeypatch):
    # The kills are placed by the uninterrupted run's timeline, which only predicts the attempts' own if every
    # attempt compiles as it did. A first run fills a compilation cache of the test's own, and the uninterrupted
    # run and every attempt load their programs from it, as a rerun of a researcher's does (a program only a
    # resumed attempt compiles is written there, and an entry a kill cuts short is dropped by the next attempt).
    monkeypatch.setenv("RLHF_JAX_COMPILE_CACHE", str(tmp_path / "xla"))
    warm = attempt(command(tmp_path / "warm", tiny_policy), None, str(tmp_path / "warm"), str(tmp_path / "warm.log"))
    assert warm.code == 0, (tmp_path / "warm.log").read_text()[-3000:]
    straight = attempt(command(tmp_path / "straight", tiny_policy), None, str(tmp_path / "straight"),
                       str(tmp_path / "straight.log"))
    assert straight.code == 0, (tmp_path / "straight.log").read_text()[-3000:]
    assert [stage for stage, _ in straight.timeline if stage != "collect"] == [s for s in STAGES if s != "collect"]

    planned = moments(straight.timeline, straight.seconds, random.Random(28))
    killed = run_with_kills(command(tmp_path / "killed", tiny_policy), planned, str(tmp_path / "killed"),
                            str(tmp_path / "killed.log"))
    per_stage = landed_per_stage(killed["kills"])
    writes = sum(kill["orbax_write"] for kill in killed["kills"])
    print(f"\n{len(killed['kills'])} kills landed: {per_stage}; {writes} during an orbax write; "
          f"{killed['attempts']} attempts, {killed['seconds']} s")
    for kill in killed["kills"]:  # shown with a failure: which kill left which attempt behind
        print(json.dumps(kill))
    assert killed["code"] == 0, (tmp_path / "killed.log").read_text()[-3000:]
    assert len(killed["kills"]) >= 20
    assert all(per_stage.get(stage) for stage in ("start-up", "collect", "reward model training", "rl", "evaluation"))
    assert writes >= 1  # at least one kill cut an orbax write short

    assert outputs(tmp_path / "killed") == outputs(tmp_path / "straight")
    exp = tiny_rl(tiny_policy)
    policies = [policy_training.restore(exp, str(tmp_path / name / "rl"))[1] for name in ("straight", "killed")]
    reward_models = [restore(str(tmp_path / name / "reward_model")).params for name in ("straight", "killed")]
    for a, b in ((policies[0], policies[1]), (reward_models[0], reward_models[1])):
        for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
            np.testing.assert_array_equal(x, y)
