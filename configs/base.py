"""Defaults shared by every experiment config; each config imports this and overrides."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"source": None, "tokenizer": None, "head": "causal_lm", "config": {},
                                              "seed": 0})
    config.data = ml_collections.ConfigDict({
        "dataset": "rotten_tomatoes", "source": "rotten-tomatoes", "max_length": 64, "text_field": "text",
        "label_field": "label", "prompt_field": None, "labels": None, "max_train_examples": None,
        "max_eval_examples": None, "root": None})
    config.train = ml_collections.ConfigDict({
        "task": "classification", "steps": 100, "batch_size": 32, "eval_batch_size": 64, "learning_rate": 5e-5,
        "warmup_steps": 10, "weight_decay": 0.01, "grad_clip": 1.0, "mlm_probability": 0.15, "seed": 0,
        "log_every": 10, "eval_every": 0, "checkpoint_every": 100, "keep_checkpoints": 2})
    # Mesh axes sizes (-1: all remaining devices) and logical axis -> mesh axis rules.
    config.mesh = ml_collections.ConfigDict({
        "shape": {"data": -1, "fsdp": 1, "tensor": 1},
        "rules": {"batch": ("data", "fsdp"), "vocab": "tensor", "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
                  "kv_heads": "tensor", "labels": None, "positions": None, "norm": None}})
    return config
