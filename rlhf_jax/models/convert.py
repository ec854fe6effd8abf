"""Hugging Face checkpoints <-> NNX parameters, for the gpt2, bert and llama model types.

One table per family maps each NNX parameter path to the Hugging Face tensor it comes from:
``TensorRef(name, transpose, part)``. Loading reads through the table, saving writes back through it,
so the two directions cannot drift apart. ``part=(i, n)`` takes the i-th of n equal slices of the
tensor's last axis (GPT-2 stores q, k and v fused in ``c_attn``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.config.model import ModelConfig

log = logging.getLogger(__name__)

# model_type -> prefix of the backbone's tensors inside a head model (GPT2LMHeadModel, BertForMaskedLM, ...).
BASE_PREFIX = {"gpt2": "transformer.", "bert": "bert.", "llama": "model."}
# Tensors that transformers stores but that carry no parameters here (buffers, tied copies).
IGNORED_SUFFIXES = (
    "position_ids",
    "rotary_emb.inv_freq",
    "attn.bias",
    "attn.masked_bias",
    "cls.predictions.decoder.bias",
    "cls.predictions.decoder.weight",
)
ARCHITECTURES = {
    ("gpt2", "causal_lm"): "GPT2LMHeadModel", ("gpt2", "classification"): "GPT2ForSequenceClassification",
    ("bert", "masked_lm"): "BertForMaskedLM", ("bert", "classification"): "BertForSequenceClassification",
    ("llama", "causal_lm"): "LlamaForCausalLM", ("llama", "classification"): "LlamaForSequenceClassification",
}


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: the message names the file and the tensor or field."""


@dataclasses.dataclass(frozen=True)
class TensorRef:
    name: str  # transformers' name, without the backbone prefix for backbone tensors
    transpose: bool = False  # torch Linear stores [out, in]; NNX kernels are [in, out]
    part: tuple[int, int] | None = None  # (index, count) of equal slices along the last axis
    in_head: bool = False  # head tensors may be absent (a new head is initialised)


def _layer_refs(family: str, i: int) -> dict[tuple, TensorRef]:
    if family == "gpt2":
        p = f"h.{i}."
        refs = {("attn_norm", "scale"): TensorRef(p + "ln_1.weight"), ("attn_norm", "bias"): TensorRef(p + "ln_1.bias"),
                ("mlp_norm", "scale"): TensorRef(p + "ln_2.weight"), ("mlp_norm", "bias"): TensorRef(p + "ln_2.bias"),
                ("attn", "o_proj", "kernel"): TensorRef(p + "attn.c_proj.weight"),
                ("attn", "o_proj", "bias"): TensorRef(p + "attn.c_proj.bias"),
                ("mlp", "up_proj", "kernel"): TensorRef(p + "mlp.c_fc.weight"),
                ("mlp", "up_proj", "bias"): TensorRef(p + "mlp.c_fc.bias"),
                ("mlp", "down_proj", "kernel"): TensorRef(p + "mlp.c_proj.weight"),
                ("mlp", "down_proj", "bias"): TensorRef(p + "mlp.c_proj.bias")}
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            refs[("attn", proj, "kernel")] = TensorRef(p + "attn.c_attn.weight", part=(j, 3))
            refs[("attn", proj, "bias")] = TensorRef(p + "attn.c_attn.bias", part=(j, 3))
        return refs
    if family == "bert":
        p = f"encoder.layer.{i}."
        linears = {("attn", "q_proj"): "attention.self.query", ("attn", "k_proj"): "attention.self.key",
                   ("attn", "v_proj"): "attention.self.value", ("attn", "o_proj"): "attention.output.dense",
                   ("mlp", "up_proj"): "intermediate.dense", ("mlp", "down_proj"): "output.dense"}
        norms = {("attn_norm",): "attention.output.LayerNorm", ("mlp_norm",): "output.LayerNorm"}
        refs = {}
        for path, name in linears.items():
            refs[path + ("kernel",)] = TensorRef(p + name + ".weight", transpose=True)
            refs[path + ("bias",)] = TensorRef(p + name + ".bias")
        for path, name in norms.items():
            refs[path + ("scale",)] = TensorRef(p + name + ".weight")
            refs[path + ("bias",)] = TensorRef(p + name + ".bias")
        return refs
    p = f"layers.{i}."
    refs = {("attn_norm", "scale"): TensorRef(p + "input_layernorm.weight"),
            ("mlp_norm", "scale"): TensorRef(p + "post_attention_layernorm.weight")}
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        refs[("attn", proj, "kernel")] = TensorRef(p + f"self_attn.{proj}.weight", transpose=True)
        refs[("attn", proj, "bias")] = TensorRef(p + f"self_attn.{proj}.bias")
    for proj in ("gate_proj", "up_proj", "down_proj"):
        refs[("mlp", proj, "kernel")] = TensorRef(p + f"mlp.{proj}.weight", transpose=True)
    return refs


def _backbone_refs(cfg: ModelConfig) -> dict[tuple, TensorRef]:
    if cfg.family == "gpt2":
        refs = {
            ("token_embed", "embedding"): TensorRef("wte.weight"),
            ("position_embed", "embedding"): TensorRef("wpe.weight"),
            ("final_norm", "scale"): TensorRef("ln_f.weight"),
            ("final_norm", "bias"): TensorRef("ln_f.bias"),
        }
    elif cfg.family == "bert":
        refs = {("token_embed", "embedding"): TensorRef("embeddings.word_embeddings.weight"),
                ("position_embed", "embedding"): TensorRef("embeddings.position_embeddings.weight"),
                ("token_type_embed", "embedding"): TensorRef("embeddings.token_type_embeddings.weight"),
                ("embed_norm", "scale"): TensorRef("embeddings.LayerNorm.weight"),
                ("embed_norm", "bias"): TensorRef("embeddings.LayerNorm.bias")}
    else:
        refs = {
            ("token_embed", "embedding"): TensorRef("embed_tokens.weight"),
            ("final_norm", "scale"): TensorRef("norm.weight"),
        }
    for i in range(cfg.num_layers):
        refs.update({("layers", i) + path: ref for path, ref in _layer_refs(cfg.family, i).items()})
    return {("backbone",) + path: ref for path, ref in refs.items()}


def _head_refs(cfg: ModelConfig) -> dict[tuple, TensorRef]:
    if cfg.head == "causal_lm":
        return {("head", "lm_head", "kernel"): TensorRef("lm_head.weight", transpose=True, in_head=True)}
    if cfg.head == "masked_lm":
        p = "cls.predictions."
        return {("head", "transform", "kernel"): TensorRef(p + "transform.dense.weight", transpose=True, in_head=True),
                ("head", "transform", "bias"): TensorRef(p + "transform.dense.bias", in_head=True),
                ("head", "transform_norm", "scale"): TensorRef(p + "transform.LayerNorm.weight", in_head=True),
                ("head", "transform_norm", "bias"): TensorRef(p + "transform.LayerNorm.bias", in_head=True),
                ("head", "bias"): TensorRef(p + "bias", in_head=True)}
    score = "classifier" if cfg.family == "bert" else "score"
    return {("head", "pooler", "kernel"): TensorRef("pooler.dense.weight", transpose=True, in_head=True),
            ("head", "pooler", "bias"): TensorRef("pooler.dense.bias", in_head=True),
            ("head", "score", "kernel"): TensorRef(score + ".weight", transpose=True, in_head=True),
            ("head", "score", "bias"): TensorRef(score + ".bias", in_head=True)}


def param_table(cfg: ModelConfig) -> dict[tuple, TensorRef]:
    """Every NNX parameter path of a model with this config -> its transformers tensor."""
    return {**_backbone_refs(cfg), **_head_refs(cfg)}


def layer_paths(cfg: ModelConfig, path: tuple) -> list[tuple]:
    """The unrolled parameter paths one model parameter holds: a scanned block's parameter
    ('backbone', 'layers', ...) stacks every layer's ('backbone', 'layers', i, ...); any other, itself."""
    if cfg.scan_layers and path[:2] == ("backbone", "layers"):
        return [path[:2] + (i,) + path[2:] for i in range(cfg.num_layers)]
    return [path]


def missing_head_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> list[str]:
    """Head tensors that a model with this config has but the checkpoint lacks."""
    table = param_table(cfg)
    refs = [table[path] for param in model_param_paths(cfg) for path in layer_paths(cfg, param)]
    return sorted({ref.name for ref in refs if ref.in_head and ref.name not in tensors})


def model_param_paths(cfg: ModelConfig) -> list[tuple]:
    from rlhf_jax.models.heads import abstract_model

    return [path for path, _ in nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param))]


def canonical_names(tensors: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """Strip the backbone prefix ('transformer.', 'bert.', 'model.') so head and base checkpoints look alike."""
    prefix = BASE_PREFIX[model_type]
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}


def _from_ref(tensor: np.ndarray, ref: TensorRef) -> np.ndarray:
    if ref.transpose:
        tensor = tensor.T
    if ref.part is not None:
        index, count = ref.part
        width = tensor.shape[-1] // count
        tensor = tensor[..., index * width:(index + 1) * width]
    return tensor


def _ref_shape(shape: tuple[int, ...], ref: TensorRef) -> tuple[int, ...]:
    """The shape ``_from_ref`` gives a checkpoint tensor of ``shape``."""
    shape = shape[::-1] if ref.transpose else shape
    return shape if ref.part is None else shape[:-1] + (shape[-1] // ref.part[1],)


def _read_region(tensor, ref: TensorRef, region: tuple[slice, ...]) -> np.ndarray:
    """``_from_ref(tensor, ref)[region]``, reading only that region of ``tensor`` (a numpy array or a lazy
    ``weight_files.SafetensorsTensor``). ``region``: one slice per axis, with explicit bounds."""
    if ref.part is not None:  # the part's columns are a window of the (transposed) tensor's last axis
        index, count = ref.part
        offset = index * ((tensor.shape[0] if ref.transpose else tensor.shape[-1]) // count)
        last = region[-1]
        region = region[:-1] + (slice(last.start + offset, last.stop + offset),)
    if ref.transpose:
        return np.asarray(tensor[region[::-1]]).T
    return np.asarray(tensor[region])


def region_bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A device's index into an array (slices, open ends allowed) as (start, stop) per axis."""
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


def _place(shape, dtype, placement, tensors, refs, stacked: bool):
    """A parameter born on the mesh: each device's shard read from the checkpoint by itself (each distinct
    region once: replicas share it), so no device and no host holds a whole tensor it does not keep."""
    cache = {}

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        key = region_bounds(index, shape)
        region = tuple(slice(*bounds) for bounds in key)
        if key not in cache:
            if stacked:  # a scanned parameter [L, ...]: its layers' tensors, stacked
                value = np.stack([_read_region(tensors[refs[i].name], refs[i], region[1:]) for i in range(*key[0])])
            else:
                value = _read_region(tensors[refs[0].name], refs[0], region)
            cache[key] = np.asarray(value, dtype=dtype)
        return cache[key]

    return jax.make_array_from_callback(shape, placement, shard)


def assign_tensors(model: nnx.Module, tensors: dict[str, np.ndarray], source: str, layout=None) -> list[str]:
    """Copy transformers tensors (canonical names) into the model's parameters, in place.

    With a ``sharding.Layout``, each parameter is born on the mesh: every device receives only its shard,
    cut from the host tensor (``jax.make_array_from_callback``; in a multi-process run each process cuts
    the shards of its own devices), so no device ever holds a whole tensor it does not keep.

    Backbone tensors are required; missing head tensors leave the freshly initialised head in place
    (returned, so the caller can say so). ``model`` may be abstract (``abstract_model``) when the
    checkpoint has every tensor. Raises CheckpointError naming the tensor on a missing
    backbone tensor or any shape mismatch.
    """
    cfg: ModelConfig = model.config
    table = param_table(cfg)
    state = nnx.state(model, nnx.Param)
    placements = {path: v.get_value() for path, v in nnx.to_flat_state(layout.shardings(state))} if layout else {}
    new_heads, used = [], set()
    for path, variable in nnx.to_flat_state(state):
        unrolled = layer_paths(cfg, path)
        refs = [table[layer_path] for layer_path in unrolled]
        absent = [ref for ref in refs if ref.name not in tensors]
        if absent:
            if all(ref.in_head for ref in refs):
                new_heads.extend(ref.name for ref in absent)
                continue
            raise CheckpointError(
                f"{source}: missing tensor '{absent[0].name}' (needed for parameter {'/'.join(map(str, path))})"
            )
        stacked = unrolled != [path]  # a scanned parameter: [L, ...], one checkpoint tensor per layer
        expected, dtype = tuple(variable.get_value().shape), variable.get_value().dtype
        for ref in refs:
            shape = _ref_shape(tuple(tensors[ref.name].shape), ref)
            if ((len(refs),) + shape if stacked else shape) != expected:
                raise CheckpointError(f"{source}: tensor '{ref.name}' has shape {shape} but the config needs "
                                      f"{expected[1:] if stacked else expected} for parameter "
                                      f"{'/'.join(map(str, path))}")
        if layout is None:
            values = [_from_ref(np.asarray(tensors[ref.name]), ref) for ref in refs]
            variable.set_value(jnp.asarray(np.stack(values) if stacked else values[0], dtype=dtype))
        else:
            variable.set_value(_place(expected, dtype, placements[path], tensors, refs, stacked))
        used.update(ref.name for ref in refs)
    nnx.update(model, state)
    unused = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if unused:
        log.warning("%s: %d tensors not used by a '%s' head: %s", source, len(unused), cfg.head, unused[:8])
    return new_heads


def extract_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters as transformers tensors, named as in the architecture's own checkpoints."""
    cfg: ModelConfig = model.config
    table = param_table(cfg)
    pieces: dict[str, dict[int, np.ndarray]] = {}
    refs: dict[str, TensorRef] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(variable.get_value(), dtype=np.float32)
        unrolled = layer_paths(cfg, path)
        for i, layer_path in enumerate(unrolled):  # a scanned parameter: one tensor per layer
            ref = table[layer_path]
            index = ref.part[0] if ref.part else 0
            pieces.setdefault(ref.name, {})[index] = value if unrolled == [path] else value[i]
            refs[ref.name] = ref
    prefix = BASE_PREFIX[cfg.family]
    tensors = {}
    for name, parts in pieces.items():
        ref = refs[name]
        value = np.concatenate([parts[i] for i in sorted(parts)], axis=-1) if ref.part else parts[0]
        value = np.ascontiguousarray(value.T if ref.transpose else value)
        tensors[name if ref.in_head and not name.startswith("pooler.") else prefix + name] = value
    return tensors


# ----------------------------------------------------------------------------------------------
# Configs: transformers config dict <-> ModelConfig.

def _rope_theta(hf: dict[str, Any]) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"config.json: rope type {rope_type!r} is not supported (only 'default')")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict[str, Any], head: str, source: str = "config.json", **overrides) -> ModelConfig:
    """ModelConfig from a transformers config.json dict, for the given head (overrides win)."""
    model_type = hf.get("model_type")
    labels = hf.get("id2label")
    common = dict(head=head, pad_token_id=hf.get("pad_token_id"), bos_token_id=hf.get("bos_token_id"),
                  eos_token_id=hf.get("eos_token_id"), num_labels=len(labels) if labels else 2)
    if model_type == "gpt2":
        fields = dict(family="gpt2", vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"], num_layers=hf["n_layer"],
                      num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
                      max_position_embeddings=hf["n_positions"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                      hidden_act=hf.get("activation_function", "gelu_new"),
                      tie_word_embeddings=hf.get("tie_word_embeddings", True))
    elif model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(
                f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported"
            )
        fields = dict(family="bert", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                      intermediate_size=hf["intermediate_size"], max_position_embeddings=hf["max_position_embeddings"],
                      norm_eps=hf.get("layer_norm_eps", 1e-12), type_vocab_size=hf.get("type_vocab_size", 2),
                      hidden_act=hf.get("hidden_act", "gelu"))
    elif model_type == "llama":
        if hf.get("mlp_bias"):
            raise CheckpointError(f"{source}: mlp_bias=true is not supported for llama")
        fields = dict(family="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                      head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"],
                      max_position_embeddings=hf.get("max_position_embeddings", 2048),
                      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hf),
                      tie_word_embeddings=hf.get("tie_word_embeddings", False),
                      attention_bias=hf.get("attention_bias", False), hidden_act=hf.get("hidden_act", "silu"))
    else:
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: gpt2, bert, llama)")
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):  # lists (several EOS ids) keep the first
        if isinstance(common[key], list):
            common[key] = common[key][0] if common[key] else None
    return ModelConfig(**{**fields, **common, **overrides})


def hf_config(cfg: ModelConfig):
    """A transformers config object for this model (what save_pretrained writes as config.json)."""
    import transformers

    head = "classification" if cfg.head == "scalar" else cfg.head
    common = dict(vocab_size=cfg.vocab_size, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
                  eos_token_id=cfg.eos_token_id, num_labels=1 if cfg.head == "scalar" else cfg.num_labels,
                  architectures=[ARCHITECTURES[(cfg.family, head)]], tie_word_embeddings=cfg.tie_word_embeddings)
    if cfg.family == "gpt2":
        kw = dict(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
                  n_positions=cfg.max_position_embeddings, layer_norm_epsilon=cfg.norm_eps,
                  activation_function=cfg.activation)
    elif cfg.family == "bert":
        kw = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
                  layer_norm_eps=cfg.norm_eps, type_vocab_size=cfg.type_vocab_size, hidden_act=cfg.activation)
    else:
        kw = dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.kv_heads, head_dim=cfg.dim_per_head, intermediate_size=cfg.intermediate_size,
                  max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
                  rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                  attention_bias=cfg.use_attention_bias, hidden_act=cfg.activation)
    return transformers.AutoConfig.for_model(cfg.family, **kw, **common)
