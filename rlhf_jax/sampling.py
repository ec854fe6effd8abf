"""Jitted autoregressive sampling with a fixed-size KV cache.

Prompts may be padded on either side (the cache masks pads and positions count real tokens only).
One prefill call writes the whole prompt into the cache, then a ``lax.scan`` draws one token per
step. Every row draws from its own PRNG stream (``fold_in(row_key, step)``), so a row's sample does
not depend on which other rows share its batch. After a row emits EOS it emits ``pad_token_id``,
with ``response_mask`` 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rlhf_jax.config.core import ConfigError
from rlhf_jax.models.heads import Model
from rlhf_jax.models.transformer import KVCache
from rlhf_jax.rl import maths


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into tokens. Hashable: it is a static argument of the jitted sampler."""

    max_new_tokens: int = 32
    greedy: bool = False  # argmax; temperature, top_k and top_p are then ignored
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    eos_token_id: int | None = None  # None: never stop early
    pad_token_id: int = 0
    logprobs: bool = False  # also return log softmax(logits / temperature) at each sampled token

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"config field 'max_new_tokens': must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError(f"config field 'temperature': must be > 0 (or use greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"config field 'top_k': must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"config field 'top_p': must be in (0, 1], got {self.top_p}")


@struct.dataclass
class Generation:
    tokens_BxN: jax.Array  # sampled tokens, pad_token_id after EOS
    response_mask_BxN: jax.Array  # 1 for real response tokens (up to and including EOS)
    logp_BxN: jax.Array | None = None  # the sampler's own log-probs of them (config.logprobs), 0 after EOS


def filter_logits(logits_BxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Set to -inf every logit outside the top-k and outside the smallest top-p nucleus.

    Nucleus: sort probabilities descending, keep token j while the mass *before* it is < top_p
    (so the most likely token is always kept).
    """
    neg_inf = jnp.finfo(logits_BxV.dtype).min
    if top_k > 0:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg_inf, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
        kept_BxV = mass_before_BxV < top_p
        threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < threshold_Bx1, neg_inf, logits_BxV)
    return logits_BxV


def choose_tokens(logits_BxV: jax.Array, keys_B: jax.Array, config: SamplingConfig) -> jax.Array:
    if config.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = filter_logits(logits_BxV.astype(jnp.float32) / config.temperature, config.top_k, config.top_p)
    return categorical(keys_B, logits_BxV)


def categorical(keys_B: jax.Array, logits_BxV: jax.Array) -> jax.Array:
    """One token per row, exactly ``vmap(jax.random.categorical)(keys_B, logits_BxV)``: the Gumbel-max
    trick, token = argmax_v (logits_v + g_v), g_v = -log(-log u_v), with the same Gumbel draws.

    The argmax is taken as the first index holding the row's maximum, a max then a min over an iota:
    two plain reductions that XLA:CPU vectorises, where ``jnp.argmax``'s (value, index) pair reduction,
    fused with the Gumbel transform, ran element by element (1.6x the sampler's per-token cost at B=64).
    """
    scores_BxV = jax.vmap(lambda key, logits_V: jax.random.gumbel(key, logits_V.shape, logits_V.dtype) + logits_V)(
        keys_B, logits_BxV)
    best_Bx1 = scores_BxV.max(axis=-1, keepdims=True)
    index_BxV = jax.lax.broadcasted_iota(jnp.int32, scores_BxV.shape, 1)
    return jnp.min(jnp.where(scores_BxV == best_Bx1, index_BxV, scores_BxV.shape[-1]), axis=-1)


def sample(model: Model, prompt_ids_BxP, prompt_mask_BxP, rng, config: SamplingConfig) -> Generation:
    """The sampler as a traceable function of the model (for use inside a larger jitted program)."""
    batch, prompt_len = prompt_ids_BxP.shape
    cache = KVCache.empty(model.config, batch, prompt_len + config.max_new_tokens)
    next_logits_BxV, cache = model.prefill(prompt_ids_BxP, prompt_mask_BxP, cache)
    row_keys_B = jax.random.split(rng, batch)

    def step(carry, index):
        cache, next_logits_BxV, done_B = carry
        keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_B, index)
        token_B = choose_tokens(next_logits_BxV, keys_B, config)
        live_B = ~done_B
        token_B = jnp.where(live_B, token_B, config.pad_token_id)
        out = (token_B, live_B.astype(jnp.int32))
        if config.logprobs:
            out += (jnp.where(live_B, maths.token_logprobs(maths.log_softmax(next_logits_BxV, config.temperature),
                                                           token_B), 0.0),)
        if config.eos_token_id is not None:
            done_B = done_B | (token_B == config.eos_token_id)
        logits_Bx1xV, cache = model.decode(token_B[:, None], live_B[:, None].astype(jnp.int32), cache)
        return (cache, logits_Bx1xV[:, 0], done_B), out

    init = (cache, next_logits_BxV, jnp.zeros((batch,), bool))
    _, (tokens_NxB, live_NxB, *logp_NxB) = jax.lax.scan(step, init, jnp.arange(config.max_new_tokens))
    return Generation(tokens_BxN=tokens_NxB.T, response_mask_BxN=live_NxB.T,
                      logp_BxN=logp_NxB[0].T if logp_NxB else None)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, rng, config: SamplingConfig) -> Generation:
    return sample(nnx.merge(graphdef, state), prompt_ids_BxP, prompt_mask_BxP, rng, config)


def left_pad(token_lists, width: int, pad_token_id: int):
    """Token id lists -> (ids_BxW, mask_BxW) int32 numpy arrays, left-padded to ``width`` (a list longer
    than ``width`` keeps its first ``width`` tokens)."""
    import numpy as np

    ids = np.full((len(token_lists), width), pad_token_id, np.int32)
    mask = np.zeros((len(token_lists), width), np.int32)
    for row, tokens in enumerate(token_lists):
        tokens = list(tokens)[:width]
        ids[row, width - len(tokens):] = tokens
        mask[row, width - len(tokens):] = 1
    return ids, mask


def decode_responses(tokenizer, tokens_BxN, response_mask_BxN) -> list[str]:
    """The text of each row's real response tokens (special tokens dropped)."""
    import numpy as np

    tokens_BxN, live_BxN = np.asarray(tokens_BxN), np.asarray(response_mask_BxN).astype(bool)
    return [tokenizer.decode(tokens[live], skip_special_tokens=True) for tokens, live in zip(tokens_BxN, live_BxN)]


def generate(model: Model, prompt_ids_BxP, prompt_mask_BxP, rng: jax.Array, config: SamplingConfig) -> Generation:
    """Sample ``config.max_new_tokens`` tokens after each prompt (compiled once per shape and config)."""
    if not model.config.is_causal:
        raise ValueError(f"generation needs a causal model, not family {model.config.family!r}")
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, jnp.asarray(prompt_ids_BxP, jnp.int32), jnp.asarray(prompt_mask_BxP, jnp.int32),
                     rng, config)
