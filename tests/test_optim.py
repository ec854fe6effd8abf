"""The optimizer: optax's clip + Adam(W) chain by default; fused, the same state and optax's numbers bit for
bit on unclipped steps, within float32 rounding on clipped ones."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.config import ConfigError, RLConfig, TrainConfig
from rlhf_jax.optim import clipped_adam
from rlhf_jax.rl import online
from rlhf_jax.steps import make_optimizer

SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 6)
MATRICES = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
RECIPES = {  # name: (optax's chain, clipped_adam's keywords for the same recipe)
    "adamw, schedule, mask": (optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(SCHEDULE, weight_decay=0.1,
                                                                                      mask=MATRICES)),
                              dict(learning_rate=SCHEDULE, max_norm=1.0, weight_decay=0.1, decay_mask=MATRICES)),
    "adam, constant": (optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-4, eps=1e-5)),
                       dict(learning_rate=3e-4, max_norm=0.5, eps=1e-5)),
}


def run(tx, grad_scales, seed=0):
    """Parameters and optimizer state after one jitted step per gradient scale (random gradients)."""
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(33, 17)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=17), jnp.float32),
        "layers": [{"k": jnp.asarray(rng.normal(size=(17, 5)), jnp.float32)}],
    }
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for scale in grad_scales:
        grads = jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32), params)
        params, state = step(grads, state, params)
    return params, state


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_unfused_is_optax_and_fused_keeps_its_state_structure(recipe):
    chain, keywords = RECIPES[recipe]
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    for tx in (clipped_adam(**keywords), clipped_adam(**keywords, fused=True)):
        assert jax.tree.structure(tx.init(params)) == jax.tree.structure(chain.init(params))
    reference = run(chain, [0.01, 3.0, 0.01])
    unfused = run(clipped_adam(**keywords), [0.01, 3.0, 0.01])
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(unfused)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_fused_equals_optax_unclipped_and_is_within_rounding_clipped(recipe):
    chain, keywords = RECIPES[recipe]
    fused = clipped_adam(**keywords, fused=True)
    small = [0.01] * 6  # gradient norms under the clip: the same numbers, bit for bit
    for a, b in zip(jax.tree.leaves(run(chain, small)), jax.tree.leaves(run(fused, small))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Clipped steps: g * (c / n) against optax's (g / n) * c, one rounding apart; through the moments that
    # difference reaches 2e-5 relative on elements near 0 (measured), hence the atol.
    mixed = [0.01, 3.0, 0.01, 3.0, 3.0, 0.01]
    for a, b in zip(jax.tree.leaves(run(chain, mixed)), jax.tree.leaves(run(fused, mixed))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-8)


def test_configs_choose_the_fused_optimizer_and_reject_a_non_boolean():
    params = {"w": jnp.ones((3, 2))}
    grads = {"w": jnp.full((3, 2), 10.0)}  # clipped
    for fused in (False, True):
        for tx in (make_optimizer(TrainConfig(steps=10, warmup_steps=0, fused_optimizer=fused)),
                   online.make_optimizer(RLConfig(fused_optimizer=fused))):
            assert ("clipped_adam" in tx.update.__qualname__) is fused  # the fused update, or optax's chain
            updates, _ = tx.update(grads, tx.init(params), params)
            assert np.isfinite(np.asarray(updates["w"])).all()
    with pytest.raises(ConfigError, match="rl.fused_optimizer"):
        RLConfig(fused_optimizer="yes")
    with pytest.raises(ConfigError, match="train.fused_optimizer"):
        TrainConfig(fused_optimizer=1)


def test_weight_decay_needs_the_parameters():
    tx = clipped_adam(1e-3, max_norm=1.0, weight_decay=0.1, fused=True)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, tx.init(params), None)
