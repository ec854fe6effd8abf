"""The main job (configs/sentiment_quick.py) with LoRA: PPO trains rank-16 adapters on every projection
of SmolLM2-135M-Instruct (and the value head), the frozen base with the adapters off is the reference.
The same preferences, reward model and evaluation; Adam's state and the checkpoints hold the adapters only.

    rlhf-jax run --config configs/sentiment_lora.py          (workdir: runs/sentiment_lora)

rl.lora.quantize='nf4' holds the frozen base in 4 bits (QLoRA). Against full fine-tuning: docs/lora.md.
"""

from . import sentiment_quick

ADAPTERS = {"rank": 16, "alpha": 32.0}


def get_config():
    config = sentiment_quick.get_config()
    config.rl.update({"lora": dict(ADAPTERS), "learning_rate": 5e-4})
    return config
