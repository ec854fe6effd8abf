"""``rlhf-jax plan --target tpu-*``: the steps compiled by libtpu's TPU compiler for a real slice's topology,
on this CPU-only machine. Skipped, saying so, where libtpu (the 'tpu' extra) is not installed."""

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_rl
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax import plan, targets
from rlhf_jax.config import ConfigError

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu (the 'tpu' extra) is not installed: no TPU compiles checked")
FSDP4 = (("data", 1), ("fsdp", 4), ("tensor", 1))


def with_mesh(exp, shape):
    return dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, shape=shape))


@needs_libtpu
def test_the_tiny_train_step_rollout_and_update_compile_for_a_v5e_2x2(tiny_policy):
    devices = targets.target("tpu-v5e-4").devices()
    assert [(d.platform, d.device_kind) for d in devices] == [("tpu", "TPU v5 lite")] * 4
    exp = with_mesh(tiny_rl(tiny_policy), FSDP4)
    _, on_tpu = plan.plan(exp, devices=devices)
    assert [s.step for s in on_tpu] == ["reward_pairwise step", "PPO rollout", "PPO update"]
    for step in on_tpu:
        assert step.refused is None and step.generated_code > 0 and step.compile_seconds > 0
        assert step.total >= step.arguments >= step.parameters + step.optimizer + step.batch, step
    # The same programs on 4 simulated CPU devices: the same state and batch shards per device.
    _, on_cpu = plan.plan(exp, devices=jax.devices("cpu")[:4])
    for tpu, cpu in zip(on_tpu, on_cpu):
        assert (tpu.step, tpu.parameters, tpu.optimizer, tpu.batch) == (cpu.step, cpu.parameters, cpu.optimizer,
                                                                         cpu.batch)
    assert jax.default_backend() == "cpu"  # the backend stays the CPU's


@needs_libtpu
def test_a_program_over_hbm_is_reported_as_refused_with_the_compilers_reason():
    mesh = Mesh(np.asarray(targets.target("tpu-v5e-4").devices()), ("fsdp",))
    x = jax.ShapeDtypeStruct((5, 2 ** 30), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    lowered = jax.jit(lambda v: v * 2).lower(x)  # 20 GiB in and 20 GiB out on each chip of 16
    refused = plan.compile_plan("outer", 0, 0, 0, lowered)
    assert refused.refused is not None and "RESOURCE_EXHAUSTED" in refused.refused, refused
    assert "exceeds available HBM (15.75G)" in refused.refused and refused.total == 0


def test_target_names_say_what_is_known_and_how_to_install_libtpu(monkeypatch):
    assert targets.target("tpu-v5e-16").topology == "v5e:4x4"
    assert (targets.target("tpu-v5p-64").topology, targets.target("tpu-v5p-64").chips) == ("v5:2x4x4", 32)
    assert targets.target("tpu-v6e-8").chips_per_host == (2, 4, 1)
    for bad in ("tpu-v5e-3", "v5e-16", "tpu-v9-8"):
        with pytest.raises(ConfigError, match=f"--target '{bad}': not a TPU slice"):
            targets.target(bad)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tpu\]'"):
        targets.target("tpu-v5e-4").devices()


@needs_libtpu
def test_each_host_of_a_v5e_16_plans_to_read_a_quarter_of_the_sharded_tensors(tiny_policy):
    """4 hosts of 4 chips, FSDP over all 16: a tensor cut 16 ways is read a quarter by each host, a
    replicated one (a norm's scale) whole by every host; per chip, one 16th."""
    from flax import nnx

    from rlhf_jax import sharding
    from rlhf_jax.models import abstract_model

    slice_ = targets.target("tpu-v5e-16")
    devices = slice_.devices()
    assert len({d.process_index for d in devices}) == 4
    exp = with_mesh(tiny_rl(tiny_policy), (("data", 1), ("fsdp", 16), ("tensor", 1)))
    cfg = plan.loaded_model_config(exp, None, ("rollout", "update"))
    layout = sharding.Layout.of(exp.mesh, devices)
    params = nnx.state(abstract_model(cfg), nnx.Param)
    shardings = jax.tree.leaves(layout.shardings(params))
    cut = replicated = 0
    for leaf, placement in zip(jax.tree.leaves(params), shardings, strict=True):
        nbytes = leaf.size * leaf.dtype.itemsize
        if placement.is_fully_replicated:
            replicated += nbytes
        else:
            assert placement.spec[0] == "fsdp" or "fsdp" in placement.spec, placement.spec
            cut += nbytes
    assert cut > 0 and replicated > 0
    load = plan.plan_load(cfg, layout)
    assert load.hosts == 4 and load.host_reads == cut // 4 + replicated
    assert load.model_bytes == cut + replicated and load.per_chip == cut // 16 + replicated
    assert plan.host_read_bytes(params, layout.shardings(params)) == dict.fromkeys(range(4), cut // 4 + replicated)
