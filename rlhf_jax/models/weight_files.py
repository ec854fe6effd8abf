"""Reading checkpoint files into numpy: transformers safetensors directories and llama GGUF files.

GGUF stores q/k projection rows in llama.cpp's interleaved RoPE order; ``read_gguf`` permutes them back
to transformers' rotate-half order and names every tensor as transformers does, so ``convert`` maps
both sources through one table.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from rlhf_jax.models.convert import CheckpointError


class SafetensorsTensor:
    """One tensor of a safetensors file, read on demand: ``tensor[region]`` (a tuple of slices) reads just
    that region from the file, ``np.asarray(tensor)`` all of it. So a host places a sharded parameter by
    reading only its own devices' shards, never the whole tensor."""

    def __init__(self, path: str, name: str, shape: tuple[int, ...]):
        self.path, self.name, self.shape = path, name, tuple(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        from safetensors import safe_open

        try:
            with safe_open(self.path, framework="numpy") as f:
                return f.get_slice(self.name)[tuple(region)]
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise CheckpointError(f"{self.path}: cannot read safetensors tensor '{self.name}' ({error})") from error

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[(slice(None),) * self.ndim]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"SafetensorsTensor({self.path!r}, {self.name!r}, shape={self.shape})"


def read_safetensors_dir(path: str) -> dict[str, SafetensorsTensor]:
    """Every tensor of a transformers directory (single file or sharded with an index), unread: only the
    headers are parsed here; a tensor's bytes are read when it (or a region of it) is indexed."""
    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path}: no model.safetensors (or model.safetensors.index.json) in this directory")
    tensors = {}
    for name in files:
        file = os.path.join(path, name)
        try:
            with safe_open(file, framework="numpy") as f:
                tensors.update({key: SafetensorsTensor(file, key, f.get_slice(key).get_shape()) for key in f.keys()})
        except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{file}: cannot read safetensors file ({error})") from error
    return tensors


GGUF_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (interleaved RoPE pairs) back to transformers' rotate-half order."""
    rows, cols = weight.shape
    return weight.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A llama GGUF file as (transformers-style config dict, float32 tensors with transformers names)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable GGUF file ({error})") from error

    def field(name, default=None):
        return reader.fields[name].contents() if name in reader.fields else default

    arch = field("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture {arch!r} is not supported (only llama)")
    n_head, n_kv = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    tensors = {}
    for tensor in reader.tensors:
        value = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind not in GGUF_LAYER_NAMES:
                raise CheckpointError(f"{path}: unknown tensor '{tensor.name}'")
            if kind == "attn_q":
                value = _unpermute_rows(value, n_head)
            elif kind == "attn_k":
                value = _unpermute_rows(value, n_kv)
            name = f"layers.{parts[1]}.{GGUF_LAYER_NAMES[kind]}.weight"
        else:
            name = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                    "output.weight": "lm_head.weight"}.get(tensor.name)
            if name is None:
                raise CheckpointError(f"{path}: unknown tensor '{tensor.name}'")
        tensors[name] = value
    hidden = field("llama.embedding_length")
    config = {
        "model_type": "llama", "vocab_size": int(tensors["embed_tokens.weight"].shape[0]), "hidden_size": hidden,
        "num_hidden_layers": field("llama.block_count"), "num_attention_heads": n_head, "num_key_value_heads": n_kv,
        "head_dim": field("llama.rope.dimension_count", hidden // n_head),
        "intermediate_size": field("llama.feed_forward_length"),
        "max_position_embeddings": field("llama.context_length", 2048),
        "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(field("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "bos_token_id": field("tokenizer.ggml.bos_token_id"), "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "pad_token_id": field("tokenizer.ggml.padding_token_id"),
    }
    return config, tensors
