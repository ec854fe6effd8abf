"""Tiny end-to-end RLHF run for tests: tiny reward model (tiny_rm.py) and a tiny PPO stage.
feedback.policy and ppo.policy must be set to a local causal-LM directory (tests make a tiny random one)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny_rm  # noqa: E402


def get_config():
    config = tiny_rm.get_config()
    config.ppo = {"policy": "", "iterations": 4, "rollout_prompts": 16, "epochs": 2, "minibatches": 2,
                  "learning_rate": 1e-3, "prompt_tokens": 8, "response_tokens": 6, "kl_coef": 0.05, "kl_target": 6.0,
                  "kl_horizon": 100.0, "eval_prompts": 24, "eval_batch_size": 16, "checkpoint_every": 2,
                  "log_samples": 2, "seed": 0}
    return config
