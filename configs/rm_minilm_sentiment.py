"""Reward model: MiniLM-L6 + scalar head, trained pairwise (Bradley-Terry) on preferences between two
SmolLM2-135M continuations of Rotten Tomatoes prompts, labelled by a simulated human over VADER.

    rlhf-jax run --config configs/rm_minilm_sentiment.py --workdir runs/rm_minilm
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config():
    config = base.get_config()
    config.model.source = "minilm-l6"
    config.model.head = "scalar"
    config.model.config = {"pooling": "mean"}  # all-MiniLM's own sentence embedding (its CLS was never trained)
    config.data.dataset = "preferences"
    config.data.source = ""  # set by the run: WORKDIR/feedback/preferences.jsonl
    config.data.max_length = 48
    config.train.task = "reward_pairwise"  # or reward_best_of_n
    config.train.steps = 900
    config.train.batch_size = 32  # pairs
    config.train.eval_batch_size = 64
    config.train.learning_rate = 3e-5
    config.train.warmup_steps = 60
    config.train.checkpoint_every = 150
    config.train.eval_every = 150
    # 4 continuations per prompt, all 6 pairs labelled: 15k pairs for the sampling cost of 5k.
    # Simulated human over VADER: T = 0.28 makes ~15-20% of labels disagree with the gold order on these samples.
    config.feedback = {"policy": "smollm2-135m-instruct", "labeler": "vader", "temperature": 0.28, "tie_margin": 0.0,
                       "prompts": 2500, "samples_per_prompt": 4, "prompt_tokens": 8, "response_tokens": 24, "sampling_temperature": 1.0,
                       "top_k": 0, "top_p": 1.0, "batch_size": 64, "seed": 0}
    return config
