"""Supervised tasks, one record each: the head it trains (``config.TASK_HEADS``), how examples become arrays, its loss
``loss_fn(model, batch, rng) -> (loss, metrics)`` (a model call plus a pure loss from ``losses``), and
how its evaluation is summarised. A config picks a task by name (``train.task``); a researcher adds one
with one entry here, without touching the trainer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from rlhf_jax import losses
from rlhf_jax.config import TASK_HEADS
from rlhf_jax.data import pipeline
from rlhf_jax.rl import preference, reward

LossFn = Callable  # (model, batch: dict[str, Array], rng) -> (loss, metrics)


def classification(model, batch, rng):
    logits_BxC = model(batch["input_ids"], batch["attention_mask"], token_type_ids_BxT=batch.get("token_type_ids"))
    return losses.classification_loss(logits_BxC, batch["labels"], batch["weights"])


def causal_lm(model, batch, rng):
    logits_BxTxV = model(batch["input_ids"], batch["attention_mask"])
    return losses.causal_lm_loss(logits_BxTxV, batch["input_ids"], batch["loss_mask"])


def make_masked_lm(tokenizer, vocab_size: int, train) -> LossFn:
    """BERT's masked-LM loss with masks drawn from the step's key (80/10/10 of ``train.mlm_probability``)."""
    if tokenizer is None or tokenizer.mask_token_id is None:
        raise ValueError("masked_lm needs a tokenizer with a mask token")
    mask_token_id, probability = tokenizer.mask_token_id, train.mlm_probability

    def masked_lm(model, batch, rng):
        inputs_BxT, labels_BxT, label_mask_BxT = losses.mask_tokens(
            rng, batch["input_ids"], batch["maskable"], mask_token_id=mask_token_id, vocab_size=vocab_size,
            probability=probability)
        logits_BxTxV = model(inputs_BxT, batch["attention_mask"], token_type_ids_BxT=batch.get("token_type_ids"))
        return losses.masked_lm_loss(logits_BxTxV, labels_BxT, label_mask_BxT)

    return masked_lm


def eval_key(seed: int):
    """The fixed PRNG key of every evaluation (the same MLM masks each time)."""
    return jax.random.PRNGKey(seed + 1_000_003)


def unigram_baseline(train: dict, held_out: dict, batch_size: int, seed: int, mask_token_id: int, vocab_size: int,
                     probability: float) -> dict:
    """MLM baseline on exactly the evaluation's masked positions: predict every masked token from
    train-set unigram frequencies (add-one smoothed)."""
    counts = (
        np.bincount(train["input_ids"][train["maskable"].astype(bool)], minlength=vocab_size).astype(np.float64) + 1
    )
    log_probs = np.log(counts / counts.sum())
    key = eval_key(seed)
    nll, correct, count = 0.0, 0.0, 0.0
    for index, rows in enumerate(pipeline.eval_rows(len(held_out["input_ids"]), batch_size)):
        real = (rows >= 0)[:, None]  # padding rows: nothing maskable
        ids, maskable = (np.where(real, held_out[name][rows], 0) for name in ("input_ids", "maskable"))
        _, labels, label_mask = losses.mask_tokens(jax.random.fold_in(key, index), ids, maskable,
                                                   mask_token_id=mask_token_id, vocab_size=vocab_size,
                                                   probability=probability)
        labels, label_mask = np.asarray(labels), np.asarray(label_mask).astype(bool)
        nll -= log_probs[labels[label_mask]].sum()
        correct += (labels[label_mask] == np.argmax(counts)).sum()
        count += label_mask.sum()
    return {"unigram_loss": nll / count, "unigram_perplexity": float(np.exp(nll / count)),
            "unigram_accuracy": correct / count}


def _masked_lm_baseline(train_arrays, held_out, train, tokenizer, vocab_size) -> dict:
    return unigram_baseline(train_arrays, held_out, train.eval_batch_size, train.seed, tokenizer.mask_token_id,
                            vocab_size, train.mlm_probability)


@dataclasses.dataclass(frozen=True)
class Task:
    """One supervised task.

    name: its key in TASKS and ``config.TASK_HEADS``, which gives the model head it trains.
    tokenize(examples, tokenizer, max_length, data_config) -> arrays, row by row (a row's arrays do not
    depend on the other rows tokenised with it).
    prepare(examples) -> examples: what one row is, when it is not one example (reward_grouped: one
    prompt's pairs), or None.
    reference: each split gets the initial (reference) model's log-probs of its rows (``dpo``).
    make_loss(tokenizer, vocab_size, train_config) -> loss_fn.
    perplexity: its evaluation reports exp(loss).
    baseline(train_arrays, held_out_arrays, train_config, tokenizer, vocab_size) -> extra evaluation
    metrics, or None.
    feedback: the human-feedback rows a task trains on, 'pairs' (preferences), 'scores' (ratings, scored
    comments) or 'unpaired' (KTO's desirable / undesirable examples); None for the other tasks."""

    name: str
    tokenize: Callable
    make_loss: Callable
    perplexity: bool = False
    baseline: Callable | None = None
    feedback: str | None = None
    prepare: Callable | None = None
    reference: bool = False  # the data carry the initial model's log-probs (DPO), computed once before training

    @property
    def head(self) -> str:
        return TASK_HEADS[self.name]


def _fixed(loss_fn: LossFn) -> Callable:
    return lambda tokenizer, vocab_size, train: loss_fn


TASKS: dict[str, Task] = {
    "classification": Task("classification", pipeline.tokenize_classification, _fixed(classification)),
    "causal_lm": Task("causal_lm", pipeline.tokenize_causal_lm, _fixed(causal_lm), perplexity=True),
    "masked_lm": Task(
        "masked_lm", pipeline.tokenize_masked_lm, make_masked_lm, perplexity=True, baseline=_masked_lm_baseline
    ),
    "reward_pairwise": Task("reward_pairwise", reward.tokenize_pairs, _fixed(reward.pairwise), feedback="pairs"),
    "reward_grouped": Task(
        "reward_grouped", reward.tokenize_groups, _fixed(reward.grouped), feedback="pairs", prepare=reward.group_pairs
    ),
    "reward_best_of_n": Task("reward_best_of_n", reward.tokenize_pairs, _fixed(reward.best_of_n), feedback="pairs"),
    "reward_regression": Task(
        "reward_regression", reward.tokenize_ratings, _fixed(reward.regression), feedback="scores"
    ),
    **{kind: Task(kind, preference.tokenize_preference_sequences, preference.make_loss(kind), feedback="pairs",
                  reference=kind not in losses.REFERENCE_FREE_LOSSES) for kind in losses.OFFLINE_LOSSES
       if kind != "kto_unpaired"},
    "kto_unpaired": Task("kto_unpaired", preference.tokenize_unpaired, preference.make_loss("kto_unpaired"),
                         feedback="unpaired", reference=True),
}


def task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (tasks: {sorted(TASKS)})")
    return TASKS[name]
