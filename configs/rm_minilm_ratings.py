"""Reward model by regression on ratings: the 2,500 prompts x 8 SmolLM2-135M continuations as the
README's 2,500 x 8 pairwise run, but the simulated human rates each response 1-7 (VADER + noise,
binned) instead of comparing pairs; MiniLM (mean-pooled) fits the ratings by MSE. Evaluated, like the
pairwise model, on the labelled pairs of the held-out prompts.

    rlhf-jax run --config configs/rm_minilm_ratings.py --workdir runs/rm_ratings
"""

from . import rm_minilm_sentiment


def get_config():
    config = rm_minilm_sentiment.get_config()
    config.feedback.kind = "ratings"
    config.feedback.prompts = 2500  # as the 2,500 x 8 pairwise run of the README (0.843)
    config.train.update({"steps": 750, "checkpoint_every": 150, "eval_every": 150})
    config.data.dataset = "ratings"
    config.train.task = "reward_regression"
    config.train.batch_size = 64  # responses: the same 64 sequences per step as 8 groups of 8
    config.train.eval_batch_size = 128
    return config
