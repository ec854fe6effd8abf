"""Task losses: ``loss_fn(model, batch, rng) -> (loss, metrics)``, each a model call plus a pure loss.

A registry by name, so a config picks a task and a researcher adds one without touching the trainer.
"""

from __future__ import annotations

from typing import Callable

from rlhf_jax import losses

LossFn = Callable  # (model, batch: dict[str, Array], rng) -> (loss, metrics)


def classification(model, batch, rng):
    logits_BxC = model(batch["input_ids"], batch["attention_mask"], token_type_ids_BxT=batch.get("token_type_ids"))
    return losses.classification_loss(logits_BxC, batch["labels"], batch["weights"])


def causal_lm(model, batch, rng):
    logits_BxTxV = model(batch["input_ids"], batch["attention_mask"])
    return losses.causal_lm_loss(logits_BxTxV, batch["input_ids"], batch["loss_mask"])


def make_masked_lm(mask_token_id: int, vocab_size: int, probability: float) -> LossFn:
    def masked_lm(model, batch, rng):
        inputs_BxT, labels_BxT, label_mask_BxT = losses.mask_tokens(
            rng, batch["input_ids"], batch["maskable"], mask_token_id=mask_token_id, vocab_size=vocab_size,
            probability=probability)
        logits_BxTxV = model(inputs_BxT, batch["attention_mask"], token_type_ids_BxT=batch.get("token_type_ids"))
        return losses.masked_lm_loss(logits_BxTxV, labels_BxT, label_mask_BxT)

    return masked_lm


def make_loss_fn(task: str, *, tokenizer=None, vocab_size: int | None = None, mlm_probability: float = 0.15) -> LossFn:
    if task == "classification":
        return classification
    if task == "causal_lm":
        return causal_lm
    if task == "masked_lm":
        if tokenizer is None or tokenizer.mask_token_id is None:
            raise ValueError("masked_lm needs a tokenizer with a mask token")
        return make_masked_lm(tokenizer.mask_token_id, vocab_size, mlm_probability)
    if task.startswith("reward_"):
        from rlhf_jax.reward import LOSSES

        return LOSSES[task]
    raise ValueError(f"unknown task {task!r}")
