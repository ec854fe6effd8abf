"""Heads on the shared backbone, and ``Model`` = backbone + the head a config picks.

=================  =============================================  ======================
head               computes                                        output
=================  =============================================  ======================
causal_lm          hidden @ E^T (tied) or a separate lm_head       logits_BxTxV
masked_lm          E^T applied to LN(act(W hidden)) (+ bias)       logits_BxTxV
classification     W pool(hidden) (+ b)                            logits_BxC
scalar             w . pool(hidden) (+ b), per token if 'none'     scores_B or scores_BxT
=================  =============================================  ======================

pool: 'cls' is BERT's pooler, tanh(W h_0 + b); 'mean' is sum_t m_t h_t / sum_t m_t over the real
tokens (m the attention mask); 'last' reads the last real (non-pad) token; 'none' keeps every token
(a PPO value head).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.config.model import ModelConfig
from rlhf_jax.models.transformer import KVCache, Transformer, activation, dense, norm


def last_token_index(attention_mask_BxT: jax.Array) -> jax.Array:
    """Index of the last real token of each row (works for left and right padding)."""
    t = attention_mask_BxT.shape[1]
    return t - 1 - jnp.argmax(jnp.flip(attention_mask_BxT.astype(bool), axis=1), axis=1)


class LMHead(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.lm_head = (None if cfg.tie_word_embeddings else
                        dense(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs, use_bias=False))

    def __call__(self, hidden_BxTxD, attention_mask_BxT, token_embed: nnx.Embed):
        if self.lm_head is None:
            return token_embed.attend(hidden_BxTxD)
        return self.lm_head(hidden_BxTxD)


class MLMHead(nnx.Module):
    """BERT's prediction head: dense + activation + LayerNorm, then the tied decoder plus a bias."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.transform = dense(cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg, rngs=rngs)
        self.act = activation(cfg.activation)
        self.transform_norm = norm(cfg, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), cfg.param_dtype), sharding_names=("vocab",))

    def __call__(self, hidden_BxTxD, attention_mask_BxT, token_embed: nnx.Embed):
        h_BxTxD = self.transform_norm(self.act(self.transform(hidden_BxTxD)))
        return token_embed.attend(h_BxTxD) + self.bias[...]


class PooledHead(nnx.Module):
    """Classification (num_labels logits) or scalar (one score) from a pooled hidden state.

    'cls' pooling keeps BERT's pooler so that transformers' *ForSequenceClassification loads it;
    causal families follow transformers' convention of a bias-free ``score`` projection.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pooling = cfg.pooled_by
        self.scalar = cfg.head == "scalar"
        out = 1 if self.scalar else cfg.num_labels
        bert = cfg.family == "bert"
        self.pooler = dense(cfg.hidden_size, cfg.hidden_size, ("embed", None), cfg, rngs=rngs) if bert else None
        self.score = dense(cfg.hidden_size, out, ("embed", "labels"), cfg, rngs=rngs, use_bias=bert)

    def __call__(self, hidden_BxTxD, attention_mask_BxT, token_embed: nnx.Embed):
        if self.pooling == "cls":
            pooled = jnp.tanh(self.pooler(hidden_BxTxD[:, 0]))
        elif self.pooling == "mean":
            mask_BxTx1 = attention_mask_BxT[..., None].astype(hidden_BxTxD.dtype)
            pooled = (hidden_BxTxD * mask_BxTx1).sum(axis=1) / jnp.maximum(mask_BxTx1.sum(axis=1), 1.0)
        elif self.pooling == "last":
            index_B = last_token_index(attention_mask_BxT)
            pooled = jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0]
        else:
            pooled = hidden_BxTxD
        out = self.score(pooled)
        return out[..., 0] if self.scalar else out


HEAD_CLASSES = {"causal_lm": LMHead, "masked_lm": MLMHead, "classification": PooledHead, "scalar": PooledHead}


class Model(nnx.Module):
    """Backbone + head. ``model(ids, mask)`` gives the head's output; ``decode`` threads a KV cache."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.backbone = Transformer(cfg, rngs=rngs)
        self.head = HEAD_CLASSES[cfg.head](cfg, rngs=rngs)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, token_type_ids_BxT=None):
        hidden_BxTxD, _ = self.backbone(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT,
                                        token_type_ids_BxT=token_type_ids_BxT)
        return self.head(hidden_BxTxD, attention_mask_BxT, self.backbone.token_embed)

    def hidden_states(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, token_type_ids_BxT=None):
        return self.backbone(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT,
                             token_type_ids_BxT=token_type_ids_BxT)[0]

    def decode(self, input_ids_BxT, attention_mask_BxT, cache: KVCache):
        """Run T new tokens through the cache: returns (head output, updated cache)."""
        hidden_BxTxD, cache = self.backbone(input_ids_BxT, attention_mask_BxT, cache=cache)
        return self.head(hidden_BxTxD, attention_mask_BxT, self.backbone.token_embed), cache

    def prefill(self, input_ids_BxT, attention_mask_BxT, cache: KVCache):
        """``decode`` of a whole prompt with the head applied at each row's last real token only:
        (head output for that token, e.g. next-token logits_BxV; updated cache). A causal LM head over
        every prompt position would cost B x T x D x V multiply-adds for logits that sampling drops."""
        hidden_BxTxD, cache = self.backbone(input_ids_BxT, attention_mask_BxT, cache=cache)
        last_B = last_token_index(attention_mask_BxT)
        hidden_Bx1xD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)
        return self.head(hidden_Bx1xD, jnp.ones_like(attention_mask_BxT[:, :1]), self.backbone.token_embed)[:, 0], cache


def build_model(cfg: ModelConfig, seed: int = 0) -> Model:
    """A freshly initialised model. Parameters carry logical axis names (see rlhf_jax.sharding)."""
    with nnx.use_eager_sharding(False):
        return Model(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Model:
    """The model with ShapeDtypeStructs instead of arrays: shapes and shardings without memory."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0)))
