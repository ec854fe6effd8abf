"""Tiny reward-model run for tests: a tiny random BERT scalar head, few prompts, few steps.
feedback.policy must be set to a local causal-LM directory (tests make a tiny random one)."""

from . import rm_minilm_sentiment


def get_config():
    config = rm_minilm_sentiment.get_config()
    config.model.source = None
    config.model.tokenizer = "minilm-l6"
    config.model.config = {"family": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                           "intermediate_size": 64, "max_position_embeddings": 64}
    config.data.max_length = 32
    config.train.steps = 4
    config.train.batch_size = 8
    config.train.eval_batch_size = 16
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 1
    config.train.log_every = 2
    config.train.eval_every = 0
    config.train.checkpoint_every = 4
    config.train.task = "reward_pairwise"
    config.feedback.prompts = 80
    config.feedback.samples_per_prompt = 4
    config.feedback.response_tokens = 8
    config.feedback.batch_size = 32
    return config
