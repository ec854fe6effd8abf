"""data.max_response_length: responses cut to R tokens, and the offline preference losses' LM head run at
the response's R positions alone (``preference.sequence_logprobs``), against the head at every position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import sharding
from rlhf_jax.config import ConfigError, MeshConfig, ModelConfig, experiment_from_dict
from rlhf_jax.data.pipeline import _tokenize_causal
from rlhf_jax.models import build_model
from rlhf_jax.rl import preference

EOS, PAD = 1, 0


class WordTokenizer:
    """Each word is its length + 1 (so never EOS or PAD); enough of a tokenizer for ``_tokenize_causal``."""

    eos_token_id, pad_token_id = EOS, PAD

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[len(word) + 1 for word in text.split()] for text in texts]}


def test_responses_are_cut_and_their_positions_listed():
    texts, prompts = ["a bb ccc dddd", "a", "a bb ccc dddd eeeee"], ["p q", "", "p q r s t u v w"]
    arrays = _tokenize_causal(WordTokenizer(), texts, 10, prompts, max_response=3)
    np.testing.assert_array_equal(arrays["input_ids"], [[2, 2, 2, 3, 4, 0, 0, 0, 0, 0],
                                                        [2, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                                                        [2, 2, 2, 2, 2, 2, 2, 2, 2, 3]])
    # row 1 has no prompt: its first token has no logit to predict it, and is not scored (as without R);
    # row 2's prompt fills all but two of the 10 positions
    np.testing.assert_array_equal(arrays["response_positions"], [[2, 3, 4], [1, 0, 0], [8, 9, 0]])
    whole = _tokenize_causal(WordTokenizer(), texts, 10, prompts)
    assert "response_positions" not in whole
    np.testing.assert_array_equal(whole["loss_mask"][0], [0, 0, 1, 1, 1, 1, 1, 0, 0, 0])  # 4 words + EOS


def tiny_model():
    return build_model(ModelConfig(family="llama", vocab_size=40, hidden_size=32, num_layers=2, num_heads=4,
                                   num_kv_heads=2, intermediate_size=64, max_position_embeddings=32), seed=1)


def data_config(task: str, max_response):
    return experiment_from_dict({"model": {"source": "x", "head": "causal_lm"}, "train": {"task": task},
                                 "data": {"max_length": 12, "max_response_length": max_response}}).data


def pairs_batch(max_response):
    rng = np.random.default_rng(0)
    words = "a bb ccc dddd eeeee ffffff ggggggg".split()
    examples = [{"prompt": " ".join(rng.choice(words, rng.integers(1, 5))),
                 "chosen": " ".join(rng.choice(words, rng.integers(1, 6))),
                 "rejected": " ".join(rng.choice(words, rng.integers(1, 6)))} for _ in range(7)]
    arrays = preference.tokenize_preference_sequences(examples, WordTokenizer(), 12, data_config("dpo", max_response))
    arrays = {name: np.concatenate([a, np.zeros_like(a[:1])]) for name, a in arrays.items()}  # a padding row
    return {name: jnp.asarray(a) for name, a in arrays.items()}


def test_scoring_the_response_positions_alone_gives_the_same_log_probs_and_gradient():
    """Responses of at most 6 tokens (5 words + EOS), so R = 6 cuts nothing: the positions path sums the same
    terms as the head at every position, and the gradient of a weighted sum of the log-probs is the same."""
    graphdef, params = nnx.split(tiny_model())
    whole, scored = pairs_batch(None), pairs_batch(6)
    assert scored["chosen_positions"].shape == (8, 6)
    for side in preference.SIDES:
        np.testing.assert_array_equal(whole[f"{side}_ids"], scored[f"{side}_ids"])
    weights = jnp.asarray(np.random.default_rng(1).normal(size=8), jnp.float32)

    def log_probs_and_gradient(batch):
        def weighted(params):
            chosen, rejected = preference.pair_logprobs(nnx.merge(graphdef, params), batch)
            return jnp.sum(weights * (chosen - 0.5 * rejected)), (chosen, rejected)
        (_, logps), grad = jax.jit(jax.value_and_grad(weighted, has_aux=True))(params)
        return logps, grad

    (whole_c, whole_r), whole_grad = log_probs_and_gradient(whole)
    (scored_c, scored_r), scored_grad = log_probs_and_gradient(scored)
    assert float(whole_c[-1]) == float(scored_c[-1]) == 0.0  # the padding row scores nothing
    assert float(jnp.min(whole_c[:-1])) < -1.0  # real rows are scored
    np.testing.assert_allclose(scored_c, whole_c, rtol=1e-6)
    np.testing.assert_allclose(scored_r, whole_r, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(scored_grad), jax.tree.leaves(whole_grad), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_shorter_bound_scores_the_cut_responses():
    """R = 2: each response is its first 2 tokens, as the head at every position reads them after the cut."""
    graphdef, params = nnx.split(tiny_model())
    scored = pairs_batch(2)
    cut = {name: array for name, array in scored.items() if not name.endswith("_positions")}
    model = nnx.merge(graphdef, params)
    for got, want in zip(preference.pair_logprobs(model, scored), preference.pair_logprobs(model, cut), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert int(jnp.max(jnp.sum(scored["chosen_loss_mask"], axis=1))) == 2


def test_unpaired_examples_score_their_response_positions_too():
    examples = [{"prompt": "p q", "response": "a bb ccc", "label": True},
                {"prompt": "p", "response": "dddd a", "label": False}]
    arrays = {r: preference.tokenize_unpaired(examples, WordTokenizer(), 12, data_config("kto_unpaired", r))
              for r in (None, 4)}
    np.testing.assert_array_equal(arrays[4]["response_positions"], [[2, 3, 4, 5], [1, 2, 3, 0]])
    model = tiny_model()
    np.testing.assert_allclose(preference.response_logprobs(model, arrays[4]),
                               preference.response_logprobs(model, arrays[None]), rtol=1e-6)


def test_sharded_equals_unsharded():
    """On 8 devices, fsdp 2 x tensor 4: the gather of the hidden states along the sequence, with the batch
    split, gives the one-device log-probs and gradient."""
    assert jax.device_count() == 8
    model, batch = tiny_model(), pairs_batch(6)
    graphdef, params = nnx.split(model)

    def value_and_grad(params, batch):
        return jax.value_and_grad(lambda p: jnp.sum(jnp.stack(preference.pair_logprobs(nnx.merge(graphdef, p),
                                                                                       batch))))(params)

    expected = jax.jit(value_and_grad)(params, batch)
    layout = sharding.Layout.of(MeshConfig(shape=(("data", 1), ("fsdp", 2), ("tensor", 4))))
    layout.place(model)
    _, sharded = nnx.split(model)
    batch = jax.device_put(batch, layout.batch)
    assert not batch["chosen_positions"].sharding.is_fully_replicated
    assert sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded)) > 4
    got = jax.jit(value_and_grad)(sharded, batch)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("data,train,message", [
    ({"max_length": 12, "max_response_length": 12}, {"task": "dpo"}, "must be < data.max_length"),
    ({"max_response_length": 0}, {"task": "dpo"}, "must be positive"),
    ({"max_response_length": 8}, {"task": "causal_lm"}, "applies to the offline preference tasks"),
])
def test_a_bad_max_response_length_is_refused(data, train, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"model": {"source": "x", "head": "causal_lm"}, "train": train, "data": data})
