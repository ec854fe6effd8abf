"""The rlhf-jax command line on a tiny local checkpoint."""

import subprocess
import sys

import tokenizers
import torch
import transformers


def test_generate_cli_prints_a_continuation(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                     bos_token_id=255, eos_token_id=255)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(tmp_path / "m"))
    vocab = {f"w{i}": i for i in range(256)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(tmp_path / "m"))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "generate", "--model", str(tmp_path / "m"),
                               "--prompt", "w1 w2 w3", "--max-new-tokens", "5", *extra], capture_output=True, text=True)

    sampled = run("--seed", "3", "--top-k", "5")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.strip(), "expected a continuation"
    assert run("--seed", "3", "--top-k", "5").stdout == sampled.stdout  # same seed, same text
    bad = run("--top-p", "0")
    assert bad.returncode == 2 and "top_p" in bad.stderr


def test_assets_list():
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "assets", "list"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("minilm-l6", "smollm2-135m-instruct", "rotten-tomatoes", "vader-lexicon"):
        assert name in result.stdout
