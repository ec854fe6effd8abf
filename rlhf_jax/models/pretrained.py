"""The public entry points for weights: from_pretrained, load_tokenizer, save_pretrained.

A source is a local transformers directory (config.json + *.safetensors + tokenizer files), a
``.gguf`` file (llama), or the short name of an offline asset (see ``rlhf_jax.assets``).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import sys
import tempfile

from safetensors.numpy import save_file

from rlhf_jax import assets, files
from rlhf_jax.config.model import ModelConfig
from rlhf_jax.models import convert, gguf_tokenizer, weight_files
from rlhf_jax.models.convert import CheckpointError
from rlhf_jax.models.heads import Model, abstract_model, build_model

log = logging.getLogger(__name__)


def resolve_source(name_or_path: str) -> str:
    """A local path for a path or an asset name (fetching the asset if needed). A GGUF asset is served as the
    float32 transformers directory made from it once (``write_transformers_dir``)."""
    if os.path.exists(name_or_path):
        return name_or_path
    if name_or_path in assets.ASSETS:
        path = assets.asset_path(name_or_path)
        if path.suffix != ".gguf":
            return str(path)
        return str(assets.derived(name_or_path, "transformers", lambda out: write_transformers_dir(str(path), out)))
    raise FileNotFoundError(f"{name_or_path!r} is neither an existing path nor an asset name "
                            f"(assets: {', '.join(sorted(assets.ASSETS))})")


def write_transformers_dir(gguf_path: str, out) -> None:
    """A llama GGUF file as a transformers directory: config.json, float32 model.safetensors (dequantised,
    q/k rows un-permuted: ``weight_files.read_gguf``) and the tokenizer rebuilt from the file's own metadata
    (``gguf_tokenizer``; transformers' GGUF reader would need PyTorch)."""
    print(f"  converting {os.path.basename(gguf_path)} to safetensors (dequantising to float32) ...", file=sys.stderr,
          flush=True)
    hf, tensors = weight_files.read_gguf(gguf_path)
    cfg = convert.model_config_from_hf(hf, "causal_lm")
    prefix = convert.BASE_PREFIX[cfg.family]
    save_file({(k if k == "lm_head.weight" else prefix + k): v for k, v in tensors.items()},
              os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    convert.hf_config(cfg).save_pretrained(str(out))
    gguf_tokenizer.save(gguf_path, str(out))


def _head_from_architectures(hf: dict) -> str | None:
    for arch in hf.get("architectures") or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if arch.endswith("ForMaskedLM"):
            return "masked_lm"
        if arch.endswith("ForSequenceClassification"):
            return "scalar" if hf.get("num_labels") == 1 or len(hf.get("id2label") or {}) == 1 else "classification"
    return "causal_lm" if hf.get("model_type") in ("gpt2", "llama") else None


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(transformers config dict, tensors with canonical names) from a directory or a GGUF file."""
    if path.endswith(".gguf"):
        return weight_files.read_gguf(path)
    hf = read_hf_config(path)
    return hf, convert.canonical_names(weight_files.read_safetensors_dir(path), hf["model_type"])


def read_hf_config(path: str) -> dict:
    """The transformers config dict of a directory (or of a GGUF file, whose tensors are read for it)."""
    if path.endswith(".gguf"):
        return weight_files.read_gguf(path)[0]
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no config.json (expected a transformers directory or a .gguf file)")
    with open(config_path) as f:
        try:
            hf = json.load(f)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path}: not valid JSON ({error})") from error
    if hf.get("model_type") not in convert.BASE_PREFIX:
        raise CheckpointError(f"{config_path}: model_type {hf.get('model_type')!r} is not supported "
                              f"(supported: {', '.join(convert.BASE_PREFIX)})")
    return hf


def pretrained_config(name_or_path: str, head: str | None = None, **overrides) -> ModelConfig:
    """The ModelConfig ``from_pretrained`` builds, from the source's config alone (no weights read)."""
    path = resolve_source(name_or_path)
    hf = read_hf_config(path)
    head = head or _head_from_architectures(hf)
    if head is None:
        raise CheckpointError(f"{path}: the checkpoint has no head ({hf.get('architectures')}); pass head=...")
    return convert.model_config_from_hf(hf, head, source=path, **overrides)


def from_pretrained(name_or_path: str, head: str | None = None, seed: int = 0, layout=None, **overrides) -> Model:
    """Load pretrained weights into a new Model; ``model.config`` is its ModelConfig.

    head: 'causal_lm', 'masked_lm', 'classification' or 'scalar'; by default the checkpoint's own.
    A head whose tensors the checkpoint lacks (e.g. an MLM head on a bare BertModel), or that differs
    from the checkpoint's own (a scalar head on a fine-tuned classifier), is freshly initialised from
    ``seed`` and logged. overrides: ModelConfig fields (dtype, num_labels, pooling...).

    layout (a ``sharding.Layout``): the parameters are born on its mesh, each device given only its shards
    of the checkpoint's tensors. A freshly initialised head is initialised as without a layout (the same
    numbers), on the default device, then placed.
    """
    path = resolve_source(name_or_path)
    hf, tensors = read_checkpoint(path)
    own_head = _head_from_architectures(hf)
    head = head or own_head
    if own_head is not None and head != own_head:  # e.g. a scalar reward head on a fine-tuned classifier
        own_cfg = convert.model_config_from_hf(hf, own_head, source=path)
        dropped = {ref.name for ref in convert.param_table(own_cfg).values() if ref.in_head}
        tensors = {name: value for name, value in tensors.items() if name not in dropped}
        log.info("%s: a '%s' head replaces the checkpoint's '%s' head", path, head, own_head)
    if head is None:
        raise CheckpointError(f"{path}: the checkpoint has no head ({hf.get('architectures')}); pass head=...")
    cfg = convert.model_config_from_hf(hf, head, source=path, **overrides)
    new_head = convert.missing_head_tensors(cfg, tensors)
    # Random initialisation only when something must be initialised; otherwise fill an abstract model.
    model = build_model(cfg, seed=seed) if new_head else abstract_model(cfg)
    convert.assign_tensors(model, tensors, source=path, layout=layout)
    if new_head:
        log.info("%s: initialised a new '%s' head (%s)", path, head, ", ".join(new_head))
    return model if layout is None else layout.place(model)


def pad_token_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its EOS (causal LMs often have no pad), else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def load_tokenizer(name_or_path: str):
    """The transformers tokenizer of a directory, a GGUF file or an asset.

    Parsed once per process for each source as its files stand (a run's stages all load the policy's, and
    transformers parses the whole tokenizer.json in Python, more than once, for each load); each call gets a
    deep copy of that, so what a caller changes (``padding_side``, added tokens) stays its own."""
    path = resolve_source(name_or_path)
    return copy.deepcopy(_load_tokenizer(path, files.stamp(path)))


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str, stamp: tuple):
    import transformers

    if path.endswith(".gguf"):
        return gguf_tokenizer.load(path)
    return transformers.AutoTokenizer.from_pretrained(path)


def save_pretrained(model: Model, path: str, tokenizer=None) -> str:
    """Write a transformers directory (config.json, model.safetensors[, tokenizer]) that transformers loads.

    Written to a temporary directory and moved into place, so a failure never leaves half a checkpoint
    (an existing directory at ``path`` is replaced only once the new one is complete).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=parent)
    try:
        save_file(convert.extract_tensors(model), os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        convert.hf_config(model.config).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        old = None
        if os.path.exists(path):  # keep the previous checkpoint until the new one is in place
            old = tempfile.mkdtemp(prefix=".tmp-old-", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return path
