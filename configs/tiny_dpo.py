"""Tiny DPO run for tests: the tiny policy learns from the tiny feedback's pairs directly.
feedback.policy, model.source and rl.policy must be set to a local causal-LM directory (tests make one)."""

from . import tiny_ppo


def get_config():
    config = tiny_ppo.get_config()
    config.model.source = ""
    config.model.tokenizer = None
    config.model.head = "causal_lm"
    config.model.config = {}
    config.data.max_length = 24
    config.train.task = "dpo"
    config.train.learning_rate = 1e-3
    return config
