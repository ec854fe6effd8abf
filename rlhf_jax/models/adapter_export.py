"""LoRA adapters in PEFT's format: ``adapter_config.json`` and ``adapter_model.safetensors``, which
``peft.PeftModel.from_pretrained(transformers_model, directory)`` loads onto the base.

PEFT's LoRA on a torch Linear (weight [D_out, D_in]) is y = x W^T + (lora_alpha / r) x A^T B^T with
lora_A.weight [r, D_in] and lora_B.weight [D_out, r]: ours (A [D_in, r], B [r, D_out]) transposed, the same
alpha / r. Tensor names follow the base's own (``rlhf_jax.models.convert.param_table``) under
``base_model.model.``.
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

from rlhf_jax.config.lora import LoraConfig
from rlhf_jax.models import convert, lora
from rlhf_jax.models.heads import Model

TASK_TYPES = {"causal_lm": "CAUSAL_LM"}


def adapter_tensors(model: Model) -> dict[str, np.ndarray]:
    """PEFT's tensors of the model's adapters (names as transformers' own checkpoint of this architecture)."""
    cfg = model.config
    table = convert.param_table(cfg)
    prefix = "base_model.model." + convert.BASE_PREFIX[cfg.family]
    tensors = {}
    for path, projection in lora.adapted_projections(model):
        a, b = np.asarray(projection.kernel_lora_a[...]), np.asarray(projection.kernel_lora_b[...])
        unrolled = convert.layer_paths(cfg, tuple(path) + ("kernel",))
        for i, kernel_path in enumerate(unrolled):  # scanned layers: one adapter pair per layer
            ref = table[kernel_path]
            if not ref.transpose or ref.part is not None:  # GPT-2's Conv1D and fused c_attn
                raise ValueError(f"PEFT export: {'/'.join(map(str, path))} is stored as {ref.name!r}, not as a "
                                 f"torch Linear; export the merged model instead (family {cfg.family!r})")
            name = prefix + ref.name.removesuffix(".weight")
            a_i, b_i = (a, b) if len(unrolled) == 1 and a.ndim == 2 else (a[i], b[i])
            tensors[name + ".lora_A.weight"] = np.ascontiguousarray(a_i.T)
            tensors[name + ".lora_B.weight"] = np.ascontiguousarray(b_i.T)
    return tensors


def save_adapters(model: Model, cfg: LoraConfig, path: str, base: str) -> str:
    """Write ``model``'s adapters to ``path`` in PEFT's format; ``base``: the base model's directory."""
    if model.config.head not in TASK_TYPES:
        raise ValueError(f"PEFT export: a {model.config.head!r} head is not exported as adapters; export the "
                         f"merged model instead")
    tensors = adapter_tensors(model)
    targets = sorted({name.split(".")[-3] for name in tensors})
    os.makedirs(path, exist_ok=True)
    save_file({name: value.astype(np.float32) for name, value in tensors.items()},
              os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": TASK_TYPES[model.config.head], "r": cfg.rank,
              "lora_alpha": cfg.alpha, "target_modules": targets, "lora_dropout": 0.0, "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
              "base_model_name_or_path": os.path.abspath(base) if os.path.isdir(base) else base,
              "modules_to_save": None}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path
