"""Llama: real SmolLM2 weights against transformers' LlamaForCausalLM loaded from the same GGUF."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import from_pretrained, load_tokenizer, save_pretrained
from rlhf_jax.sampling import SamplingConfig, generate

SENTENCE = "The movie was a delight from start to finish, and the acting was superb."


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf), dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    return from_pretrained(smollm2_gguf)


def perplexity(logits_1xTxV, ids_1xT):
    logprobs = jax.nn.log_softmax(
        jnp.asarray(logits_1xTxV[0, :-1], jnp.float64 if jax.config.x64_enabled else jnp.float32)
    )
    return float(np.exp(-np.mean(np.take_along_axis(np.asarray(logprobs), ids_1xT[0, 1:, None], -1))))


@pytest.mark.slow
def test_logits_and_perplexity_match(ours, reference, smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    ids = tokenizer(SENTENCE, return_tensors="np")["input_ids"]
    logits = np.asarray(ours(ids, np.ones_like(ids)))
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    assert np.abs(logits - expected).max() <= 1e-3
    assert round(perplexity(logits, ids), 3) == round(perplexity(expected, ids), 3)


@pytest.mark.slow
def test_greedy_generation_matches(ours, reference, smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    tokenizer.padding_side = "left"
    enc = tokenizer(["The movie was", "A thoroughly enjoyable film about two brothers who"], return_tensors="np",
                    padding=True)
    pad = tokenizer.pad_token_id
    config = SamplingConfig(max_new_tokens=16, greedy=True, eos_token_id=None, pad_token_id=pad)
    tokens = np.asarray(generate(ours, enc["input_ids"], enc["attention_mask"], jax.random.key(0), config).tokens_BxN)
    with torch.no_grad():
        out = reference.generate(
            input_ids=torch.tensor(enc["input_ids"]),
            attention_mask=torch.tensor(enc["attention_mask"]),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=pad,
        )
    np.testing.assert_array_equal(tokens, out[:, enc["input_ids"].shape[1]:].numpy())


@pytest.mark.slow
def test_gguf_and_converted_directory_agree(ours, smollm2_dir):
    from_dir = from_pretrained(smollm2_dir)
    ids = np.arange(5, 17)[None]
    np.testing.assert_array_equal(
        np.asarray(ours(ids, np.ones_like(ids))), np.asarray(from_dir(ids, np.ones_like(ids)))
    )


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_gqa_round_trip(tmp_path, tied):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                      tie_word_embeddings=tied, rope_theta=500.0)
    reference = transformers.LlamaForCausalLM(config).eval()
    reference.save_pretrained(str(tmp_path / "ref"))
    model = from_pretrained(str(tmp_path / "ref"))
    assert model.config.kv_heads == 2 and model.config.tie_word_embeddings == tied
    ids = np.random.default_rng(1).integers(0, 64, size=(2, 7))
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             position_ids=torch.tensor(positions)).logits.numpy()
    assert np.abs(np.asarray(model(ids, mask)) - expected)[mask.astype(bool)].max() <= 1e-4
    save_pretrained(model, str(tmp_path / "saved"))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "saved")).eval()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
