"""rlhf_jax: fine-tuning language models from human feedback, in JAX and Flax NNX."""

__version__ = "0.1.0"
