"""State born sharded: set-up of a model on 8 simulated devices never gives a device more than its shards
(live buffers measured per device while the checkpoint's tensors are placed), and the state it builds equals
the one built whole and then placed, bit for bit."""

import collections
import os

import jax
import numpy as np
from conftest import CONFIGS
from flax import nnx

from rlhf_jax.config import load_config
from rlhf_jax.models import from_pretrained
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

    monkeypatch.setattr(nnx.Variable, "set_value", watched)
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

    # The same numbers as loading the whole model on one device, then placing it.
    whole = from_pretrained(smollm2_dir, head="causal_lm")
    tx = make_optimizer(exp.train)
    eager = TrainState.create(nnx.split(whole)[1], tx, exp.train.seed)
    eager = jax.device_put(eager, train_state_shardings(eager, tx, run.layout))
    for got, want in zip(jax.tree.leaves(run.state), jax.tree.leaves(eager), strict=True):
        assert got.sharding == want.sharding and np.array_equal(np.asarray(got), np.asarray(want))
