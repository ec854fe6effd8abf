"""GPT-2: a tiny random transformers GPT2LMHeadModel loads here with the same logits, and back."""

import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import from_pretrained, save_pretrained


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = str(tmp_path_factory.mktemp("gpt2"))
    model.save_pretrained(path)
    return path, model


def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 96, size=(3, 10))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padded
    mask[2, 7:] = 0  # right padded
    return ids, mask


def torch_logits(model, ids, mask):
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.numpy()


def test_load_matches_transformers(tiny_gpt2_dir):
    path, reference = tiny_gpt2_dir
    ids, mask = batch()
    model = from_pretrained(path)
    assert model.config.family == "gpt2" and model.config.head == "causal_lm"
    ours = np.asarray(model(ids, mask))
    expected = torch_logits(reference, ids, mask)
    real = mask.astype(bool)
    assert np.abs(ours - expected)[real].max() <= 1e-4


def test_round_trip_loads_in_transformers(tiny_gpt2_dir, tmp_path):
    path, reference = tiny_gpt2_dir
    ids, mask = batch()
    model = from_pretrained(path)
    save_pretrained(model, str(tmp_path / "saved"))
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "saved")).eval()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    real = mask.astype(bool)
    diff = np.abs(torch_logits(reloaded, ids, mask) - np.asarray(model(ids, mask)))[real]
    assert diff.max() <= 1e-4
