"""SmolLM2-135M-Instruct fine-tuned as a causal LM on fresh Rotten Tomatoes reviews."""

from . import base


def get_config():
    config = base.get_config()
    config.model.source = "smollm2-135m-instruct"
    config.model.head = "causal_lm"
    config.data.labels = (1,)  # fresh reviews only
    config.data.max_length = 64
    config.data.max_eval_examples = 256
    config.train.task = "causal_lm"
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.eval_batch_size = 32
    config.train.learning_rate = 2e-5
    config.train.warmup_steps = 10
    config.train.checkpoint_every = 100
    return config
