"""BERT: real MiniLM weights against transformers' BertModel; MLM and classification heads round-trip."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.models import from_pretrained, load_tokenizer, save_pretrained


def test_minilm_hidden_states_match_transformers(minilm_dir, review_sentences):
    tokenizer = load_tokenizer(minilm_dir)
    enc = tokenizer(review_sentences, padding=True, return_tensors="np")
    assert (enc["attention_mask"] == 0).any(), "the batch should need padding"
    model = from_pretrained(minilm_dir, head="masked_lm")
    ours = np.asarray(model.hidden_states(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                                          token_type_ids_BxT=jnp.asarray(enc["token_type_ids"])))
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = reference(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)
    assert np.abs(ours - expected)[real].max() <= 1e-4



def test_mean_pooled_scalar_head_reads_the_sentence_embedding(minilm_dir, review_sentences):
    """'mean' pooling is all-MiniLM's sentence embedding (masked mean of BertModel's last hidden state)."""
    tokenizer = load_tokenizer(minilm_dir)
    enc = tokenizer(review_sentences, padding=True, return_tensors="np")
    model = from_pretrained(minilm_dir, head="scalar", pooling="mean")
    scores_B = np.asarray(model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                                token_type_ids_BxT=jnp.asarray(enc["token_type_ids"])))
    reference = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        hidden_BxTxD = reference(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    mask_BxTx1 = enc["attention_mask"][..., None]
    embedding_BxD = (hidden_BxTxD * mask_BxTx1).sum(1) / mask_BxTx1.sum(1)
    kernel, bias = np.asarray(model.head.score.kernel[...]), np.asarray(model.head.score.bias[...])
    np.testing.assert_allclose(scores_B, embedding_BxD @ kernel[:, 0] + bias[0], atol=1e-4)

@pytest.mark.parametrize("head,cls", [("masked_lm", transformers.BertForMaskedLM),
                                      ("classification", transformers.BertForSequenceClassification)])
def test_bert_heads_match_and_round_trip(head, cls, tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    reference = cls(config).eval()
    reference.save_pretrained(str(tmp_path / "ref"))
    model = from_pretrained(str(tmp_path / "ref"), head=head)
    ids = np.random.default_rng(0).integers(1, 80, size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    ours = np.asarray(model(ids, mask))
    if head == "masked_lm":
        assert np.abs(ours - expected)[mask.astype(bool)].max() <= 1e-4
    else:
        assert ours.shape == (2, 3) and np.abs(ours - expected).max() <= 1e-4
    save_pretrained(model, str(tmp_path / "saved"))
    reloaded = cls.from_pretrained(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(again, expected)


def test_new_mlm_head_on_bare_encoder_is_initialised(minilm_dir):
    model = from_pretrained(minilm_dir, head="masked_lm")
    assert model.head.bias[...].shape == (30522,)
    assert float(jnp.abs(model.head.transform.kernel[...]).sum()) > 0


def test_a_scalar_head_replaces_a_saved_classifier_head(minilm_dir, tmp_path):
    """A reward model initialised from a fine-tuned classifier: same encoder, a new (scalar) head."""
    classifier = from_pretrained(minilm_dir, head="classification", num_labels=2)
    save_pretrained(classifier, str(tmp_path / "cls"))
    reward_model = from_pretrained(str(tmp_path / "cls"), head="scalar", pooling="mean")
    assert reward_model.head.score.kernel[...].shape == (384, 1)
    np.testing.assert_array_equal(np.asarray(reward_model.backbone.layers[3].attn.q_proj.kernel[...]),
                                  np.asarray(classifier.backbone.layers[3].attn.q_proj.kernel[...]))
    assert from_pretrained(str(tmp_path / "cls")).config.head == "classification"  # its own head by default
