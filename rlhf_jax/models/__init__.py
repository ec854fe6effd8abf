"""Models: one NNX transformer (gpt2, llama, bert), four heads, and Hugging Face / GGUF weights."""

from rlhf_jax.models.convert import CheckpointError
from rlhf_jax.models.heads import Model, abstract_model, build_model
from rlhf_jax.models.pretrained import from_pretrained, load_tokenizer, pad_token_id, pretrained_config, save_pretrained
from rlhf_jax.models.transformer import KVCache

__all__ = ["CheckpointError", "KVCache", "Model", "abstract_model", "build_model", "from_pretrained",
           "load_tokenizer", "pad_token_id", "pretrained_config", "save_pretrained"]
