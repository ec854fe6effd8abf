"""DPO (configs/dpo_quick.py) with LoRA adapters on SmolLM2-135M-Instruct: the reference log-probs are the
base's (the adapted model at initialisation is the base exactly), Adam and the checkpoints hold the adapters.

    rlhf-jax run --config configs/dpo_lora.py          (workdir: runs/dpo_lora)
"""

from . import dpo_quick, sentiment_lora


def get_config():
    config = dpo_quick.get_config()
    config.model.lora = dict(sentiment_lora.ADAPTERS)
    config.train.learning_rate = 5e-4
    return config
