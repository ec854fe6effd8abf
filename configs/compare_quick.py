"""configs/compare_sentiment.py small: fewer preferences, a shorter reward-model run, 4 iterations of the
online arms (16 Adam steps), 16 steps of the offline ones, 64 held-out openings, best-of-8. Meant for at
most 25 minutes on 2 CPU cores (its measured time: docs/comparison.md). A smoke test of the whole
comparison more than a result: read its differences with their intervals.

    rlhf-jax run --config configs/compare_quick.py          (workdir: runs/compare_quick)
"""

from . import compare_sentiment


def get_config():
    config = compare_sentiment.get_config()
    config.feedback.prompts = 160
    config.train.steps = 80
    config.train.warmup_steps = 8
    config.train.checkpoint_every = 80
    config.rl.update({"iterations": 4, "eval_prompts": 64, "checkpoint_every": 4})
    for name, changes in config.compare.arms:
        if name in ("dpo", "ipo"):
            changes["train"].update({"steps": 16, "warmup_steps": 2, "checkpoint_every": 16})
    config.compare.best_of_n = (1, 2, 4, 8)
    return config
