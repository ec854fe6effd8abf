"""A regression net for refactoring and speed work: the first two iterations of the tiny PPO (and
REINFORCE) run log exactly the metrics recorded in tests/golden/ppo_tiny_iteration.json (the first
iteration's policy is the reference, so its KL is 0; the second's is not).

The first values were recorded from the code before the reshaping of issue 13 (commit 158745c) by running
this test with RLHF_JAX_RECORD_GOLDEN=1 on a 2-core AMD EPYC under jax 0.10.2; later ones on other CPUs
(conftest.check_golden says when the comparison is exact and when it has a tolerance). Re-record only with
a reason in the commit message (a deliberate change of the maths, or a new environment). value_clip_fraction
is not recorded: it counted float32 rounding of V_old + clip(V - V_old) as clipping until issue 13 fixed
it, and is checked against its definition in test_rl.py.
"""

import os

import numpy as np
import pytest
from conftest import ONE_DEVICE, LengthGold, check_golden
from conftest import tiny_rl as tiny

from rlhf_jax.metrics import read_metrics

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "ppo_tiny_iteration.json")
ALGORITHMS = {"ppo": [], "reinforce": ["--config.rl.algorithm='reinforce'", "--config.rl.epochs=1"]}
UNRECORDED = {"seconds_per_iteration", "value_clip_fraction",  # and the mismatch, added since (test_ppo.py)
              "mismatch_max_abs_logp", "mismatch_mean_abs_logp", "mismatch_k3"}


def logged_metrics(tmp_path, tiny_policy, algorithm):
    from flax import nnx

    from rlhf_jax.feedback.collect import sentiment_prompts
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.runs import policy_training
    from rlhf_jax.scoring import RewardModel
    from rlhf_jax.trained import load_model

    exp = tiny(tiny_policy, *ONE_DEVICE, *ALGORITHMS[algorithm])
    model, tokenizer = load_model(exp.model)
    graphdef, params = nnx.split(model)
    reward_model = RewardModel(graphdef, params, tokenizer, exp.data.max_length)
    prompts = sentiment_prompts(64, 8, load_tokenizer(tiny_policy), split="train")
    workdir = str(tmp_path / algorithm)
    policy_training.train(exp, workdir, reward_model, LengthGold(), prompts, stop_at=2, progress=False)
    return [{name: value for name, value in row.items() if name not in UNRECORDED} for row in read_metrics(workdir)]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_one_tiny_iteration_logs_the_recorded_metrics(tmp_path, tiny_policy, algorithm):
    metrics = logged_metrics(tmp_path, tiny_policy, algorithm)
    assert len(metrics) == 2
    check_golden(GOLDEN, algorithm, metrics)
    assert metrics[1]["kl"] != 0 and all(
        np.isfinite(v) for row in metrics for v in row.values() if not isinstance(v, str)
    )
