"""Reward model: MiniLM-L6 (mean-pooled) + scalar head, trained by Bradley-Terry on every pair of 8
SmolLM2-135M continuations of each Rotten Tomatoes prompt, labelled by a simulated human over VADER.

    rlhf-jax run --config configs/rm_minilm_sentiment.py --workdir runs/rm_minilm
"""

from . import base


def get_config():
    config = base.get_config()
    config.model.source = "minilm-l6"
    config.model.head = "scalar"
    config.model.config = {"pooling": "mean"}  # all-MiniLM's own sentence embedding (its CLS was never trained)
    config.data.dataset = "preferences"
    config.data.source = ""  # set by the run: WORKDIR/feedback/preferences.jsonl
    config.data.max_length = 48
    # All 28 pairs of each prompt's 8 continuations in one batch element, each response scored once
    # (InstructGPT's batching): 8 prompts = 64 sequences = up to 224 labelled pairs per step.
    config.train.task = "reward_grouped"  # or reward_pairwise / reward_best_of_n (one pair per row)
    config.train.steps = 1000  # 2 epochs of ~4,000 training prompts
    config.train.batch_size = 8  # prompts (groups)
    config.train.eval_batch_size = 16
    config.train.learning_rate = 3e-5
    config.train.warmup_steps = 50
    config.train.checkpoint_every = 250
    config.train.eval_every = 250
    # 8 continuations per prompt, all 28 pairs labelled: 140k pairs for the sampling cost of 40k responses.
    # Simulated human over VADER: T = 0.28 makes ~15-20% of labels disagree with the gold order on these samples.
    config.feedback = {"temperature": 0.28, "prompts": 5000, "samples_per_prompt": 8, "batch_size": 64}
    return config
