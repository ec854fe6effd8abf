"""The architecture of one transformer (``ModelConfig``) and the device mesh (``MeshConfig``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rlhf_jax.config.core import field, require, require_positive_ints

FAMILIES = ("gpt2", "llama", "bert")
HEADS = ("causal_lm", "masked_lm", "classification", "scalar")
POOLINGS = ("cls", "mean", "last", "none")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One transformer, three families, four heads. The family decides the architecture switches
    (the properties below); the head what is read off the last hidden states."""

    family: str = field(doc="'gpt2' (learned positions, pre-LayerNorm, GELU), 'llama' (RoPE, RMSNorm, SwiGLU, "
                            "grouped-query attention) or 'bert' (bidirectional, token types, post-LayerNorm)")
    head: str = field("causal_lm", "'causal_lm', 'masked_lm' (BERT transform + tied decoder), 'classification' "
                                   "(num_labels logits from a pooled state) or 'scalar' (one score: reward, value)")
    vocab_size: int = field(256, "token embedding rows")
    hidden_size: int = field(64, "width of the residual stream")
    num_layers: int = field(2, "transformer blocks")
    num_heads: int = field(4, "attention (query) heads")
    num_kv_heads: int | None = field(None, "key/value heads (grouped-query attention); None: num_heads")
    head_dim: int | None = field(None, "width of one head; None: hidden_size // num_heads")
    intermediate_size: int = field(256, "width of the MLP")
    max_position_embeddings: int = field(512, "longest sequence (learned positions; RoPE tables)")
    norm_eps: float = field(1e-5, "epsilon of LayerNorm / RMSNorm")
    rope_theta: float = field(10000.0, "RoPE base frequency (llama)")
    tie_word_embeddings: bool = field(True, "the LM head reuses the token embedding")
    type_vocab_size: int = field(2, "token-type embeddings (bert)")
    hidden_act: str | None = field(None, "MLP activation; None: the family's own (gelu_new, silu, gelu)")
    attention_bias: bool | None = field(None, "biases in the attention projections; None: True for gpt2/bert, "
                                              "False for llama")
    num_labels: int = field(2, "outputs of the classification head")
    pooling: str | None = field(None, "how classification / scalar heads read the sequence: 'cls' (BERT pooler), "
                                      "'mean' (masked mean), 'last' (last real token), 'none' (a score per "
                                      "token); None: 'cls' for bert, else 'last'")
    pad_token_id: int | None = field(None, "padding token")
    bos_token_id: int | None = field(None, "beginning-of-sequence token")
    eos_token_id: int | None = field(None, "end-of-sequence token (sampling stops there)")
    dtype: str = field("float32", "computation dtype")
    remat: str = field("none", "activation checkpointing of each block: 'none', 'full' (recompute the block in the "
                               "backward pass) or 'dots' (keep only matmul outputs)")
    param_dtype: str = field("float32", "parameter dtype")
    scan_layers: bool = field(False, "stack the blocks' parameters on a leading 'layers' axis and run them with "
                                     "one lax.scan (one block compiled, remat inside it); False: a loop of blocks")

    def __post_init__(self):
        require(self.family in FAMILIES, "family", f"{self.family!r} is not one of {FAMILIES}")
        require(self.head in HEADS, "head", f"{self.head!r} is not one of {HEADS}")
        if self.head == "causal_lm":
            require(self.is_causal, "head", f"'causal_lm' needs a causal family, not {self.family!r}")
        if self.head == "masked_lm":
            require(
                not self.is_causal, "head", f"'masked_lm' needs the bidirectional 'bert' family, not {self.family!r}"
            )
        require_positive_ints(self, ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                                     "max_position_embeddings", "num_labels"))
        require(self.head_dim is not None or self.hidden_size % self.num_heads == 0, "num_heads",
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        require(self.num_heads % self.kv_heads == 0, "num_kv_heads",
                f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.kv_heads}")
        require(self.kv_heads == self.num_heads or self.family == "llama", "num_kv_heads",
                "grouped-query attention is only supported for the 'llama' family")
        require(
            self.pooling is None or self.pooling in POOLINGS, "pooling", f"{self.pooling!r} is not one of {POOLINGS}"
        )
        require(self.pooled_by != "cls" or self.family == "bert", "pooling", "'cls' pooling needs the 'bert' family")
        require(self.dtype in DTYPES, "dtype", f"{self.dtype!r} is not one of {DTYPES}")
        require(self.remat in REMAT_POLICIES, "remat", f"{self.remat!r} is not one of {REMAT_POLICIES}")
        require(self.param_dtype in DTYPES, "param_dtype", f"{self.param_dtype!r} is not one of {DTYPES}")
        require(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        require(self.activation in ("gelu_new", "gelu", "silu", "relu"), "hidden_act",
                f"{self.activation!r} is not supported")

    # Derived properties: the family decides the architecture switches.
    @property
    def is_causal(self) -> bool:
        return self.family in ("gpt2", "llama")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def uses_rope(self) -> bool:
        return self.family == "llama"

    @property
    def uses_rmsnorm(self) -> bool:
        return self.family == "llama"

    @property
    def post_norm(self) -> bool:
        return self.family == "bert"

    @property
    def gated_mlp(self) -> bool:
        return self.family == "llama"

    @property
    def activation(self) -> str:
        return self.hidden_act or {"gpt2": "gelu_new", "llama": "silu", "bert": "gelu"}[self.family]

    @property
    def use_attention_bias(self) -> bool:
        return self.attention_bias if self.attention_bias is not None else self.family != "llama"

    @property
    def pooled_by(self) -> str:
        return self.pooling or ("cls" if self.family == "bert" else "last")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        require(not unknown, unknown[0] if unknown else "", f"unknown model config field(s) {unknown}")
        return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape and the logical-axis rules that map parameter/batch axes onto it."""

    shape: tuple[tuple[str, int], ...] = field(
        (("data", -1), ("fsdp", 1), ("tensor", 1)),
        "sizes of the mesh axes 'data', 'fsdp', 'tensor'; -1 in one place takes the remaining devices")
    rules: tuple[tuple[str, Any], ...] = field(
        (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("labels", None),
         ("mlp", "tensor"), ("norm", None), ("positions", None), ("vocab", "tensor")),
        "logical axis name -> mesh axis (or a tuple of mesh axes, or None: replicated)")

    def __post_init__(self):
        axes = [name for name, _ in self.shape]
        require(len(set(axes)) == len(axes), "mesh.shape", f"repeated mesh axis in {axes}")
        require(sum(size == -1 for _, size in self.shape) <= 1, "mesh.shape", "at most one axis may be -1")
        for name, size in self.shape:
            require(isinstance(size, int) and (size > 0 or size == -1), "mesh.shape",
                    f"axis {name!r} has size {size!r}; use a positive integer or -1")
        for logical, mesh_axes in self.rules:
            targets = mesh_axes if isinstance(mesh_axes, tuple) else (mesh_axes,)
            for target in targets:
                require(target is None or target in axes, "mesh.rules",
                        f"logical axis {logical!r} maps to unknown mesh axis {target!r} (mesh axes: {axes})")
