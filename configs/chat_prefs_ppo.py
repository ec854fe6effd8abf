"""Bring your own preferences (docs/data.md): a small set in trl's conversational format,
docs/examples/movie_chat_preferences.jsonl (no ids, lists of {"role", "content"} messages), trains the main
job's MiniLM reward model; PPO then trains SmolLM2-135M-Instruct against it on the same file's prompts,
rendered by SmolLM2's chat template, and is evaluated on the file's held-out prompts by the gold labeler.

    rlhf-jax run --config configs/chat_prefs_ppo.py          (workdir: runs/chat_prefs_ppo)

Nothing is sampled or labelled before training (feedback.source); the file could as well be Parquet or an
Arrow directory saved by `datasets`.
"""

import os

from . import sentiment_quick

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "movie_chat_preferences.jsonl")


def get_config():
    config = sentiment_quick.get_config()
    config.feedback.source = os.path.normpath(EXAMPLE)
    config.train.batch_size = 16
    config.train.steps = 60  # about 5 passes over the file's 189 training pairs
    config.train.warmup_steps = 6
    config.train.checkpoint_every = 60
    config.rl.update({"prompts": os.path.normpath(EXAMPLE), "prompt_tokens": 48, "response_tokens": 24,
                      "iterations": 12, "eval_prompts": 96})  # the 24 held-out prompts, 4 samples each
    return config
