"""Tiny random BERT classifier on a slice of Rotten Tomatoes: for tests (seconds on a CPU)."""

from . import base


def get_config():
    config = base.get_config()
    config.model.tokenizer = "minilm-l6"
    config.model.head = "classification"
    config.model.config = {"family": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                           "intermediate_size": 64, "max_position_embeddings": 64, "num_labels": 2}
    config.data.max_length = 32
    config.data.max_train_examples = 256
    config.data.max_eval_examples = 64
    config.train.task = "classification"
    config.train.steps = 8
    config.train.batch_size = 8
    config.train.eval_batch_size = 16
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 2
    config.train.log_every = 2
    config.train.checkpoint_every = 4
    return config
