"""Score many texts with a sequence-level model (reward model, classifier) in fixed-shape batches."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "positive_class"))
def _score_batch(graphdef, params, input_ids_BxT, attention_mask_BxT, positive_class):
    out = nnx.merge(graphdef, params)(input_ids_BxT, attention_mask_BxT)
    return out if positive_class is None else jax.nn.softmax(out, axis=-1)[:, positive_class]


def score_texts(graphdef, params, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
                positive_class: int | None = None) -> np.ndarray:
    """The model's output per text: a scalar head's score, or P(positive_class) of a classifier.

    The last batch is padded by repeating a text, so every call runs one compiled shape (compiled
    once per model structure, batch size and length)."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)
        enc = tokenizer(chunk, max_length=max_length, truncation=True, padding="max_length", return_tensors="np")
        scores = _score_batch(graphdef, params, enc["input_ids"], enc["attention_mask"], positive_class)
        out.append(np.asarray(scores)[:n])
    return np.concatenate(out)
