"""What a base install (`pip install -e .`, no test extra) runs: nothing on the main path imports torch."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_the_pipeline_runs_end_to_end_with_torch_blocked(tmp_path):
    """Every asset fetched into an empty cache, then `rlhf-jax run` on a tiny config, `import torch` failing."""
    env = dict(os.environ, RLHF_JAX_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "tiny_pipeline.py"), "--no-torch",
                             "--workdir", str(tmp_path / "run"), "--config.rl.iterations=2"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["torch_blocked"] is True and 0 <= summary["gold_win_rate"] <= 1
    assert (tmp_path / "run" / "report.md").is_file()
    tokenizer_config = json.loads((tmp_path / "cache" / "assets" / "smollm2-135m-instruct.transformers" /
                                   "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>" and "chat_template" in tokenizer_config

