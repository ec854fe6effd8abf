"""GRPO (configs/grpo_quick.py) with LoRA adapters on the policy, as configs/sentiment_lora.py does for PPO.

    rlhf-jax run --config configs/grpo_lora.py          (workdir: runs/grpo_lora)
"""

from . import grpo_quick, sentiment_lora


def get_config():
    config = grpo_quick.get_config()
    config.rl.update({"lora": dict(sentiment_lora.ADAPTERS), "learning_rate": 5e-4})
    return config
