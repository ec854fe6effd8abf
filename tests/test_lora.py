"""LoRA / QLoRA (qwix): the adapted model starts as the base, only adapters train, adapters off is the
reference, merged and PEFT exports, and the policy-gradient loop with adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import EIGHT_DEVICES, ONE_DEVICE, LengthGold, policy_iteration
from conftest import tiny_rl as tiny
from flax import nnx

from rlhf_jax.config import ConfigError
from rlhf_jax.config.lora import LoraConfig
from rlhf_jax.config.model import ModelConfig
from rlhf_jax.models import build_model, lora
from rlhf_jax.rl import online
from rlhf_jax.runs import policy_training

LORA = ["--config.rl.lora={'rank': 4, 'alpha': 8.0}"]
CFG = ModelConfig(family="llama", vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=128)


def batch():
    ids_BxT = (jnp.arange(2 * 7).reshape(2, 7) * 5) % CFG.vocab_size
    return ids_BxT, jnp.ones_like(ids_BxT).at[1, :2].set(0)


def randomised_adapters(model, scale=0.05):
    """Non-zero B (at initialisation B = 0), so that the adapters change the output."""
    for i, (_, projection) in enumerate(lora.adapted_projections(model)):
        b = projection.kernel_lora_b
        b[...] = scale * jax.random.normal(jax.random.key(i), b.shape, b.dtype)
    return model


def test_at_initialisation_the_adapted_model_is_the_base_exactly():
    ids, mask = batch()
    base = build_model(CFG)
    logits = nnx.jit(lambda m: m(ids, mask))(base)  # jitted, as training computes it
    adapted = lora.apply(build_model(CFG), LoraConfig(rank=4, alpha=8.0), seed=1)
    np.testing.assert_array_equal(nnx.jit(lambda m: m(ids, mask))(adapted), logits)
    names = {"/".join(map(str, p)) for p, _ in lora.adapted_projections(adapted)}
    assert "backbone/layers/1/mlp/down_proj" in names and len(names) == 2 * 7


def test_gradients_flow_to_adapters_only():
    ids, mask = batch()
    model = randomised_adapters(lora.apply(build_model(CFG), LoraConfig(rank=4, alpha=8.0), seed=1))
    graphdef, params = nnx.split(model)
    trained, frozen = lora.split(params, lora.Trainable())
    assert all(isinstance(v, nnx.LoRAParam) for v in jax.tree.leaves(trained, is_leaf=lambda x: isinstance(
        x, nnx.Variable)))
    assert lora.parameter_count(trained) == 2 * (4 * (64 + 64) * 2 + 4 * (64 + 32) * 2 + 4 * (64 + 128) * 2
                                                 + 4 * (128 + 64))

    def loss(trained):
        return jnp.mean(nnx.merge(graphdef, lora.merge(trained, frozen))(ids, mask) ** 2)

    grads = jax.jit(jax.grad(loss))(trained)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    # and the full gradient of the base is not what the step asks for: nothing frozen is differentiated
    assert jax.tree.structure(grads) == jax.tree.structure(trained)


def test_adapters_off_is_the_base_bit_for_bit():
    """Both under jit, as the rollout computes them (eager and jitted forwards round differently)."""
    ids, mask = batch()
    base_graphdef, base_params = nnx.split(build_model(CFG))
    logits = jax.jit(lambda p: nnx.merge(base_graphdef, p)(ids, mask))(base_params)
    model = randomised_adapters(lora.apply(build_model(CFG), LoraConfig(rank=4, alpha=8.0), seed=1))
    graphdef, params = nnx.split(model)
    assert not np.allclose(model(ids, mask), logits, atol=1e-3)
    off = jax.jit(lambda p: nnx.merge(graphdef, lora.adapters_off(p))(ids, mask))(params)
    np.testing.assert_array_equal(off, logits)


def test_merged_model_equals_the_adapted_model():
    ids, mask = batch()
    cfg = LoraConfig(rank=4, alpha=8.0)
    model = randomised_adapters(lora.apply(build_model(CFG), cfg, seed=1))
    merged = lora.merged(model, cfg)
    assert not lora.has_adapters(merged)
    np.testing.assert_allclose(merged(ids, mask), model(ids, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize, bound", [("int8", 0.01), ("nf4", 0.15)])
def test_quantised_base_stays_near_the_float_base(quantize, bound):
    """QLoRA's forward against the float base, on random weights (N(0, 0.02) kernels): relative L2 error
    of the logits, within the bounds docs/lora.md states beside the measured figures."""
    ids, mask = batch()
    logits = build_model(CFG)(ids, mask)
    model = lora.apply(build_model(CFG), LoraConfig(rank=4, alpha=8.0, quantize=quantize), seed=1)
    error = float(jnp.linalg.norm(model(ids, mask) - logits) / jnp.linalg.norm(logits))
    assert 0 < error < bound
    kernel = model.backbone.layers[0].attn.q_proj.kernel
    assert kernel.array.qvalue.dtype == (jnp.int8 if quantize == "int8" else jnp.uint4)


def test_bad_lora_configs_name_the_field():
    with pytest.raises(ConfigError, match="lora.rank"):
        LoraConfig(rank=0)
    with pytest.raises(ConfigError, match="lora.quantize"):
        LoraConfig(quantize="fp3")
    with pytest.raises(ConfigError, match=r"lora.modules.*matches none.*\(layers/0/attn/k_proj, "):
        lora.apply(build_model(CFG), LoraConfig(modules=r".*nothing_here"))
    with pytest.raises(ConfigError, match="rl.lora"):
        LoraConfig.of({"rnak": 4}, "rl")


def test_ppo_with_lora_trains_adapters_and_value_head_only(tiny_policy, prompts):
    run, before, experience, _, state, metrics = policy_iteration(tiny(tiny_policy, *LORA, *ONE_DEVICE), prompts)
    assert run.ref_graphdef is None and not run.ref_params  # no second copy of the weights
    # at the start the policy is its reference: the same log-probs, KL 0
    np.testing.assert_array_equal(experience.logp_BxN, experience.ref_logp_BxN)
    moved = {"/".join(map(str, p)) for (p, a), (_, b) in zip(nnx.to_flat_state(before), nnx.to_flat_state(
        state.params)) if not np.array_equal(a[...], b[...])}
    assert moved and all("_lora_" in name or name.startswith("value_head") for name in moved)
    assert any(name.endswith("kernel_lora_b") for name in moved) and np.isfinite(metrics["loss"])
    # Adam's moments exist for the trainable parameters only
    trainable = lora.split(before, online.trainable_parameters(run.cfg))[0]
    assert lora.parameter_count(state.opt_state) < 3 * lora.parameter_count(trainable) + 10


def test_ppo_with_lora_eight_devices_match_one(tiny_policy, prompts):
    _, _, exp1, scores, state1, metrics1 = policy_iteration(tiny(tiny_policy, *LORA, *ONE_DEVICE), prompts)
    _, _, exp8, _, state8, metrics8 = policy_iteration(tiny(tiny_policy, *LORA, *EIGHT_DEVICES), prompts, scores)
    np.testing.assert_array_equal(exp1.ids_BxT, exp8.ids_BxT)
    np.testing.assert_allclose(exp8.logp_BxN, exp1.logp_BxN, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state1.params), jax.tree.leaves(state8.params)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-4, atol=1e-6)


def test_lora_checkpoint_holds_adapters_and_resumes_exactly(tmp_path, tiny_policy, prompts):
    exp = tiny(tiny_policy, *LORA, "--config.rl.algorithm='grpo'", "--config.rl.samples_per_prompt=2",
               "--config.rl.rollout_prompts=4", "--config.rl.kl_target=None", *ONE_DEVICE)
    reward = LengthGold()
    straight = policy_training.train(exp, str(tmp_path / "a"), reward, LengthGold(), prompts, progress=False)
    policy_training.train(exp, str(tmp_path / "b"), reward, LengthGold(), prompts, stop_at=2, progress=False)
    resumed = policy_training.train(exp, str(tmp_path / "b"), reward, LengthGold(), prompts, progress=False)
    for x, y in zip(jax.tree.leaves(jax.device_get(straight["state"])), jax.tree.leaves(
            jax.device_get(resumed["state"]))):
        np.testing.assert_array_equal(x, y)
    saved = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.isdigit())
    sizes = sum(f.stat().st_size for f in (tmp_path / "a" / "checkpoints" / saved[-1]).rglob("*") if f.is_file())
    base = lora.parameter_count(lora.split(jax.device_get(straight["state"].params),
                                           online.trainable_parameters(exp.rl))[1]) * 4
    assert sizes < base / 4  # adapters, value head and Adam's moments: far less than the frozen base


SENTENCE = "The movie was a delight from start to finish, and the acting was superb."


@pytest.fixture(scope="module")
def smollm2_adapted(smollm2_dir):
    """SmolLM2-135M with rank-8 adapters on every projection, B randomised so that they matter."""
    from rlhf_jax.models import from_pretrained, load_tokenizer

    cfg = LoraConfig(rank=8, alpha=16.0)
    model = randomised_adapters(lora.apply(from_pretrained(smollm2_dir), cfg, seed=0), scale=0.02)
    ids = load_tokenizer(smollm2_dir)(SENTENCE, return_tensors="np")["input_ids"]
    return model, cfg, ids


@pytest.mark.slow
def test_peft_export_loads_onto_transformers_smollm2(tmp_path, smollm2_dir, smollm2_adapted):
    import peft
    import torch
    import transformers

    from rlhf_jax.models.adapter_export import save_adapters

    model, cfg, ids = smollm2_adapted
    ours = np.asarray(model(ids, np.ones_like(ids)))
    save_adapters(model, cfg, str(tmp_path / "adapters"), smollm2_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        before = base(torch.tensor(ids)).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapters")).eval()
    with torch.no_grad():
        theirs = adapted(torch.tensor(ids)).logits.numpy()
    assert np.abs(theirs - before).max() > 0.1  # the adapters change the logits...
    assert np.abs(ours - theirs).max() <= 1e-3  # ...and PEFT applies them as we do (test_llama's bound)


@pytest.mark.slow
def test_merged_export_is_a_transformers_directory_of_the_adapted_model(tmp_path, smollm2_dir, smollm2_adapted):
    import torch
    import transformers

    from rlhf_jax.models import save_pretrained

    model, cfg, ids = smollm2_adapted
    ours = np.asarray(model(ids, np.ones_like(ids)))
    save_pretrained(lora.merged(model, cfg), str(tmp_path / "merged"))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(theirs(torch.tensor(ids)).logits.numpy(), ours, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_nf4_base_of_smollm2_stays_within_the_stated_tolerance(smollm2_dir):
    """QLoRA's 4-bit base against the float one on SmolLM2's real weights (blocks of 64), over the sentence's
    next-token distributions: mean KL and top-1 agreement within the bounds docs/lora.md states."""
    from rlhf_jax.models import from_pretrained, load_tokenizer

    ids = load_tokenizer(smollm2_dir)(SENTENCE, return_tensors="np")["input_ids"]
    mask = np.ones_like(ids)
    logp = jax.nn.log_softmax(from_pretrained(smollm2_dir)(ids, mask))
    quantised = lora.apply(from_pretrained(smollm2_dir), LoraConfig(rank=8, alpha=16.0, quantize="nf4"))
    logq = jax.nn.log_softmax(quantised(ids, mask))
    kl = float(jnp.mean(jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)))
    agree = float(jnp.mean(jnp.argmax(logp, -1) == jnp.argmax(logq, -1)))
    print(f"nf4 SmolLM2: mean next-token KL {kl:.4f} nats, top-1 agreement {agree:.3f}")
    assert 0 < kl < 0.4 and agree >= 0.8


def supervised(name, *overrides):
    import os

    from conftest import CONFIGS

    from rlhf_jax.config import load_config

    return load_config(os.path.join(CONFIGS, f"{name}.py"), ["--config.model.lora={'rank': 4, 'alpha': 8.0}",
                                                            *ONE_DEVICE, *overrides])


@pytest.mark.parametrize("name", ["tiny_sft", "tiny_cls"])
def test_supervised_lora_trains_adapters_and_new_head_and_restores(tmp_path, name):
    """SFT (LM head frozen) and classification (its new head trains): only adapters (and that head) move,
    the checkpoint holds them alone, and ``trained.restore`` rebuilds the model from the base plus them."""
    from rlhf_jax.runs.supervised import prepare, train
    from rlhf_jax.trained import restore

    exp = supervised(name, "--config.train.steps=3", "--config.train.learning_rate=3e-3")
    before = jax.device_get(prepare(exp, str(tmp_path / "init")).state.params)
    out = train(exp, str(tmp_path / "run"), progress=False)
    after = jax.device_get(out["params"])
    moved = {"/".join(map(str, p)) for (p, a), (_, b) in zip(nnx.to_flat_state(before), nnx.to_flat_state(after))
             if not np.array_equal(a[...], b[...])}
    assert any("_lora_" in m for m in moved)
    allowed = ("head/",) if name == "tiny_cls" else ()
    assert all("_lora_" in m or m.startswith(allowed) for m in moved), moved
    if name == "tiny_cls":
        assert any(m.startswith("head/") for m in moved)
    restored = restore(str(tmp_path / "run"), exp)
    for (p, a), (_, b) in zip(nnx.to_flat_state(after), nnx.to_flat_state(jax.device_get(restored.params))):
        np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))


def test_scanned_layers_carry_stacked_adapters():
    """With scan_layers the adapters are stacked on the layer axis ([L, D_in, r]); the adapted scanned model
    starts as its base, trains the adapters and equals its merged plain model."""
    cfg = CFG.replace(scan_layers=True, remat="full")
    ids, mask = batch()
    logits = build_model(cfg)(ids, mask)
    lc = LoraConfig(rank=4, alpha=8.0)
    model = lora.apply(build_model(cfg), lc, seed=1)
    np.testing.assert_array_equal(model(ids, mask), logits)
    assert model.backbone.layers.attn.q_proj.kernel_lora_a.shape == (CFG.num_layers, 64, 4)
    randomised_adapters(model)
    graphdef, params = nnx.split(model)
    trained, frozen = lora.split(params, lora.Trainable())
    grads = jax.grad(lambda t: jnp.mean(nnx.merge(graphdef, lora.merge(t, frozen))(ids, mask) ** 2))(trained)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    np.testing.assert_allclose(lora.merged(model, lc)(ids, mask), model(ids, mask), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="lora.quantize"):
        lora.apply(build_model(cfg), LoraConfig(quantize="nf4"))


@pytest.mark.parametrize("scan", [False, True])
def test_bfloat16_computation_stays_bfloat16_with_float32_adapters(scan):
    """float32 adapters on a bfloat16 forward: the projections still return bfloat16 (the residual stream is
    not promoted, the scan's carry keeps its type), and the adapted model starts as the base exactly."""
    cfg = CFG.replace(dtype="bfloat16", scan_layers=scan)
    ids, mask = batch()
    logits = build_model(cfg)(ids, mask)
    model = lora.apply(build_model(cfg), LoraConfig(rank=4, alpha=8.0), seed=1)
    assert model.hidden_states(ids, mask).dtype == jnp.bfloat16
    projection = model.backbone.layers.attn.q_proj if scan else model.backbone.layers[0].attn.q_proj
    assert projection.kernel_lora_a.dtype == jnp.float32
    np.testing.assert_array_equal(model(ids, mask), logits)
