"""The transformer backbone: one Flax NNX implementation, three families.

Shapes are in tensor names: B batch, T query length, S key length (cache slots), D hidden,
H query heads, K key/value heads, G = H // K query heads per key/value head, Dh head dim,
F MLP width.

Family switches (all read from ``ModelConfig``):

=========  ==================  =========  ======  ===========  ==========
family     positions           norm       order   MLP          attention
=========  ==================  =========  ======  ===========  ==========
gpt2       learned             LayerNorm  pre-LN  GELU (tanh)  causal
llama      rotary (RoPE)       RMSNorm    pre-LN  SwiGLU       causal, GQA
bert       learned + types     LayerNorm  post-LN GELU (erf)   bidirectional
=========  ==================  =========  ======  ===========  ==========

Padding: ``attention_mask_BxT`` marks real tokens (1) and pads (0), on the left or the right.
Positions default to ``cumsum(mask) - 1``, so a left-padded row sees the same positions as the
unpadded one. Decoding uses a fixed-size ``KVCache`` (jit-friendly: shapes never change).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct

from rlhf_jax.config.model import ModelConfig
from rlhf_jax.sharding import constrain

RESIDUAL = ("batch", None, None)  # the residual stream: split along the batch, whole along length and width

INIT_STD = 0.02


def dense(in_features: int, out_features: int, axes: tuple, cfg: ModelConfig, *, rngs: nnx.Rngs,
          use_bias: bool = True, kernel_init=None) -> nnx.Linear:
    """A Linear layer whose kernel and bias carry logical axis names for sharding."""
    kernel_init = kernel_init or nnx.initializers.normal(INIT_STD)
    return nnx.Linear(
        in_features, out_features, use_bias=use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nnx.with_partitioning(kernel_init, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[-1],)), rngs=rngs)


def embedding(num: int, features: int, axes: tuple, cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     embedding_init=nnx.with_partitioning(nnx.initializers.normal(INIT_STD), axes), rngs=rngs)


def look_up(table: nnx.Embed, ids, rows_axis: str | None):
    """``table``'s rows at ``ids``, the table split along its rows, over ``rows_axis``'s mesh axes and the
    width's FSDP axes, and whole along its width. Each device keeps its share of the table (moved from the
    width split by one all-to-all), and XLA looks rows up as a local gather of the rows a device holds plus
    a sum over those axes: exact, one term nonzero. The rows then come out split as ``ids`` are. Left split
    along the width, they would come out split that way, and XLA could only re-split them along the batch
    by replicating them on every device; read whole, the table would be on every device (docs/distributed.md)."""
    if table.num_embeddings == 1:
        return table(ids)
    (rows_split,) = table.promote_dtype((constrain(table.embedding[...], ((rows_axis, "embed"), None)),),
                                        dtype=table.dtype, inexact=False)  # as nnx.Embed promotes
    return jnp.take(rows_split, ids, axis=0)


def norm(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """RMSNorm (llama) or LayerNorm (gpt2, bert) over the hidden axis."""
    ones = nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",))
    if cfg.uses_rmsnorm:
        return nnx.RMSNorm(cfg.hidden_size, epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                           use_fast_variance=False, scale_init=ones, rngs=rngs)
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         use_fast_variance=False, scale_init=ones,
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)), rngs=rngs)


def activation(name: str):
    return {"gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
            "gelu": lambda x: jax.nn.gelu(x, approximate=False),
            "silu": jax.nn.silu, "relu": jax.nn.relu}[name]


def default_positions(attention_mask_BxT: jax.Array, offset_B: jax.Array | int = 0) -> jax.Array:
    """Position of each token counting only real tokens: left padding does not shift positions."""
    return offset_B + jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def apply_rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, "rotate half" layout (as in transformers' Llama).

    With inv_freq_i = theta^(-2i/Dh) and angle = p * inv_freq (repeated over both halves),
    rope(x) = x * cos(angle) + rotate_half(x) * sin(angle), rotate_half([x1, x2]) = [-x2, x1].
    """
    head_dim = x_BxTxNxDh.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angle_BxTxHalf = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    angle_BxTx1xDh = jnp.concatenate([angle_BxTxHalf, angle_BxTxHalf], axis=-1)[:, :, None, :]
    x = x_BxTxNxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x * jnp.cos(angle_BxTx1xDh) + rotated * jnp.sin(angle_BxTx1xDh)
    return out.astype(x_BxTxNxDh.dtype)


@struct.dataclass
class KVCache:
    """Fixed-size key/value cache for decoding.

    keys: one [B, K, S, Dh] array per layer, values one [B, K, Dh, S] array per layer, or (layers scanned)
    one [L, B, K, S, Dh] / [L, B, K, Dh, S] array. These are the layouts in which XLA:CPU's two attention
    products read them (scores^T = keys q^T over Dh, out^T = values^T probs^T over S): stored token-major,
    [B, S, K, Dh], every layer's whole cache was transposed into them again at every decoded token
    (docs/performance.md). key_mask_BxS: slot holds a real token. end: number of slots written so far
    (the next write goes to slot ``end``).
    """

    keys: tuple
    values: tuple
    key_mask_BxS: jax.Array
    end: jax.Array

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
        keys_shape = (batch, cfg.kv_heads, max_len, cfg.dim_per_head)
        values_shape = (batch, cfg.kv_heads, cfg.dim_per_head, max_len)

        def zeros(shape):
            if cfg.scan_layers:
                return jnp.zeros((cfg.num_layers, *shape), cfg.dtype)
            return tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.num_layers))

        return cls(keys=zeros(keys_shape), values=zeros(values_shape),
                   key_mask_BxS=jnp.zeros((batch, max_len), bool), end=jnp.zeros((), jnp.int32))


class Attention(nnx.Module):
    """Multi-head attention with grouped-query heads (K <= H key/value heads)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, k, dh = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        bias = cfg.use_attention_bias
        self.q_proj = dense(d, h * dh, ("embed", "heads"), cfg, rngs=rngs, use_bias=bias)
        self.k_proj = dense(d, k * dh, ("embed", "kv_heads"), cfg, rngs=rngs, use_bias=bias)
        self.v_proj = dense(d, k * dh, ("embed", "kv_heads"), cfg, rngs=rngs, use_bias=bias)
        self.o_proj = dense(h * dh, d, ("heads", "embed"), cfg, rngs=rngs, use_bias=bias)

    def __call__(self, x_BxTxD, positions_BxT, allowed_BxTxS, layer_cache=None, cache_end=None):
        """Returns (out_BxTxD, (keys_BxKxSxDh, values_BxKxDhxS) written into the cache, or None)."""
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        h, k, dh = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        q_BxTxHxDh = self.q_proj(x_BxTxD).reshape(b, t, h, dh)
        k_BxTxKxDh = self.k_proj(x_BxTxD).reshape(b, t, k, dh)
        v_BxTxKxDh = self.v_proj(x_BxTxD).reshape(b, t, k, dh)
        if cfg.uses_rope:
            q_BxTxHxDh = apply_rope(q_BxTxHxDh, positions_BxT, cfg.rope_theta)
            k_BxTxKxDh = apply_rope(k_BxTxKxDh, positions_BxT, cfg.rope_theta)
        q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, k, h // k, dh)
        if layer_cache is None:  # this call's own keys and values, token-major
            keys, values, key_axes, value_axes, written = k_BxTxKxDh, v_BxTxKxDh, "bskd", "bskd", None
        else:  # written into the cache, in its layouts: keys [B, K, S, Dh], values [B, K, Dh, S] (KVCache)
            cached_k_BxKxSxDh, cached_v_BxKxDhxS = layer_cache
            new_k_BxKxTxDh = k_BxTxKxDh.transpose(0, 2, 1, 3).astype(cached_k_BxKxSxDh.dtype)
            new_v_BxKxDhxT = v_BxTxKxDh.transpose(0, 2, 3, 1).astype(cached_v_BxKxDhxS.dtype)
            keys = jax.lax.dynamic_update_slice(cached_k_BxKxSxDh, new_k_BxKxTxDh, (0, 0, cache_end, 0))
            values = jax.lax.dynamic_update_slice(cached_v_BxKxDhxS, new_v_BxKxDhxT, (0, 0, 0, cache_end))
            key_axes, value_axes, written = "bksd", "bkds", (keys, values)
        scores_BxKxGxTxS = jnp.einsum(f"btkgd,{key_axes}->bkgts", q_BxTxKxGxDh, keys,
                                      preferred_element_type=jnp.float32) / jnp.sqrt(dh).astype(jnp.float32)
        scores_BxKxGxTxS = jnp.where(allowed_BxTxS[:, None, None], scores_BxKxGxTxS, jnp.finfo(jnp.float32).min)
        probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(values.dtype)
        out_BxTxKxGxDh = jnp.einsum(f"bkgts,{value_axes}->btkgd", probs_BxKxGxTxS, values)
        return self.o_proj(out_BxTxKxGxDh.reshape(b, t, h * dh)), written


class MLP(nnx.Module):
    """GELU MLP (gpt2, bert): down(act(up x)); SwiGLU (llama): down(silu(gate x) * up x).

    SwiGLU runs on the N = B * T rows as one [N, D] matrix: the products are the same as on [B, T, D], but
    over (B, T) XLA:CPU writes each kernel's gradient, x^T dy, after a transposed copy of dy (a strided
    pass over every [N, F] gradient), and on rows it does not (docs/performance.md). The GELU MLP stays on
    [B, T, D]: there rows were no faster and moved the rounding of BERT's gradients.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, bias = cfg.hidden_size, cfg.intermediate_size, not cfg.gated_mlp
        self.act = activation(cfg.activation)
        self.gate_proj = dense(d, f, ("embed", "mlp"), cfg, rngs=rngs, use_bias=False) if cfg.gated_mlp else None
        self.up_proj = dense(d, f, ("embed", "mlp"), cfg, rngs=rngs, use_bias=bias)
        self.down_proj = dense(f, d, ("mlp", "embed"), cfg, rngs=rngs, use_bias=bias)

    def __call__(self, x_BxTxD):
        if self.gate_proj is None:
            return self.down_proj(self.act(self.up_proj(x_BxTxD)))
        x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
        h_NxF = self.act(self.gate_proj(x_NxD)) * self.up_proj(x_NxD)
        return self.down_proj(h_NxF).reshape(x_BxTxD.shape)


class Block(nnx.Module):
    """Pre-LN: x + attn(norm(x)), then x + mlp(norm(x)). Post-LN (bert): norm(x + attn(x)), norm(x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.post_norm = cfg.post_norm
        self.attn_norm = norm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = norm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, allowed_BxTxS, layer_cache=None, cache_end=None):
        if self.post_norm:
            attn_BxTxD, new_cache = self.attn(x_BxTxD, positions_BxT, allowed_BxTxS, layer_cache, cache_end)
            x_BxTxD = self.attn_norm(x_BxTxD + attn_BxTxD)
            return self.mlp_norm(x_BxTxD + self.mlp(x_BxTxD)), new_cache
        attn_BxTxD, new_cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, allowed_BxTxS, layer_cache, cache_end)
        x_BxTxD = x_BxTxD + attn_BxTxD
        return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), new_cache


def _saveable(policy: str):
    return None if policy == "full" else jax.checkpoint_policies.checkpoint_dots


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """``num_layers`` blocks as one Block whose parameters carry a leading layer axis (logical name 'layers')."""
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return Block(cfg, rngs=rngs)

    return make(rngs)


def scan_blocks(blocks: Block, x_BxTxD, positions_BxT, allowed_BxTxS, cache: KVCache | None, remat: str):
    """The stacked blocks applied in order by one ``lax.scan``: a single block is traced and compiled, and
    with remat (training, no cache) each layer is recomputed in the backward pass from its input alone.
    Returns (x_BxTxD, (keys_LxBxKxSxDh, values_LxBxKxDhxS) written, or None)."""
    graphdef, stacked = nnx.split(blocks)
    end = None if cache is None else cache.end

    def layer(x_BxTxD, weights_and_cache):
        weights, layer_cache = weights_and_cache
        out_BxTxD, written = nnx.merge(graphdef, weights)(x_BxTxD, positions_BxT, allowed_BxTxS, layer_cache, end)
        return constrain(out_BxTxD, RESIDUAL), written

    if cache is None and remat != "none":
        layer = jax.checkpoint(layer, policy=_saveable(remat), prevent_cse=False)
    return jax.lax.scan(layer, x_BxTxD, (stacked, None if cache is None else (cache.keys, cache.values)))


def _checkpointed_block(policy: str):
    """A block's forward under ``jax.checkpoint``: 'full' saves only its input, 'dots' also the matmul
    outputs. The block goes in as (graphdef, state), a pure function of arrays, so this also works inside
    other JAX transforms (the PPO rollout's ``lax.map``), where ``nnx.remat`` cannot reach the Variables."""
    @functools.partial(jax.checkpoint, policy=_saveable(policy), static_argnums=0)
    def pure(graphdef, state, x_BxTxD, positions_BxT, allowed_BxTxS):
        return nnx.merge(graphdef, state)(x_BxTxD, positions_BxT, allowed_BxTxS)[0]

    def forward(block, x_BxTxD, positions_BxT, allowed_BxTxS):
        graphdef, state = nnx.split(block)
        return pure(graphdef, state, x_BxTxD, positions_BxT, allowed_BxTxS)

    return forward


class Transformer(nnx.Module):
    """Embeddings, the stack of blocks and (pre-LN families) a final norm. Returns hidden states."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.token_embed = embedding(cfg.vocab_size, d, ("vocab", "embed"), cfg, rngs=rngs)
        self.position_embed = (None if cfg.uses_rope else
                               embedding(cfg.max_position_embeddings, d, ("positions", "embed"), cfg, rngs=rngs))
        is_bert = cfg.family == "bert"
        self.token_type_embed = embedding(cfg.type_vocab_size, d, (None, "embed"), cfg, rngs=rngs) if is_bert else None
        self.embed_norm = norm(cfg, rngs=rngs) if cfg.post_norm else None
        self.layers = (stacked_blocks(cfg, rngs) if cfg.scan_layers else
                       nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)]))
        self.final_norm = None if cfg.post_norm else norm(cfg, rngs=rngs)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, token_type_ids_BxT=None,
                 cache: KVCache | None = None):
        """Hidden states [B, T, D], and the updated cache when one is given.

        Without a cache, token t attends to keys s with mask[s] (and s <= t if causal). With a cache,
        the T new tokens are written at slots [end, end + T) and attend to every real cached slot
        up to their own.
        """
        cfg = self.cfg
        mask_BxT = attention_mask_BxT.astype(bool)
        t = input_ids_BxT.shape[1]
        if cache is None:
            key_mask_BxS = mask_BxT
            query_slot_T = jnp.arange(t)
            offset_B = 0
        else:
            if not cfg.is_causal:
                raise ValueError("a KV cache is only for causal families (gpt2, llama)")
            offset_B = cache.key_mask_BxS.sum(-1, dtype=jnp.int32)[:, None]
            key_mask_BxS = jax.lax.dynamic_update_slice(cache.key_mask_BxS, mask_BxT, (0, cache.end))
            query_slot_T = cache.end + jnp.arange(t)
        if positions_BxT is None:
            positions_BxT = default_positions(mask_BxT, offset_B)
        allowed_BxTxS = jnp.broadcast_to(key_mask_BxS[:, None, :], (mask_BxT.shape[0], t, key_mask_BxS.shape[1]))
        if cfg.is_causal:
            key_slot_S = jnp.arange(key_mask_BxS.shape[1])
            allowed_BxTxS = allowed_BxTxS & (key_slot_S[None, None, :] <= query_slot_T[None, :, None])

        x_BxTxD = look_up(self.token_embed, input_ids_BxT, "vocab")
        if self.position_embed is not None:
            x_BxTxD = x_BxTxD + look_up(self.position_embed, positions_BxT, "positions")
        if self.token_type_embed is not None:
            types_BxT = jnp.zeros_like(input_ids_BxT) if token_type_ids_BxT is None else token_type_ids_BxT
            x_BxTxD = x_BxTxD + look_up(self.token_type_embed, types_BxT, None)
        if self.embed_norm is not None:
            x_BxTxD = self.embed_norm(x_BxTxD)
        x_BxTxD = constrain(x_BxTxD, RESIDUAL)

        if cfg.scan_layers:
            x_BxTxD, written = scan_blocks(self.layers, x_BxTxD, positions_BxT, allowed_BxTxS, cache, cfg.remat)
            return self._finish(x_BxTxD, cache, written, key_mask_BxS, t)
        # Training (no cache) with remat: each block is recomputed in the backward pass.
        checkpointed = _checkpointed_block(cfg.remat) if cache is None and cfg.remat != "none" else None
        new_keys, new_values = [], []
        for i, block in enumerate(self.layers):
            if checkpointed is not None:
                x_BxTxD = constrain(checkpointed(block, x_BxTxD, positions_BxT, allowed_BxTxS), RESIDUAL)
                continue
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x_BxTxD, written = block(x_BxTxD, positions_BxT, allowed_BxTxS, layer_cache,
                                     None if cache is None else cache.end)
            x_BxTxD = constrain(x_BxTxD, RESIDUAL)
            if written is not None:
                new_keys.append(written[0])
                new_values.append(written[1])
        return self._finish(x_BxTxD, cache, (tuple(new_keys), tuple(new_values)), key_mask_BxS, t)

    def _finish(self, x_BxTxD, cache, written, key_mask_BxS, t: int):
        """The final norm, and the cache with this call's keys and values written."""
        if self.final_norm is not None:
            x_BxTxD = self.final_norm(x_BxTxD)
        if cache is None:
            return x_BxTxD, None
        keys, values = written
        return x_BxTxD, KVCache(keys=keys, values=values, key_mask_BxS=key_mask_BxS, end=cache.end + t)
