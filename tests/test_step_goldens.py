"""A regression net under the algorithms: one update of every policy-gradient algorithm and one DPO / IPO
step, each on a tiny random Llama and fixed arrays, log exactly the metrics and parameters recorded in
tests/golden/update_steps.json.

The driver-level golden (test_ppo_golden.py) runs two whole iterations of PPO and REINFORCE; this one
reaches every entry of the algorithm registry and both preference losses, with no tokenizer, sampler or
reward model in the way, so a move of the maths or of the update program that changes one bit shows here.

Recorded with ``RLHF_JAX_RECORD_GOLDEN=1`` before the reshaping of issue 25. Exact (``==`` on every metric
and on a SHA-256 of the updated parameters) in an environment with a recording of its own, elsewhere the
metrics to conftest.check_golden's tolerance.
"""

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import check_golden
from flax import nnx

from rlhf_jax.config import ModelConfig, RLConfig, TrainConfig
from rlhf_jax.models import build_model

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "update_steps.json")
TINY = ModelConfig(family="llama", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24,
                   pad_token_id=0, eos_token_id=1)
PROMPTS, SAMPLES, PROMPT_LEN, RESPONSE_LEN = 2, 2, 3, 5  # B = 4 rows
PG_CONFIGS = {
    "ppo": dict(epochs=2, minibatches=2),
    "reinforce": dict(algorithm="reinforce", epochs=1, minibatches=2),
    "rloo": dict(algorithm="rloo", epochs=1, minibatches=2),
    "grpo": dict(algorithm="grpo", epochs=2, minibatches=2, kl_target=None),
    "dr_grpo": dict(algorithm="dr_grpo", epochs=2, minibatches=2, kl_target=None),
    # added with issue 29, recorded from its code (the cases above are unchanged by it)
    "dapo": dict(algorithm="dapo", epochs=2, minibatches=2, kl_target=None, kl_coef=0.0, clip_ratio_high=0.28,
                 dynamic_sampling=True, mask_truncated=True),
    "gspo": dict(algorithm="gspo", epochs=2, minibatches=2, kl_target=None, clip_ratio=0.05, clip_ratio_high=0.08),
    "gspo_token": dict(algorithm="gspo_token", epochs=2, minibatches=2, kl_target=None, clip_ratio=0.05),
    "cispo": dict(algorithm="cispo", epochs=2, minibatches=2, kl_target=None, clip_ratio=1.0, clip_ratio_high=0.28),
    "reinforce_pp": dict(algorithm="reinforce_pp", epochs=2, minibatches=2, clip_ratio_high=0.28),
}
# Watched every iteration, meaningless on the fixed arrays (whose sampler log-probs are made up)
UNRECORDED = {"mismatch_max_abs_logp", "mismatch_mean_abs_logp", "mismatch_k3"}


def params_digest(params) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def fixed_rollout(programs, params):
    """A rollout of fixed tokens (row 3's response ends two tokens early), scored by the initial policy; the
    old log-probs are nudged by fixed noise so that the ratio moves off 1 and clipping is reached."""
    from rlhf_jax.rl import online

    rng = np.random.default_rng(0)
    rows = PROMPTS * SAMPLES
    ids_BxT = jnp.asarray(rng.integers(2, TINY.vocab_size, (rows, PROMPT_LEN + RESPONSE_LEN)), jnp.int32)
    response_mask_BxN = jnp.ones((rows, RESPONSE_LEN), jnp.float32).at[3, -2:].set(0.0)
    mask_BxT = jnp.concatenate([jnp.ones((rows, PROMPT_LEN), jnp.int32), response_mask_BxN.astype(jnp.int32)], 1)
    model = nnx.merge(programs.graphdef, params)
    logp_BxN, entropy_BxN, values_BxN = online.policy_outputs(model, ids_BxT, mask_BxT, PROMPT_LEN, 1.0)
    noise_BxN = jnp.asarray(rng.normal(0.0, 0.3, (rows, RESPONSE_LEN)), jnp.float32)
    ref_noise_BxN = jnp.asarray(rng.normal(0.0, 0.2, (rows, RESPONSE_LEN)), jnp.float32)
    scores_B = jnp.asarray(rng.normal(0.0, 1.0, rows), jnp.float32)
    rollout = online.Rollout(ids_BxT=ids_BxT, mask_BxT=mask_BxT, response_mask_BxN=response_mask_BxN,
                          logp_BxN=(logp_BxN + noise_BxN) * response_mask_BxN,
                          ref_logp_BxN=(logp_BxN + ref_noise_BxN) * response_mask_BxN,
                          values_BxN=(values_BxN + noise_BxN) * response_mask_BxN, entropy_BxN=entropy_BxN,
                          sampler_logp_BxN=logp_BxN * response_mask_BxN)
    return rollout, scores_B


def rl_config(name: str) -> RLConfig:
    return RLConfig(rollout_prompts=PROMPTS, samples_per_prompt=SAMPLES, prompt_tokens=PROMPT_LEN,
                    response_tokens=RESPONSE_LEN, learning_rate=1e-2, **PG_CONFIGS[name])


def policy_gradient_update(name: str) -> dict:
    from rlhf_jax.rl import online

    cfg = rl_config(name)
    with nnx.use_eager_sharding(False):
        model = online.ActorCritic(build_model(TINY, seed=0), None, rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model)
    ref_graphdef, _ = nnx.split(build_model(TINY, seed=0))
    programs = online.Programs(graphdef, ref_graphdef, cfg, online.sampling_config(cfg, TINY.eos_token_id, 0))
    rollout, scores_B = fixed_rollout(programs, params)
    state = online.PolicyState.create(params, programs.tx, cfg)
    new_state, metrics = jax.jit(online.update, static_argnums=0)(programs, state, rollout, scores_B)
    return {"metrics": {k: float(v) for k, v in sorted(metrics.items()) if k not in UNRECORDED},
            "params": params_digest(new_state.params), "kl_coef": float(new_state.kl_coef)}


def preference_step(kind: str) -> dict:
    from rlhf_jax.rl import preference
    from rlhf_jax.steps import make_optimizer, train_step
    from rlhf_jax.train_state import TrainState

    train = TrainConfig(task=kind, steps=1, warmup_steps=0, learning_rate=1e-2, label_smoothing=0.1 if kind == "dpo"
                        else 0.0)
    rng = np.random.default_rng(1)
    rows, length = 3, 6
    batch = {"weights": jnp.asarray([1.0, 1.0, 0.5], jnp.float32),
             "ref_chosen": jnp.asarray(rng.normal(-20.0, 2.0, rows), jnp.float32),
             "ref_rejected": jnp.asarray(rng.normal(-20.0, 2.0, rows), jnp.float32)}
    for side in ("chosen", "rejected"):
        batch[f"{side}_ids"] = jnp.asarray(rng.integers(2, TINY.vocab_size, (rows, length)), jnp.int32)
        batch[f"{side}_mask"] = jnp.ones((rows, length), jnp.int32).at[1, -2:].set(0)
        batch[f"{side}_loss_mask"] = batch[f"{side}_mask"].at[:, :2].set(0)
    graphdef, params = nnx.split(build_model(TINY, seed=0))
    tx = make_optimizer(train)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    loss_fn = preference.make_loss(kind)(None, TINY.vocab_size, train)
    new_state, metrics = jax.jit(functools.partial(train_step, graphdef, tx, loss_fn))(state, batch)
    return {"metrics": {k: float(v) for k, v in sorted(metrics.items())}, "params": params_digest(new_state.params)}


CASES = {**{name: (policy_gradient_update, name) for name in PG_CONFIGS},
         **{kind: (preference_step, kind) for kind in ("dpo", "ipo", "kto", "simpo", "orpo")}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_gives_the_recorded_numbers(case):
    function, argument = CASES[case]
    got = function(argument)
    assert all(np.isfinite(v) for v in got["metrics"].values())
    check_golden(GOLDEN, case, got, loose_skip={"params"})


def test_the_fixed_arrays_reach_clipping_and_move_every_parameter():
    """The golden is worth its bits only if its step does something: PPO's ratio leaves the clip range on
    some tokens, and one step changes the parameters."""
    golden = {case: recording for cases in json.load(open(GOLDEN)).values() for case, recording in cases.items()}
    for case in ("ppo", "grpo", "dapo", "gspo", "cispo", "reinforce_pp"):
        assert golden[case]["metrics"]["clip_fraction"] > 0, case
    assert len({golden[case]["params"] for case in CASES}) == len(CASES)


def test_a_misshapen_rollout_is_refused_while_tracing():
    """Rollout and Minibatch check their shapes (chex, at trace time): an entropy of the wrong length fails
    the update before anything runs, naming the shapes."""
    import dataclasses

    from rlhf_jax.rl import online

    cfg = rl_config("ppo")
    with nnx.use_eager_sharding(False):
        model = online.ActorCritic(build_model(TINY, seed=0), None, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    programs = online.Programs(graphdef, nnx.split(build_model(TINY, seed=0))[0], cfg,
                               online.sampling_config(cfg, TINY.eos_token_id, 0))
    rollout, scores_B = fixed_rollout(programs, params)
    state = online.PolicyState.create(params, programs.tx, cfg)
    update = jax.jit(online.update, static_argnums=0)
    bad = dataclasses.replace(rollout, entropy_BxN=rollout.entropy_BxN[:, :-1])
    with pytest.raises(AssertionError, match="shape"):
        update(programs, state, bad, scores_B)
    with pytest.raises(AssertionError, match="shape"):
        update(programs, state, rollout, scores_B[:-1])
