"""Activation checkpointing (``model.config.remat``) trades compute for memory and changes no number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import losses
from rlhf_jax.config import ConfigError, ModelConfig
from rlhf_jax.models import build_model


def gradients(family: str, head: str, remat: str):
    model = build_model(ModelConfig(family=family, head=head, remat=remat), seed=0)
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(4, 16)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 12:].set(0)  # some padding

    def loss(p):
        out = nnx.merge(graphdef, p)(ids, mask)
        if head == "causal_lm":
            return losses.causal_lm_loss(out, ids, mask)[0]
        return losses.masked_lm_loss(out, ids, mask)[0]

    return jax.tree.leaves(jax.jit(jax.grad(loss))(params))


@pytest.mark.parametrize("remat", ["full", "dots"])
@pytest.mark.parametrize("family,head", [("gpt2", "causal_lm"), ("llama", "causal_lm"), ("bert", "masked_lm")])
def test_remat_gives_the_gradients_of_the_plain_forward(family, head, remat):
    plain, checkpointed = gradients(family, head, "none"), gradients(family, head, remat)
    assert len(plain) == len(checkpointed)
    for a, b in zip(plain, checkpointed):
        # XLA may fuse the recomputed forward differently: equal up to float32 rounding of the gradient
        # (measured: gpt2 bit for bit, llama within 2.3e-8).
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-7)


def test_an_unknown_remat_policy_names_the_field():
    with pytest.raises(ConfigError, match="remat"):
        ModelConfig(family="gpt2", remat="sometimes")
