"""Tiny end-to-end RLHF run for tests: tiny reward model (tiny_rm.py) and a tiny PPO stage.
feedback.policy and rl.policy must be set to a local causal-LM directory (tests make a tiny random one)."""

from . import tiny_rm


def get_config():
    config = tiny_rm.get_config()
    config.rl = {"policy": "", "iterations": 4, "rollout_prompts": 16, "epochs": 2, "minibatches": 2,
                  "learning_rate": 1e-3, "response_tokens": 6, "kl_horizon": 100.0, "eval_prompts": 24,
                  "eval_batch_size": 16, "checkpoint_every": 2, "log_samples": 2}
    return config
