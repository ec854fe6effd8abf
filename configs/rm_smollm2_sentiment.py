"""Reward model on a causal trunk: SmolLM2-135M + scalar head read at the last real token, trained
pairwise on the same simulated preferences as configs/rm_minilm_sentiment.py.

    rlhf-jax run --config configs/rm_smollm2_sentiment.py --workdir runs/rm_smollm2
"""

from . import rm_minilm_sentiment


def get_config():
    config = rm_minilm_sentiment.get_config()
    config.model.source = "smollm2-135m-instruct"
    config.model.config = {"pooling": "last"}
    config.data.max_length = 40
    config.train.batch_size = 8
    config.train.eval_batch_size = 32
    config.train.learning_rate = 1e-5
    config.train.steps = 600
    return config
