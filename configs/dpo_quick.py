"""DPO (Rafailov et al. 2023) on the main job's task: SmolLM2-135M-Instruct learns to continue movie-review
openings more positively from the same simulated human preferences that configs/sentiment_quick.py trains
its reward model on, with no reward model and no sampling during training; evaluated as PPO is (gold win
rate against the reference on 256 held-out openings, gold score, KL per sequence).

    rlhf-jax run --config configs/dpo_quick.py          (workdir: runs/dpo_quick)

train.task='ipo' is IPO; train.label_smoothing > 0 is conservative DPO. Its results against PPO's and
other betas: docs/rlhf.md.
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.model.source = "smollm2-135m-instruct"
    config.model.head = "causal_lm"
    config.model.config = {}
    config.data.max_length = 40  # 8 prompt tokens + 24 response tokens + EOS
    config.train.task = "dpo"
    config.train.beta = 0.05
    config.train.batch_size = 16
    config.train.eval_batch_size = 64
    config.train.steps = 120
    config.train.warmup_steps = 12
    config.train.learning_rate = 5e-5
    config.train.log_every = 10
    config.train.checkpoint_every = 120
    return config
