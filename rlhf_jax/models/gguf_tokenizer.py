"""A GGUF file's tokenizer, rebuilt from its own metadata with ``gguf`` and ``tokenizers``.

A GGUF carries no ``tokenizer.json``: llama.cpp stores the vocabulary, merges, token types, special
token ids and chat template as metadata (``tokenizer.ggml.*``, ``tokenizer.chat_template``). For a
byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``: GPT-2, SmolLM, Llama 3, Qwen) this
module builds the same ``tokenizers`` pipeline that transformers' GGUF integration builds, without
going through transformers (whose GGUF reader imports PyTorch):

- model: BPE over the file's tokens (respelled in GPT-2's byte alphabet where a token is not
  already) and its merges, no unknown token, no byte fallback;
- pre-tokenizer: GPT-2's byte-level split, or, for the ``tokenizer.ggml.pre`` types whose merges
  were learned on another split, that split's regex followed by a byte-level mapping;
- decoder: byte-level; tokens of type CONTROL are special tokens, USER_DEFINED ones added tokens.

``save(gguf_path, directory)`` writes ``tokenizer.json`` and ``tokenizer_config.json`` (special
tokens, the chat template), which ``transformers.AutoTokenizer.from_pretrained(directory)`` loads.
"""

from __future__ import annotations

import json
import os
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from transformers.convert_slow_tokenizer import bytes_to_unicode

from rlhf_jax.models.convert import CheckpointError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split its merges were learned on; any other type splits as GPT-2 does.
PRE_TOKENIZER_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
                        "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT,
                        "deepseek-r1-qwen": _QWEN2_SPLIT}
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}


def read_metadata(path: str) -> dict[str, Any]:
    """The ``tokenizer.*`` fields of a GGUF file, with the ``tokenizer.`` prefix dropped."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable GGUF file ({error})") from error
    return {name.removeprefix("tokenizer."): field.contents() for name, field in reader.fields.items()
            if name.startswith("tokenizer.")}


def build(path: str) -> tuple[tokenizers.Tokenizer, dict[str, Any]]:
    """(the ``tokenizers.Tokenizer``, the transformers tokenizer config) that a GGUF file describes."""
    meta = read_metadata(path)
    kind = meta.get("ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    for key in ("ggml.tokens", "ggml.merges"):
        if key not in meta:
            raise CheckpointError(f"{path}: no tokenizer.{key} in the GGUF metadata")
    tokens: list[str] = meta["ggml.tokens"]
    types: list[int] = meta.get("ggml.token_type") or [1] * len(tokens)
    spelling = bytes_to_unicode()  # GPT-2's printable character for each byte
    alphabet = set(spelling.values())
    vocab = {}
    for index, token in enumerate(tokens):
        spelled = token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(spelled, index)
    merges = [tuple(merge.split(" ")) for merge in meta["ggml.merges"]]
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, dropout=None, unk_token=None,
                                                continuing_subword_prefix="", end_of_word_suffix="",
                                                fuse_unk=False, byte_fallback=False))
    split = PRE_TOKENIZER_SPLITS.get(meta.get("ggml.pre"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: adding it would grow the vocabulary.
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                  for t, kind in zip(tokens, types) if kind == CONTROL and set(t) <= alphabet])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False)
                          for t, kind in zip(tokens, types) if kind == USER_DEFINED and t in vocab])
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "add_bos_token": bool(meta.get("ggml.add_bos_token", False)),
                              "add_eos_token": bool(meta.get("ggml.add_eos_token", False))}
    for name, key in _SPECIAL_IDS.items():
        token_id = meta.get(f"ggml.{key}")
        if token_id is not None:
            if not 0 <= token_id < len(tokens):
                raise CheckpointError(f"{path}: tokenizer.ggml.{key} {token_id} is outside the vocabulary "
                                      f"of {len(tokens)} tokens")
            config[name] = tokens[token_id]
    bos = [config["bos_token"]] if config["add_bos_token"] and "bos_token" in config else []
    eos = [config["eos_token"]] if config["add_eos_token"] and "eos_token" in config else []
    specials = [(t, tokenizer.token_to_id(t)) for t in dict.fromkeys(bos + eos)]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=bos + ["$A:0"] + eos, pair=bos + ["$A:0"] + eos + bos + ["$B:1"] + eos, special_tokens=specials)
    if "chat_template" in meta:
        config["chat_template"] = meta["chat_template"]
    return tokenizer, config


def save(gguf_path: str, directory: str) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for the GGUF file's tokenizer into ``directory``."""
    tokenizer, config = build(gguf_path)
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)


def load(gguf_path: str):
    """The GGUF file's tokenizer as a transformers fast tokenizer (no PyTorch involved)."""
    import transformers

    tokenizer, config = build(gguf_path)
    config.pop("tokenizer_class")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, **config)
