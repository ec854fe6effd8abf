"""Assets are verified before use; bad checkpoints and configs fail with errors that name the problem."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import transformers

from rlhf_jax import assets
from rlhf_jax.config import ConfigError, ModelConfig
from rlhf_jax.models import CheckpointError, from_pretrained

LEXICON = "vaderSentiment/vader_lexicon.txt"


def make_wheel(wheelhouse, lexicon: bytes):
    """A stand-in for the vaderSentiment==3.3.2 wheel, served from a local wheelhouse."""
    os.makedirs(wheelhouse, exist_ok=True)
    info = "vaderSentiment-3.3.2.dist-info/"
    with zipfile.ZipFile(os.path.join(wheelhouse, "vaderSentiment-3.3.2-py2.py3-none-any.whl"), "w") as whl:
        whl.writestr(LEXICON, lexicon)
        whl.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: vaderSentiment\nVersion: 3.3.2\n")
        whl.writestr(
            info + "WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py2-none-any\nTag: py3-none-any\n",
        )
        whl.writestr(info + "RECORD", "")


@pytest.fixture()
def real_lexicon():
    with open(assets.asset_path("vader-lexicon"), "rb") as f:
        return f.read()


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "rlhf_jax.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_fetch_rejects_a_wrong_checksum(tmp_path, real_lexicon):
    make_wheel(tmp_path / "wheels", real_lexicon.replace(b"good", b"baad", 1))
    env = {"RLHF_JAX_CACHE": str(tmp_path / "cache"), "RLHF_JAX_WHEELHOUSE": str(tmp_path / "wheels")}
    result = run_cli("assets", "fetch", "vader-lexicon", env=env)
    assert result.returncode == 2
    assert "sha256" in result.stderr and LEXICON in result.stderr
    assert not (tmp_path / "cache" / "assets" / "vader-lexicon").exists()
    assert not any((tmp_path / "cache" / "assets").iterdir())  # no half-written directory left behind


def test_fetch_verifies_and_refetches_a_corrupted_copy(tmp_path, real_lexicon, monkeypatch):
    make_wheel(tmp_path / "wheels", real_lexicon)
    monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RLHF_JAX_WHEELHOUSE", str(tmp_path / "wheels"))
    path = assets.asset_path("vader-lexicon")
    assert path.read_bytes() == real_lexicon and assets.is_complete("vader-lexicon", verify_hashes=True)
    data = bytearray(real_lexicon)
    data[100] ^= 1  # flip a bit: same size, different content
    path.write_bytes(bytes(data))
    assert assets.is_complete("vader-lexicon") and not assets.is_complete("vader-lexicon", verify_hashes=True)
    assets.fetch("vader-lexicon")
    assert path.read_bytes() == real_lexicon
    path.write_bytes(real_lexicon[:1000])  # truncated: caught even without hashing
    assert not assets.is_complete("vader-lexicon")
    assert assets.asset_path("vader-lexicon").read_bytes() == real_lexicon


def test_unknown_asset_is_a_clear_error():
    with pytest.raises(assets.AssetError, match="unknown asset 'nope'"):
        assets.fetch("nope")


@pytest.fixture()
def tiny_llama_dir(tmp_path):
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=24)
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "llama"))
    return tmp_path / "llama"


def edit_checkpoint(path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_missing_tensor_is_named(tiny_llama_dir):
    edit_checkpoint(tiny_llama_dir, lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers.0.mlp.up_proj.weight'"):
        from_pretrained(str(tiny_llama_dir))


def test_shape_mismatch_is_named(tiny_llama_dir):
    def shrink(tensors):
        tensors["model.norm.weight"] = np.ones(15, np.float32)

    edit_checkpoint(tiny_llama_dir, shrink)
    with pytest.raises(CheckpointError, match=r"'norm.weight' has shape \(15,\) but the config needs \(16,\)"):
        from_pretrained(str(tiny_llama_dir))


def test_unknown_model_type_is_named(tiny_llama_dir):
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["model_type"] = "mamba"
    (tiny_llama_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type 'mamba' is not supported"):
        from_pretrained(str(tiny_llama_dir))


def test_truncated_safetensors_is_named(tiny_llama_dir):
    path = tiny_llama_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        from_pretrained(str(tiny_llama_dir))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither an existing path nor an asset name"):
        from_pretrained(str(tmp_path / "missing"))


@pytest.mark.parametrize("fields,name", [
    (dict(family="t5"), "family"),
    (dict(family="bert", head="causal_lm"), "head"),
    (dict(family="gpt2", head="masked_lm"), "head"),
    (dict(family="llama", hidden_size=30, num_heads=4), "num_heads"),
    (dict(family="llama", num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(family="gpt2", pooling="cls"), "pooling"),
    (dict(family="gpt2", vocab_size=0), "vocab_size"),
])
def test_bad_model_config_names_the_field(fields, name):
    with pytest.raises(ConfigError, match=f"config field '{name}'"):
        ModelConfig(**fields)


@pytest.mark.parametrize("fields,name", [
    (dict(labeler="classifier"), "feedback.classifier_workdir"),
    (dict(comment_scorer="classifier"), "feedback.classifier_workdir"),
    (dict(kind="speech"), "feedback.kind"),
    (dict(labels_from="crowd"), "feedback.labels_from"),
    (dict(labels_from="app", kind="ratings"), "feedback.labels_from"),
])
def test_bad_feedback_config_names_the_field(fields, name):
    from rlhf_jax.config import FeedbackConfig

    with pytest.raises(ConfigError, match=f"config field '{name}'"):
        FeedbackConfig(**fields)
