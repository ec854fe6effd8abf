"""Tokenisation of text examples to fixed-length arrays (one function per task kind; ``rlhf_jax.tasks``
says which task uses which), and deterministic batching whose position is one integer.

Every array has a leading example axis N and, for tokens, a length L = max_length (fixed shapes:
one compilation). ``Batches(num_examples, batch_size, seed)(i)`` are the rows of the i-th training
batch: epoch ``i // batches_per_epoch`` is a permutation drawn from (seed, epoch), so the batch stream
is a pure function of the index, and a checkpoint only needs the index to resume exactly. A ``Split``
tokenises the rows it is asked for, so each process of a multi-process run tokenises only its own
block of every batch (``rlhf_jax.feeding``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from rlhf_jax.data.records import DataError
from rlhf_jax.models.pretrained import pad_token_id


def _texts(examples: list[dict], field: str) -> list[str]:
    if not examples:
        raise DataError("no examples to tokenize")
    for index, example in enumerate(examples):
        if not isinstance(example.get(field), str) or not example[field]:
            raise DataError(f"example {index}: field '{field}' is missing or empty")
    return [example[field] for example in examples]


def _encode(tokenizer, texts: list[str], max_length: int):
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                    return_special_tokens_mask=True, return_token_type_ids=True, return_tensors="np")
    arrays = {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32),
              "token_type_ids": enc["token_type_ids"].astype(np.int32)}
    return arrays, enc


def tokenize_classification(examples: list[dict], tokenizer, max_length: int, data) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids, labels, weights."""
    arrays, _ = _encode(tokenizer, _texts(examples, data.text_field), max_length)
    arrays["labels"] = np.asarray([example[data.label_field] for example in examples], np.int32)
    arrays["weights"] = np.ones(len(examples), np.float32)
    return arrays


def tokenize_masked_lm(examples: list[dict], tokenizer, max_length: int, data) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, token_type_ids, maskable (real, non-special tokens)."""
    arrays, enc = _encode(tokenizer, _texts(examples, data.text_field), max_length)
    arrays["maskable"] = (enc["attention_mask"] * (1 - enc["special_tokens_mask"])).astype(np.int32)
    return arrays


def tokenize_causal_lm(examples: list[dict], tokenizer, max_length: int, data) -> dict[str, np.ndarray]:
    """input_ids, attention_mask, loss_mask (1 on the text tokens, and on the EOS closing them, appended
    unless the text holds it already, as a response rendered by a chat template does; 0 on the prompt when
    ``data.prompt_field`` is given, and on padding)."""
    texts = _texts(examples, data.text_field)
    prompts = [example[data.prompt_field] for example in examples] if data.prompt_field else None
    return _tokenize_causal(tokenizer, texts, max_length, prompts)


def _tokenize_causal(tokenizer, texts, max_length, prompts, max_response: int | None = None):
    """prompt + text (+ EOS) per row, right-padded to ``max_length``: input_ids, attention_mask and a
    loss_mask on the text's tokens ([N, max_length] int32). With ``max_response`` R, the text is cut to R
    tokens (EOS included) and ``response_positions`` ([N, R] int32) lists where its scored tokens sit
    (those at positions >= 1, which a logit predicts), then 0s."""
    eos = tokenizer.eos_token_id
    pad = pad_token_id(tokenizer)
    n = len(texts)
    ids = np.full((n, max_length), pad, np.int32)
    mask = np.zeros((n, max_length), np.int32)
    loss_mask = np.zeros((n, max_length), np.int32)
    text_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else [[] for _ in texts]
    for row, (prompt, text) in enumerate(zip(prompt_ids, text_ids)):
        closed = eos is None or eos in text  # a chat template's response closes its own turn
        target = (text + ([] if closed else [eos]))[:max_response]
        sequence = (prompt + target)[:max_length]
        ids[row, :len(sequence)] = sequence
        mask[row, :len(sequence)] = 1
        loss_mask[row, len(prompt):len(sequence)] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}
    if max_response is not None:
        positions = np.zeros((n, max_response), np.int32)
        for row in range(n):
            scored = np.flatnonzero(loss_mask[row, 1:]) + 1
            positions[row, :len(scored)] = scored
        arrays["response_positions"] = positions
    return arrays


class Batches:
    """Row indices of shuffled fixed-size training batches, a pure function of the batch index."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        if num_examples < batch_size:
            raise DataError(f"{num_examples} training examples are fewer than one batch of {batch_size}")
        self.batches_per_epoch = num_examples // batch_size

    def __call__(self, index: int) -> np.ndarray:
        epoch, within = divmod(index, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return order[within * self.batch_size:(within + 1) * self.batch_size]


def eval_rows(num_examples: int, batch_size: int) -> Iterator[np.ndarray]:
    """Every row once, in order, in batches of ``batch_size``; the last batch is filled with -1 (padding)."""
    for start in range(0, num_examples, batch_size):
        rows = np.arange(start, start + batch_size)
        yield np.where(rows < num_examples, rows, -1)


class Split:
    """One split's examples and the task's tokenisation: the arrays of any rows, tokenised when asked for,
    so a process tokenises only the rows it feeds. Row -1 is a padding row of zeros, which carries zero
    weight (weights / loss_mask / maskable are 0) and so counts in no loss or metric."""

    def __init__(self, examples: list[dict], tokenize, tokenizer, max_length: int, data):
        self.examples, self._tokenize = examples, tokenize
        self._args = (tokenizer, max_length, data)
        self._all = None
        self.columns: dict[str, np.ndarray] = {}  # per-row arrays computed, not tokenised (DPO's reference)

    def add_columns(self, columns: dict[str, np.ndarray]) -> None:
        """Per-row arrays ([N, ...]) that ``arrays`` returns beside the tokenised ones."""
        for name, column in columns.items():
            if len(column) != len(self):
                raise ValueError(f"column {name!r} has {len(column)} rows, the split {len(self)}")
        self.columns.update(columns)
        self._all = None

    def __len__(self) -> int:
        return len(self.examples)

    def arrays(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(rows)
        real = rows >= 0
        tokenized = self._tokenize([self.examples[i] for i in rows[real]] or self.examples[:1], *self._args)
        tokenized.update(
            {name: column[rows[real]] if real.any() else column[:1] for name, column in self.columns.items()}
        )
        if real.all():
            return tokenized
        out = {name: np.zeros((len(rows),) + a.shape[1:], a.dtype) for name, a in tokenized.items()}
        for name, array in out.items():
            array[real] = tokenized[name][:real.sum()]
        return out

    def all_arrays(self) -> dict[str, np.ndarray]:
        """Every row's arrays (tokenised once, then kept)."""
        if self._all is None:
            self._all = self.arrays(np.arange(len(self)))
        return self._all
