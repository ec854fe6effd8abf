"""KV-cache decoding equals recomputing the whole sequence; the sampler's filters, EOS and PRNG."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax.config import ConfigError, ModelConfig
from rlhf_jax.models import KVCache, build_model
from rlhf_jax.sampling import SamplingConfig, categorical, filter_logits, generate


def tiny(family):
    return build_model(ModelConfig(family=family, vocab_size=50, hidden_size=32, num_heads=4,
                                   num_kv_heads=2 if family == "llama" else None, intermediate_size=64,
                                   max_position_embeddings=64), seed=3)


# Jitted: eager calls would compile each of the model's operations again at every new length.
forward = nnx.jit(lambda model, ids, mask: model(ids, mask))
decode = nnx.jit(lambda model, ids, mask, cache: model.decode(ids, mask, cache))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_decoding_equals_full_recompute(family):
    model = tiny(family)
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, 50, size=(3, 6))
    prompt_mask = np.ones_like(prompt)
    prompt_mask[1, :2] = 0  # left padding of different lengths
    prompt_mask[2, :5] = 0
    steps = 5
    new_tokens = rng.integers(1, 50, size=(3, steps))
    cache = KVCache.empty(model.config, 3, 6 + steps)
    logits, cache = decode(model, prompt, prompt_mask, cache)
    full = forward(model, prompt, prompt_mask)
    real = prompt_mask.astype(bool)
    assert np.abs(np.asarray(logits) - np.asarray(full))[real].max() <= 1e-5
    for t in range(steps):
        step_logits, cache = decode(model, new_tokens[:, t:t + 1], np.ones((3, 1), np.int32), cache)
        ids = np.concatenate([prompt, new_tokens[:, :t + 1]], axis=1)
        mask = np.concatenate([prompt_mask, np.ones((3, t + 1), np.int32)], axis=1)
        recomputed = np.asarray(forward(model, ids, mask))[:, -1]
        assert np.abs(np.asarray(step_logits)[:, 0] - recomputed).max() <= 1e-5, f"step {t}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prefill_gives_decode_logits_at_each_rows_last_real_token(family):
    model = tiny(family)
    prompt = np.random.default_rng(1).integers(1, 50, size=(3, 6))
    mask = np.ones_like(prompt)
    mask[1, :3] = 0  # left padding
    mask[2, 4:] = 0  # right padding: the last real token is not the last column
    all_logits, cache_all = model.decode(prompt, mask, KVCache.empty(model.config, 3, 8))
    last_logits, cache_last = model.prefill(prompt, mask, KVCache.empty(model.config, 3, 8))
    expected = np.asarray(all_logits)[np.arange(3), [5, 5, 3]]
    np.testing.assert_array_equal(np.asarray(last_logits), expected)
    for written, reference in zip(jax.tree.leaves(cache_last), jax.tree.leaves(cache_all)):
        np.testing.assert_array_equal(np.asarray(written), np.asarray(reference))


def test_categorical_draws_exactly_jax_random_categorical():
    """Same Gumbel draws, same argmax (first index on ties): the very same tokens, not just the same law."""
    logits = jax.random.normal(jax.random.key(1), (8, 1000)) * 3
    ties = jnp.round(logits)  # many equal logits per row
    for seed in range(20):
        keys = jax.random.split(jax.random.key(seed), 8)
        for table in (logits, ties, jnp.where(logits > 0, logits, jnp.finfo(jnp.float32).min)):
            expected = jax.vmap(jax.random.categorical)(keys, table)
            np.testing.assert_array_equal(np.asarray(jax.jit(categorical)(keys, table)), np.asarray(expected))


def test_left_padding_does_not_change_a_row():
    model = tiny("llama")
    ids = np.array([[7, 8, 9, 10]])
    padded = np.array([[0, 0, 7, 8, 9, 10]])
    mask = np.array([[0, 0, 1, 1, 1, 1]])
    alone = np.asarray(forward(model, ids, np.ones_like(ids)))[0]
    in_pad = np.asarray(forward(model, padded, mask))[0, 2:]
    assert np.abs(alone - in_pad).max() <= 1e-5


def test_greedy_generation_equals_argmax_of_full_recompute():
    model = tiny("gpt2")
    prompt = np.array([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = generate(model, prompt, mask, jax.random.key(0), SamplingConfig(max_new_tokens=6, greedy=True))
    ids, full_mask = prompt, mask
    for _ in range(6):
        nxt = np.argmax(np.asarray(forward(model, ids, full_mask))[:, -1], axis=-1)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        full_mask = np.concatenate([full_mask, np.ones((2, 1), int)], 1)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), ids[:, 5:])


def test_eos_stops_a_row_and_pads_after_it():
    model = tiny("llama")
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    greedy = generate(model, prompt, np.ones_like(prompt), jax.random.key(0),
                      SamplingConfig(max_new_tokens=8, greedy=True))
    eos = int(greedy.tokens_BxN[0, 2])  # make row 0's third token the EOS
    out = generate(model, prompt, np.ones_like(prompt), jax.random.key(0),
                   SamplingConfig(max_new_tokens=8, greedy=True, eos_token_id=eos, pad_token_id=49))
    tokens, live = np.asarray(out.tokens_BxN), np.asarray(out.response_mask_BxN)
    first_eos = int(np.argmax(tokens[0] == eos))
    assert first_eos <= 2
    assert live[0, :first_eos + 1].all() and not live[0, first_eos + 1:].any()
    assert (tokens[0, first_eos + 1:] == 49).all()


def test_each_row_has_its_own_random_stream():
    model = tiny("llama")
    config = SamplingConfig(max_new_tokens=10, temperature=1.0)
    prompt = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    a = np.asarray(generate(model, prompt, np.ones_like(prompt), jax.random.key(5), config).tokens_BxN)
    b = np.asarray(generate(model, prompt, np.ones_like(prompt), jax.random.key(5), config).tokens_BxN)
    c = np.asarray(generate(model, prompt, np.ones_like(prompt), jax.random.key(6), config).tokens_BxN)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    # the same prompt in two rows draws different samples
    same = np.array([[1, 2, 3], [1, 2, 3]])
    d = np.asarray(generate(model, same, np.ones_like(same), jax.random.key(5), config).tokens_BxN)
    assert (d[0] != d[1]).any()


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    def kept(x):
        return np.asarray(x[0] > jnp.finfo(jnp.float32).min)

    np.testing.assert_array_equal(kept(filter_logits(logits, 2, 1.0)), [1, 1, 0, 0, 0])
    # nucleus: mass before token j < 0.8 keeps 0.5, 0.2, 0.15 (mass before the 4th is 0.85)
    np.testing.assert_array_equal(kept(filter_logits(logits, 0, 0.8)), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(kept(filter_logits(logits, 0, 0.1)), [1, 0, 0, 0, 0])


def test_sampling_frequencies_follow_the_filtered_distribution():
    from rlhf_jax.sampling import choose_tokens

    logits = jnp.log(jnp.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    tokens = np.asarray(choose_tokens(jnp.broadcast_to(logits, (n, 5)), keys, SamplingConfig(top_k=2)))
    share = np.mean(tokens == 0)
    expected = 0.5 / 0.7
    assert set(np.unique(tokens)) == {0, 1}
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)


def test_bad_sampling_config_names_the_field():
    with pytest.raises(ConfigError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingConfig(temperature=0.0)
