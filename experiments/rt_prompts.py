"""Benchmark prompts: the first tokens of Rotten Tomatoes snippets, chosen exactly as the peer scripts do."""

import bz2
import csv
import random

from rlhf_jax import assets


def review_rows(seed: int = 0) -> list[tuple[str, str]]:
    """(category, snippet) of the fresh and rotten snippets, stripped, non-empty, shuffled with
    random.Random(seed): the peers' ``common.load_rt``."""
    csv.field_size_limit(10**8)
    with bz2.open(assets.asset_path("rotten-tomatoes"), "rt", encoding="utf-8") as f:
        rows = [(r["category"], r["text"].strip()) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    rows = [(c, t) for c, t in rows if t]
    random.Random(seed).shuffle(rows)
    return rows


def review_texts(seed: int = 0) -> list[str]:
    return [t for _, t in review_rows(seed)]


def fixed_length_prompts(tokenizer, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    """The first ``length`` tokens of the first ``batch`` snippets that have that many (no padding needed)."""
    prompts = []
    for text in review_texts(seed):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == batch:
            return prompts
    raise ValueError(f"only {len(prompts)} snippets have {length} tokens")
