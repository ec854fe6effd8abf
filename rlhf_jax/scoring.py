"""Score many texts with a sequence-level model (reward model, classifier) in fixed-shape batches.

A text is either one string or a (prompt, response) pair. Pairs are encoded as the tokenizer's text
pair: for BERT, ``[CLS] prompt [SEP] response [SEP]`` with token types 0 / 1, so the model can tell
what was asked from what was answered; for byte-level BPE tokenizers, the two concatenated.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx


def encode(tokenizer, texts: Sequence[str], max_length: int, responses: Sequence[str] | None = None
           ) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids (int32, [N, max_length]) of texts, or of (text, response) pairs."""
    enc = tokenizer(list(texts), list(responses) if responses is not None else None, max_length=max_length,
                    truncation=True, padding="max_length", return_token_type_ids=True, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32),
            "token_type_ids": enc["token_type_ids"].astype(np.int32)}


@functools.partial(jax.jit, static_argnames=("graphdef", "positive_class"))
def _score_batch(graphdef, params, input_ids_BxT, attention_mask_BxT, token_type_ids_BxT, positive_class):
    out = nnx.merge(graphdef, params)(input_ids_BxT, attention_mask_BxT, token_type_ids_BxT=token_type_ids_BxT)
    return out if positive_class is None else jax.nn.softmax(out, axis=-1)[:, positive_class]


def score_texts(graphdef, params, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64,
                positive_class: int | None = None, responses: Sequence[str] | None = None) -> np.ndarray:
    """The model's output per text (or per (text, response) pair): a scalar head's score, or
    P(positive_class) of a classifier.

    The last batch is padded by repeating an item, so every call runs one compiled shape (compiled
    once per model structure, batch size and length)."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        pairs = None if responses is None else list(responses[start:start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)
        if pairs is not None:
            pairs += [pairs[-1]] * (batch_size - n)
        enc = encode(tokenizer, chunk, max_length, pairs)
        scores = _score_batch(graphdef, params, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                              positive_class)
        out.append(np.asarray(scores)[:n])
    return np.concatenate(out)


@dataclasses.dataclass
class RewardModel:
    """A trained reward model with its own tokenizer as a scorer like the gold ones:
    score(prompts, responses) = gain * r(prompt, response) + bias (normalised on the reference policy)."""

    graphdef: object
    params: object
    tokenizer: object
    max_length: int
    gain: float = 1.0
    bias: float = 0.0
    batch_size: int = 64

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        raw = score_texts(self.graphdef, self.params, self.tokenizer, list(prompts), self.max_length,
                          self.batch_size, responses=list(responses))
        return (self.gain * raw.astype(np.float64) + self.bias).astype(np.float32)


ENSEMBLE_COMBINES = ("mean", "pessimistic", "min")


def combine_scores(scores_KxB: np.ndarray, how: str, lam: float = 1.0) -> np.ndarray:
    """One reward per response from K members' (each normalised) scores r_k (Coste et al. 2023):

        mean         (1/K) sum_k r_k
        pessimistic  mean - lam std_k(r_k)        (std over the members, ddof 0)
        min          min_k r_k                    (worst case)
    """
    scores_KxB = np.asarray(scores_KxB, np.float64)
    if how == "mean":
        return scores_KxB.mean(axis=0)
    if how == "pessimistic":
        return scores_KxB.mean(axis=0) - lam * scores_KxB.std(axis=0)
    if how == "min":
        return scores_KxB.min(axis=0)
    raise ValueError(f"unknown ensemble combination {how!r} {ENSEMBLE_COMBINES}")


@dataclasses.dataclass
class EnsembleReward:
    """K reward models as one scorer: each member's normalised score, combined by ``combine_scores``."""

    members: list[RewardModel]
    combine: str = "mean"
    lam: float = 1.0

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        scores_KxB = np.stack([member.score(prompts, responses) for member in self.members])
        return combine_scores(scores_KxB, self.combine, self.lam).astype(np.float32)
