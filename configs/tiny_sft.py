"""Tiny random Llama (SmolLM2's tokenizer) trained as a causal LM on fresh reviews: for tests."""

from . import tiny_cls


def get_config():
    config = tiny_cls.get_config()
    config.model.tokenizer = "smollm2-135m-instruct"
    config.model.head = "causal_lm"
    config.model.config = {"family": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                           "intermediate_size": 64, "max_position_embeddings": 64}
    config.data.labels = (1,)
    config.train.task = "causal_lm"
    return config
