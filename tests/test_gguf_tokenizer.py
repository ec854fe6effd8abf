"""The SmolLM2 tokenizer rebuilt from the GGUF metadata (no torch) against transformers' GGUF tokenizer."""

import bz2
import csv
import os

import pytest
import transformers

from rlhf_jax import assets
from rlhf_jax.models import CheckpointError, gguf_tokenizer, load_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What did you think of the film?"}],
    [{"role": "system", "content": "You review movies."}, {"role": "user", "content": "Rate 'Heat' (1995), 1-10."},
     {"role": "assistant", "content": "9/10: De Niro & Pacino, 170 minutes.\n\nWorth it."}],
    [{"role": "user", "content": "  spaces, tabs\tand <|im_end|> inside  "}, {"role": "assistant", "content": "ok"}],
]


@pytest.fixture(scope="module")
def tokenizers(smollm2_dir, smollm2_gguf):
    reference = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                           gguf_file=os.path.basename(smollm2_gguf))  # imports torch
    return reference, load_tokenizer(smollm2_dir), gguf_tokenizer.read_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def rotten_tomatoes_rows():
    with bz2.open(assets.asset_path("rotten-tomatoes"), "rt", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def test_ids_equal_transformers_on_every_rotten_tomatoes_row(tokenizers, rotten_tomatoes_rows):
    reference, ours, _ = tokenizers
    assert len(rotten_tomatoes_rows) == 13905
    expected = reference(rotten_tomatoes_rows)["input_ids"]
    got = ours(rotten_tomatoes_rows)["input_ids"]
    differing = [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]
    assert not differing, f"{len(differing)} rows differ, first {rotten_tomatoes_rows[differing[0]]!r}"


def test_chat_template_renders_and_tokenizes_as_transformers(tokenizers):
    reference, ours, meta = tokenizers
    for conversation in CONVERSATIONS:
        for prompt in (True, False):
            # transformers' GGUF tokenizer leaves the file's template unset: hand it the template explicitly
            expected = reference.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt,
                                                     chat_template=meta["chat_template"])
            text = ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=prompt)
            assert text == expected
            assert ours(text)["input_ids"] == reference(expected)["input_ids"]
            assert text.startswith("<|im_start|>")


def test_special_tokens_are_the_files(tokenizers):
    _, ours, meta = tokenizers
    assert ours.bos_token_id == meta["ggml.bos_token_id"] == 1
    assert ours.eos_token_id == meta["ggml.eos_token_id"] == 2
    assert ours.pad_token_id == meta["ggml.padding_token_id"] == 2
    assert ours.unk_token_id == meta["ggml.unknown_token_id"] == 0
    assert len(ours) == len(meta["ggml.tokens"]) == 49152
    assert ours("<|im_start|>user")["input_ids"][0] == 1  # a control token stays whole


def test_decode_of_encode_round_trips(tokenizers, rotten_tomatoes_rows):
    _, ours, _ = tokenizers
    texts = rotten_tomatoes_rows[:3000] + ["naïve café — 東京 😀", "  leading and trailing  ", "tabs\tand\nnewlines"]
    for text in texts:
        assert ours.decode(ours(text)["input_ids"]) == text


def test_the_gguf_path_and_the_converted_directory_agree(smollm2_dir, smollm2_gguf, rotten_tomatoes_rows):
    from_file = load_tokenizer(smollm2_gguf)
    from_directory = load_tokenizer(smollm2_dir)
    rows = rotten_tomatoes_rows[:500]
    assert from_file(rows)["input_ids"] == from_directory(rows)["input_ids"]
    assert from_file.chat_template == from_directory.chat_template


def _write_gguf(path, tokenizer_model):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_an_unsupported_tokenizer_model_is_named(tmp_path):
    _write_gguf(tmp_path / "sp.gguf", "llama")
    with pytest.raises(CheckpointError, match="tokenizer.ggml.model 'llama' is not supported"):
        gguf_tokenizer.build(str(tmp_path / "sp.gguf"))


def test_a_small_byte_level_file_builds(tmp_path):
    _write_gguf(tmp_path / "bpe.gguf", "gpt2")
    tokenizer, config = gguf_tokenizer.build(str(tmp_path / "bpe.gguf"))
    assert tokenizer.encode("ab").ids == [2] and tokenizer.encode("ba").ids == [1, 0]
    assert config["add_bos_token"] is False and "bos_token" not in config


def test_not_a_gguf_file_is_named(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not gguf")
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        gguf_tokenizer.build(str(tmp_path / "x.gguf"))
