"""The whole RLHF pipeline in about two minutes on 2 CPU cores, on what a base install has.

Fetches every offline asset (into ``$RLHF_JAX_CACHE``), writes a tiny random Llama with SmolLM2's
tokenizer using rlhf_jax alone, then runs ``rlhf-jax run --config configs/tiny_ppo.py`` on it:
feedback -> reward model -> PPO -> evaluation -> report. ``--no-torch`` makes ``import torch`` fail
in this process first, so a stage that needs PyTorch (which only the ``test`` extra installs) stops
the run. CI runs it in a venv made with ``pip install -e .`` alone.

    python experiments/tiny_pipeline.py --workdir runs/tiny_pipeline [--no-torch] [--config.rl.iterations=2 ...]
"""

import sys

if "--no-torch" in sys.argv:
    # scipy's array-API check reads sys.modules["torch"] when scipy.stats loads and fails on the None that
    # blocks it (scipy 1.17), so scipy loads first; it needs no torch (a venv without torch runs it so).
    import scipy.stats  # noqa: F401

    sys.modules["torch"] = None  # any `import torch` now raises ImportError

import argparse
import json
import os
import time

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny_ppo.py")
TINY_LLAMA = {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 48}


def write_tiny_policy(path: str) -> str:
    """A tiny random Llama causal LM with SmolLM2's tokenizer, as a transformers directory."""
    from rlhf_jax.config.model import ModelConfig
    from rlhf_jax.models import build_model, load_tokenizer, save_pretrained

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    cfg = ModelConfig(**TINY_LLAMA, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return save_pretrained(build_model(cfg, seed=0), path, tokenizer=tokenizer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/tiny_pipeline")
    parser.add_argument("--no-torch", action="store_true", help="block `import torch` in this process")
    args, overrides = parser.parse_known_args()
    from rlhf_jax import assets, cli

    start = time.time()
    for name in assets.ASSETS:
        assets.fetch(name)
    policy = write_tiny_policy(os.path.join(args.workdir, "tiny_policy"))
    code = cli.main(["run", "--config", CONFIG, "--workdir", args.workdir, f"--config.rl.policy={policy}",
                     f"--config.feedback.policy={policy}", *overrides])
    if code:
        return code
    with open(os.path.join(args.workdir, "rl", "evaluation.json")) as f:
        metrics = json.load(f)["metrics"]
    print(json.dumps({"workdir": args.workdir, "seconds": round(time.time() - start, 1),
                      "torch_blocked": args.no_torch,
                      "gold_win_rate": metrics["gold_win_rate"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
