"""On 8 simulated devices, a 2x4 (fsdp x tensor) mesh: parameters are sharded and outputs unchanged."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlhf_jax import sharding
from rlhf_jax.config import ConfigError, MeshConfig, ModelConfig
from rlhf_jax.models import build_model

MESH = MeshConfig(shape=(("data", 1), ("fsdp", 2), ("tensor", 4)))


@pytest.mark.parametrize("family,head", [("llama", "causal_lm"), ("bert", "masked_lm"), ("gpt2", "scalar")])
def test_sharded_forward_equals_unsharded(family, head):
    assert jax.device_count() == 8
    cfg = ModelConfig(family=family, head=head, vocab_size=128, hidden_size=64, num_heads=4,
                      num_kv_heads=4, intermediate_size=128, max_position_embeddings=32)
    model = build_model(cfg, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, size=(4, 12))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    expected = np.asarray(model(ids, mask))

    layout = sharding.Layout.of(MESH)
    layout.place(model)
    graphdef, state = nnx.split(model)
    q_kernel = state["backbone"]["layers"][0]["attn"]["q_proj"]["kernel"][...]
    assert q_kernel.sharding.spec == P("fsdp", "tensor")
    assert {s.data.shape for s in q_kernel.addressable_shards} == {(32, 16)}
    embed = state["backbone"]["token_embed"]["embedding"][...]
    assert embed.sharding.spec == P("tensor", "fsdp")
    assert len(embed.addressable_shards) == 8 and embed.addressable_shards[0].data.shape == (32, 32)

    forward = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    batch = layout.batch
    out = forward(state, jax.device_put(ids, batch), jax.device_put(mask, batch))
    assert np.abs(np.asarray(out) - expected).max() <= 1e-5


def test_rules_replicate_dimensions_that_do_not_divide():
    layout = sharding.Layout.of(MESH)
    assert layout.spec(("vocab", "embed"), (130, 64)) == P(None, "fsdp")
    assert layout.spec(("embed", "mlp"), (64, 128)) == P("fsdp", "tensor")
    # one mesh axis is never used twice in one array
    assert layout.spec(("mlp", "heads"), (128, 128)) == P("tensor", None)


def test_bad_mesh_config_names_the_field():
    with pytest.raises(ConfigError, match="mesh.shape"):
        sharding.make_mesh(MeshConfig(shape=(("data", 3), ("fsdp", 4), ("tensor", 1))))
    with pytest.raises(ConfigError, match="mesh.shape"):
        sharding.make_mesh(MeshConfig(shape=(("data", -1), ("fsdp", 3), ("tensor", 1))))
    assert sharding.make_mesh(MeshConfig(shape=(("data", 1), ("fsdp", 1), ("tensor", 1)))).devices.size == 1
    with pytest.raises(ConfigError, match="mesh.rules"):
        MeshConfig(rules=(("embed", "model"),))



GRADIENT_ON_A_2x2x2_MESH = """
import jax, numpy as np
from flax import nnx
from rlhf_jax import sharding
from rlhf_jax.config import MeshConfig, ModelConfig, RLConfig
from rlhf_jax.models import build_model
from rlhf_jax.rl import online
layout = sharding.Layout.of(MeshConfig(shape=(("data", 2), ("fsdp", 2), ("tensor", 2))))
ids = np.zeros((8, 12), np.int32)
def compiled_gradient(family, head, vocab_size):
    cfg = ModelConfig(family=family, head=head, vocab_size=vocab_size, hidden_size=64, num_heads=4, num_kv_heads=4,
                      intermediate_size=128, max_position_embeddings=32)
    graphdef, state = nnx.split(build_model(cfg, seed=1))
    params = layout.shardings(state)
    gradient = layout.jit(jax.grad(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask).sum()),
                          in_shardings=(params, layout.batch, layout.batch), out_shardings=params)
    return gradient.lower(state, ids, np.ones_like(ids)).compile()
"""
COMPILE_SHARDED_GRADIENTS = GRADIENT_ON_A_2x2x2_MESH + """
for family, head in (("llama", "causal_lm"), ("bert", "scalar"), ("gpt2", "causal_lm")):
    compiled_gradient(family, head, 128)
    print("compiled", family)
rl = RLConfig(rollout_prompts=16, response_tokens=6, epochs=2, minibatches=2)  # the tiny PPO run's update
with nnx.use_eager_sharding(False):  # as the RL runs build it
    policy = build_model(ModelConfig(family="llama", head="causal_lm", vocab_size=128, hidden_size=32, num_heads=4,
                                     num_kv_heads=4, intermediate_size=128, max_position_embeddings=32), seed=1)
    graphdef, params = nnx.split(online.ActorCritic(policy, rngs=nnx.Rngs(0)))
programs = online.Programs(graphdef, None, rl, online.sampling_config(rl, 1, 0))
state = online.PolicyState.create(params, programs.tx, rl)
update = online.jit_functions(programs, online.state_shardings(state, programs.tx, layout), None, layout).update
rows, length = 16, 8 + 6
per_token = ("response_mask_BxN", "logp_BxN", "ref_logp_BxN", "values_BxN", "entropy_BxN", "sampler_logp_BxN")
experience = online.Rollout(ids_BxT=np.zeros((rows, length), np.int32), mask_BxT=np.ones((rows, length), np.int32),
                            **{name: np.zeros((rows, 6), np.float32) for name in per_token})
update.lower(state, experience, np.zeros((rows,), np.float32)).compile()
print("compiled", "ppo-update")
"""


def test_sharded_steps_compile_without_replicating_activations():
    """On a data x fsdp x tensor mesh the embedding lookups' rows come out split along the batch. XLA's SPMD
    partitioner warns where it can only re-split a tensor by replicating it whole on every device: the rows,
    when the tables were read split along their width (token, position and type embeddings: llama, gpt2 and
    bert); in PPO's update (the tiny run's shapes), the response positions' hidden states, when the value
    head's kernel was split along the width."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", COMPILE_SHARDED_GRADIENTS], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["compiled", "llama", "compiled", "bert", "compiled", "gpt2", "compiled",
                                     "ppo-update"]
    assert "Involuntary full rematerialization" not in result.stderr, result.stderr[-3000:]


COMPILE_A_LARGE_VOCABULARY = GRADIENT_ON_A_2x2x2_MESH + """
print(compiled_gradient("llama", "scalar", 8192).memory_analysis().temp_size_in_bytes)
"""


def test_no_device_holds_the_whole_embedding_table_for_a_lookup():
    """The token table [8192, 64] float32 (2 MiB) of a model whose head reads no logits: a gradient step's
    temporaries on each of 8 devices stay under the table's size. Read whole along its width, as the
    lookup once did, the table and its gradient were whole on every device (Llama-3-8B's PPO update on a
    v5e-16 then took 4.4 GiB more a chip: docs/distributed.md)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", COMPILE_A_LARGE_VOCABULARY], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) < 8192 * 64 * 4
