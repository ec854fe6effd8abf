"""The whole training state as one pytree: what a jitted step consumes and returns, and what a
checkpoint holds. The model's structure (graphdef) stays outside, static."""

from __future__ import annotations

import jax
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken (= training batches consumed)
    params: nnx.State  # the model's parameters (nnx.split(model)[1])
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 PRNG key; every step splits it, so randomness is threaded and resumable

    @classmethod
    def create(cls, params: nnx.State, tx: optax.GradientTransformation, seed: int, trainable=None) -> TrainState:
        """Optimizer state for the ``trainable`` parameters only (an NNX filter, e.g. ``lora.Trainable``;
        None: all)."""
        import jax.numpy as jnp

        trained = params if trainable is None else nnx.filter_state(params, trainable)
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained),
                   rng=jax.random.PRNGKey(seed))
