"""Test set-up: 8 simulated CPU devices (before jax is imported), shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def smollm2_dir():
    from rlhf_jax import assets

    return str(assets.asset_path("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def minilm_dir():
    from rlhf_jax import assets

    return str(assets.asset_path("minilm-l6"))


@pytest.fixture(scope="session")
def review_sentences():
    """Real Rotten Tomatoes snippets of different lengths (so a batch needs padding)."""
    import bz2
    import csv

    from rlhf_jax import assets

    with bz2.open(assets.asset_path("rotten-tomatoes"), "rt", encoding="utf-8") as f:
        rows = [row["text"].strip() for row in csv.DictReader(f) if row["category"] in ("fresh", "rotten")]
    return [rows[0], rows[1][:60], rows[2], rows[3][:25]]


def write_tiny_policy(path: str, smollm2_dir: str) -> str:
    """A tiny random Llama (torch's initialisation, seed 0) with SmolLM2's tokenizer, as a Hugging Face directory."""
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=48, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, smollm2_dir):
    """The tiny policy; RLHF_JAX_TINY_POLICY names one written beforehand (a venv without torch uses it)."""
    prepared = os.environ.get("RLHF_JAX_TINY_POLICY")
    if prepared:
        return prepared
    return write_tiny_policy(str(tmp_path_factory.mktemp("policy")), smollm2_dir)
