"""State born sharded: set-up of a model on 8 simulated devices never gives a device more than its shards
(live buffers measured per device while the checkpoint's tensors are placed), reads from the safetensors file
only the regions its devices hold (as many bytes as ``plan`` says), and builds the state that loading whole
and then placing builds, bit for bit."""

import collections
import math
import os

import jax
import numpy as np
import pytest
from conftest import CONFIGS
from flax import nnx

from rlhf_jax import plan, sharding
from rlhf_jax.config import MeshConfig, load_config
from rlhf_jax.models import from_pretrained, weight_files
from rlhf_jax.steps import make_optimizer, train_state_shardings
from rlhf_jax.train_state import TrainState

FSDP8 = "--config.mesh.shape={'data': 1, 'fsdp': 8, 'tensor': 1}"
SLACK = 1 << 20  # bytes a device may hold beyond its shards: scalars (step, PRNG key, Adam's count)


def live_bytes() -> collections.Counter:
    """Bytes of the live device buffers, per device (a sharded array's per-device pieces are live arrays too:
    each buffer is counted once, by its address)."""
    buffers = {}
    for array in jax.live_arrays():
        for shard in array.addressable_shards:
            buffers[shard.device, shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
    held = collections.Counter()
    for (device, _), nbytes in buffers.items():
        held[device] += nbytes
    return held


def held_on(tree) -> collections.Counter:
    held = collections.Counter()
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] += shard.data.nbytes
    return held


def test_smollm2_on_8_devices_is_born_sharded_and_equals_the_whole_model_placed(smollm2_dir, monkeypatch, tmp_path):
    from rlhf_jax.runs import supervised

    exp = load_config(os.path.join(CONFIGS, "sft_smollm2_rt.py"), [FSDP8, f"--config.model.source={smollm2_dir}"])
    baseline = live_bytes()
    peaks, placed = collections.Counter(), []
    set_value = nnx.Variable.set_value

    def watched(variable, value, *args, **kwargs):  # every parameter the set-up fills, however it is made
        set_value(variable, value, *args, **kwargs)
        if isinstance(value, jax.Array):
            placed.append(value.nbytes)
            now = live_bytes()
            for device in jax.devices():
                peaks[device] = max(peaks[device], now[device] - baseline[device])

    reads = []  # elements of every region read from the checkpoint file
    read = weight_files.SafetensorsTensor.__getitem__

    def counted(tensor, region):
        value = read(tensor, region)
        reads.append(value.size)
        return value

    monkeypatch.setattr(nnx.Variable, "set_value", watched)
    monkeypatch.setattr(weight_files.SafetensorsTensor, "__getitem__", counted)
    run = supervised.prepare(exp, str(tmp_path), with_data=False)
    run.checkpoints.close()
    monkeypatch.undo()

    parameters, state = held_on(run.state.params), held_on(run.state)
    assert len(placed) >= len(jax.tree.leaves(run.state.params)) and max(placed) > 100e6  # the embedding, whole
    after = live_bytes()
    for device in jax.devices():
        # While the tensors were placed: at most this device's own shards of them.
        assert peaks[device] <= parameters[device] + SLACK, (device, peaks[device], parameters[device])
        # Once the state is made (moments and all, inside one program): its shards and nothing else.
        assert after[device] - baseline[device] <= state[device] + SLACK, (device, after[device], state[device])
        assert state[device] <= 3 * parameters[device] + SLACK  # parameters and Adam's two moments, each 1/8

    # The file was read in shards, never a sharded tensor whole, each region once: what the plan counts.
    shard_elements = [math.prod(leaf.sharding.shard_shape(leaf.shape)) for leaf in jax.tree.leaves(run.state.params)]
    assert max(reads) == max(shard_elements) and len(reads) > len(shard_elements)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), run.state.params)
    assert plan.host_read_bytes(abstract, jax.tree.map(lambda a: a.sharding, run.state.params)) == {0: 4 * sum(reads)}

    # The same numbers as loading the whole model on one device, then placing it.
    whole = from_pretrained(smollm2_dir, head="causal_lm")
    tx = make_optimizer(exp.train)
    eager = TrainState.create(nnx.split(whole)[1], tx, exp.train.seed)
    eager = jax.device_put(eager, train_state_shardings(eager, tx, run.layout))
    for got, want in zip(jax.tree.leaves(run.state), jax.tree.leaves(eager), strict=True):
        assert got.sharding == want.sharding and np.array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_tensor_layout_is_read_by_region_exactly(family, scan_layers, tmp_path):
    """Fused q/k/v columns (GPT-2), transposed kernels (Llama), stacked layers (scan), each split over both
    mesh axes: the parameters read shard by shard equal the parameters read whole, bit for bit."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32,
                                                                  n_layer=2, n_head=4))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False))
    hf.save_pretrained(str(tmp_path))
    layout = sharding.Layout.of(MeshConfig(shape=(("data", 1), ("fsdp", 4), ("tensor", 2))))
    sharded = nnx.state(from_pretrained(str(tmp_path), layout=layout, scan_layers=scan_layers), nnx.Param)
    whole = nnx.state(from_pretrained(str(tmp_path), scan_layers=scan_layers), nnx.Param)
    placements = {path: v.get_value() for path, v in nnx.to_flat_state(layout.shardings(whole))}
    both_axes = 0
    for (path, got), (_, want) in zip(nnx.to_flat_state(sharded), nnx.to_flat_state(whole), strict=True):
        got, want = got.get_value(), want.get_value()
        assert got.sharding == placements[path], path
        assert np.array_equal(np.asarray(got), np.asarray(want)), path
        both_axes += {"fsdp", "tensor"} <= set(jax.tree.leaves(tuple(got.sharding.spec)))
    assert both_axes >= 4  # the kernels really were cut, on both mesh axes
