"""The main job: make SmolLM2-135M-Instruct continue movie-review openings more positively, from
simulated human preferences, on 2 CPU cores in the time docs/performance.md gives.

    rlhf-jax run --config configs/sentiment_quick.py          (workdir: runs/sentiment_quick)

Stages: fetch assets -> sample 4 continuations of 400 Rotten Tomatoes openings and label all their
pairs with a simulated human over VADER -> train a MiniLM reward model (Bradley-Terry) -> PPO on
SmolLM2 against it, KL-penalised to the frozen original -> evaluate on 256 held-out openings with the
gold labeler -> report.md. configs/sentiment_full.py is the same, bigger and longer.
"""

from . import rm_minilm_sentiment


def get_config():
    config = rm_minilm_sentiment.get_config()
    # The reward model the README's numbers were measured with: the BERT [CLS] pooler, 4 continuations
    # per prompt, one pair per training row.
    config.model.source = "minilm-l6"
    config.model.config = {"pooling": "cls"}
    config.feedback.prompts = 400
    config.feedback.samples_per_prompt = 4
    config.train.task = "reward_pairwise"
    config.train.batch_size = 32
    config.train.eval_batch_size = 64
    config.train.steps = 160
    config.train.warmup_steps = 16
    config.train.learning_rate = 5e-5
    config.train.checkpoint_every = 160
    config.train.eval_every = 0
    config.rl = {"epochs": 2, "minibatches": 2, "learning_rate": 5e-5, "kl_coef": 0.03, "checkpoint_every": 4}
    return config
