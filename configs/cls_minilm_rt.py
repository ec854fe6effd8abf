"""MiniLM-L6 + a new classification head, fine-tuned on Rotten Tomatoes fresh (1) vs rotten (0)."""

from . import base


def get_config():
    config = base.get_config()
    config.model.source = "minilm-l6"
    config.model.head = "classification"
    config.model.config = {"num_labels": 2, "pooling": "mean"}  # all-MiniLM's sentence embedding
    config.data.max_length = 64
    config.train.task = "classification"
    config.train.steps = 480
    config.train.batch_size = 32
    config.train.learning_rate = 1e-4
    config.train.warmup_steps = 48
    config.train.eval_every = 160
    config.train.checkpoint_every = 160
    return config
