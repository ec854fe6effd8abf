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


def test_the_command_line_has_transformers_and_tensorboardx_skip_torch_and_leaves_it_importable(tiny_policy):
    """Where torch is installed (here, the test extra), transformers imports it with the first tokenizer and
    tensorboardX with its writer; the ``rlhf-jax`` program has both decide that torch is absent first, and code
    of the user's can still import it."""
    def torch_after(prime: bool, code: str) -> list[str]:
        script = ("import sys\nfrom rlhf_jax.without_torch import libraries_without_torch\n"
                  + ("libraries_without_torch()\n" if prime else "") + code
                  + "loaded = 'torch' in sys.modules\nimport torch\nprint(loaded, torch.ones(2).sum().item())")
        result = subprocess.run([sys.executable, "-c", script, tiny_policy], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split()

    tokenizer = "from rlhf_jax.models import load_tokenizer\nload_tokenizer(sys.argv[1])\n"
    writer = "from tensorboardX import SummaryWriter\n"  # as rlhf_jax.metrics imports it
    for code in (tokenizer, writer):
        assert torch_after(prime=False, code=code) == ["True", "2.0"]  # what the program avoids
        assert torch_after(prime=True, code=code) == ["False", "2.0"]

    # the program itself primes: `rlhf-jax generate`, as its console script calls it, loads no torch
    program = ("import sys\nfrom rlhf_jax.cli import command_line\nsys.argv[0] = 'rlhf-jax'\n"
               "code = command_line()\nprint('torch loaded:', 'torch' in sys.modules, code)")
    result = subprocess.run([sys.executable, "-c", program, "generate", "--model", tiny_policy, "--prompt", "Hello",
                             "--max-new-tokens", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "torch loaded: False 0"
