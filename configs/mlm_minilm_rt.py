"""MiniLM-L6 + a new MLM head (BERT transform + decoder tied to the embedding) on Rotten Tomatoes text."""

from . import base


def get_config():
    config = base.get_config()
    config.model.source = "minilm-l6"
    config.model.head = "masked_lm"
    config.data.max_length = 64
    config.data.max_eval_examples = 512
    config.train.task = "masked_lm"
    config.train.steps = 300
    config.train.batch_size = 32
    config.train.learning_rate = 2e-4
    config.train.warmup_steps = 30
    config.train.checkpoint_every = 300
    return config
