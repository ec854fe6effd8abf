"""model.scan_layers: the blocks' parameters stacked on a leading layer axis and run by one lax.scan. On
SmolLM2-135M's real weights the scanned model computes what the loop of blocks does, to float32 rounding
(logits, gradients under remat), samples the same greedy tokens, and exports the same tensors."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from conftest import CONFIGS
from flax import nnx

from rlhf_jax import losses, plan
from rlhf_jax.config import load_config
from rlhf_jax.models import convert, from_pretrained, load_tokenizer
from rlhf_jax.sampling import SamplingConfig, generate

TEXTS = ["The movie was a delight from start", "A slow, muddled plot that never"]


@pytest.fixture(scope="module")
def pair(smollm2_dir):
    """(unrolled, scanned) SmolLM2-135M with remat full, and a left-padded batch."""
    unrolled = from_pretrained(smollm2_dir, head="causal_lm", remat="full")
    scanned = from_pretrained(smollm2_dir, head="causal_lm", remat="full", scan_layers=True)
    tokenizer = load_tokenizer(smollm2_dir)
    tokenizer.padding_side = "left"
    batch = tokenizer(TEXTS, padding=True, return_tensors="np")
    return unrolled, scanned, batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)


def test_scanned_parameters_are_stacked_with_a_layer_axis(pair):
    unrolled, scanned, _, _ = pair
    kernel = scanned.backbone.layers.attn.q_proj.kernel
    assert kernel.shape == (30, 576, 576) and kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    layer_7 = unrolled.backbone.layers[7].attn.q_proj.kernel[...]
    np.testing.assert_array_equal(np.asarray(kernel[...][7]), np.asarray(layer_7))
    exported, reference = convert.extract_tensors(scanned), convert.extract_tensors(unrolled)
    assert exported.keys() == reference.keys()
    for name, tensor in reference.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)


def test_scanned_logits_and_gradients_equal_the_loop_of_blocks(pair):
    unrolled, scanned, ids, mask = pair

    def loss_and_grads(model):
        graphdef, params = nnx.split(model)

        def loss_of(params):
            return losses.causal_lm_loss(nnx.merge(graphdef, params)(ids, mask), ids, mask)[0]

        logits = jax.jit(lambda p: nnx.merge(graphdef, p)(ids, mask))(params)
        return np.asarray(logits), jax.jit(jax.grad(loss_of))(params)

    logits_loop, grads_loop = loss_and_grads(unrolled)
    logits_scan, grads_scan = loss_and_grads(scanned)
    scale = np.abs(logits_loop).max()
    np.testing.assert_allclose(logits_scan, logits_loop, rtol=0, atol=1e-5 * scale)  # float32 rounding of O(30)
    scanned_grads = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(grads_scan)}
    for path, value in nnx.to_flat_state(grads_loop):
        if path[:2] == ("backbone", "layers"):  # layer i of the loop is row i of the stacked gradient
            got = scanned_grads[path[:2] + path[3:]][path[2]]
        else:
            got = scanned_grads[path]
        want = np.asarray(value.get_value())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max() + 1e-9, err_msg=str(path))


def test_scanned_greedy_sampling_is_token_identical(pair):
    unrolled, scanned, ids, mask = pair
    config = SamplingConfig(max_new_tokens=12, greedy=True)
    loop = generate(unrolled, ids, mask, jax.random.key(0), config)
    scan = generate(scanned, ids, mask, jax.random.key(0), config)
    np.testing.assert_array_equal(np.asarray(scan.tokens_BxN), np.asarray(loop.tokens_BxN))
    np.testing.assert_array_equal(np.asarray(scan.response_mask_BxN), np.asarray(loop.response_mask_BxN))


def test_a_scanned_model_trains_and_plans_on_8_devices(tmp_path):
    """The layer axis stays whole (no rule maps 'layers'), the rest is sharded as unrolled: the same bytes."""
    scan = ["--config.mesh.shape={'data': 1, 'fsdp': 8, 'tensor': 1}", "--config.train.batch_size=8"]
    exp = load_config(os.path.join(CONFIGS, "tiny_sft.py"), scan)
    scanned = dataclasses.replace(exp, model=dataclasses.replace(
        exp.model, config=tuple(dict(exp.model.config, scan_layers=True, remat="full").items())))
    (loop,), (scan_plan,) = plan.plan(exp)[1], plan.plan(scanned)[1]
    assert (scan_plan.parameters, scan_plan.optimizer) == (loop.parameters, loop.optimizer)
