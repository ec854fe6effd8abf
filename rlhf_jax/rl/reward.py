"""Reward models on preference / rating feedback: data, losses (``rlhf_jax.tasks`` names them),
normalisation, evaluation.

A reward model is a ``scalar`` head on a trunk (MiniLM: the pooled [CLS]; a causal trunk: the last
real token). It scores the pair (prompt, response), encoded as the tokenizer's text pair
(``rlhf_jax.scoring.encode``).
"""

from __future__ import annotations

import numpy as np

from rlhf_jax import losses
from rlhf_jax.data.records import DataError
from rlhf_jax.scoring import encode


def tokenize_pairs(examples: list[dict], tokenizer, max_length: int, data=None) -> dict[str, np.ndarray]:
    """Preference pairs -> chosen_* and rejected_* arrays (ids, mask, types), margin, gold scores (NaN when
    absent) and weights."""
    if not examples:
        raise DataError("no feedback examples to tokenize")
    arrays = {"weights": np.ones(len(examples), np.float32)}
    for side in ("chosen", "rejected"):
        enc = encode(tokenizer, [e["prompt"] for e in examples], max_length, [e[side] for e in examples])
        arrays[f"{side}_ids"], arrays[f"{side}_mask"], arrays[f"{side}_types"] = (
            enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
        arrays[f"gold_{side}"] = np.asarray([e.get(f"gold_{side}", np.nan) for e in examples], np.float32)
    arrays["margin"] = np.asarray([e.get("margin", 0.0) for e in examples], np.float32)
    return arrays


def tokenize_ratings(examples: list[dict], tokenizer, max_length: int, data=None) -> dict[str, np.ndarray]:
    """Scored (prompt, response) rows -> input_ids, attention_mask, token_type_ids, score, weights."""
    if not examples:
        raise DataError("no feedback examples to tokenize")
    arrays = {"weights": np.ones(len(examples), np.float32)}
    arrays.update(encode(tokenizer, [e["prompt"] for e in examples], max_length, [e["response"] for e in examples]))
    arrays["score"] = np.asarray([e["score"] for e in examples], np.float32)
    return arrays


def group_pairs(examples: list[dict]) -> list[dict]:
    """Pairs -> one row per prompt: its distinct responses and its labelled pairs as (winner, loser)
    indices into them; ``slots`` and ``pair_slots`` are the most responses and pairs any prompt has,
    the fixed K and P that every row is padded to."""
    groups: dict[str, dict] = {}
    for e in examples:
        group = groups.setdefault(e["prompt"], {"prompt": e["prompt"], "responses": {}, "pairs": []})
        index = [group["responses"].setdefault(text, len(group["responses"])) for text in (e["chosen"], e["rejected"])]
        group["pairs"].append(index)
    k = max((len(g["responses"]) for g in groups.values()), default=0)
    p = max((len(g["pairs"]) for g in groups.values()), default=0)
    return [{**g, "responses": list(g["responses"]), "slots": k, "pair_slots": p} for g in groups.values()]


def tokenize_groups(groups: list[dict], tokenizer, max_length: int, data=None) -> dict[str, np.ndarray]:
    """Rows of ``group_pairs`` -> each prompt's K responses (missing ones all padding) and its P labelled
    pairs as (winner, loser) indices with a weight (0 for padding).

    ids_GxKxL, mask_GxKxL, types_GxKxL, winner_GxP, loser_GxP, pair_weights_GxP, weights_G.
    """
    if not groups:
        raise DataError("no feedback examples to tokenize")
    k, p = groups[0]["slots"], groups[0]["pair_slots"]
    prompts, responses = [], []
    winner, loser, pair_weights = (np.zeros((len(groups), p), dt) for dt in (np.int32, np.int32, np.float32))
    for row, group in enumerate(groups):
        texts = group["responses"]
        prompts += [group["prompt"]] * k
        responses += texts + [texts[0]] * (k - len(texts))  # padding rows: never in a pair
        for column, (w, l) in enumerate(group["pairs"]):
            winner[row, column], loser[row, column], pair_weights[row, column] = w, l, 1.0
    enc = encode(tokenizer, prompts, max_length, responses)
    shaped = {name: enc[key].reshape(len(groups), k, max_length)
              for name, key in (("ids", "input_ids"), ("mask", "attention_mask"), ("types", "token_type_ids"))}
    return {**shaped, "winner": winner, "loser": loser, "pair_weights": pair_weights,
            "weights": np.ones(len(groups), np.float32)}


def grouped(model, batch, rng):
    """Bradley-Terry over every labelled pair of each prompt, its K responses scored once (InstructGPT,
    Ouyang et al. 2022: all comparisons of a prompt in one batch element; cheaper, and each response
    is one example per epoch instead of K - 1, which overfits less)."""
    import jax.numpy as jnp

    g, k, length = batch["ids"].shape
    rewards_GxK = model(batch["ids"].reshape(g * k, length), batch["mask"].reshape(g * k, length),
                        token_type_ids_BxT=batch["types"].reshape(g * k, length)).reshape(g, k)
    chosen_GxP = jnp.take_along_axis(rewards_GxK, batch["winner"], axis=1)
    rejected_GxP = jnp.take_along_axis(rewards_GxK, batch["loser"], axis=1)
    weights_GxP = batch["pair_weights"] * batch["weights"][:, None]
    return losses.pairwise_loss(chosen_GxP.reshape(-1), rejected_GxP.reshape(-1), None, weights_GxP.reshape(-1))


def _pair_rewards(model, batch):
    """Score chosen and rejected in one call of batch 2B (one compiled program)."""
    import jax.numpy as jnp

    ids, mask, types = (jnp.concatenate([batch[f"chosen_{part}"], batch[f"rejected_{part}"]])
                        for part in ("ids", "mask", "types"))
    rewards_2B = model(ids, mask, token_type_ids_BxT=types)
    half = batch["chosen_ids"].shape[0]
    return rewards_2B[:half], rewards_2B[half:]


def pairwise(model, batch, rng):
    chosen, rejected = _pair_rewards(model, batch)
    return losses.pairwise_loss(chosen, rejected, batch["margin"], batch["weights"])


def best_of_n(model, batch, rng):
    """Best-of-n on pairs (n = 2): the chosen response is candidate 0."""
    import jax.numpy as jnp

    chosen, rejected = _pair_rewards(model, batch)
    return losses.best_of_n_loss(jnp.stack([chosen, rejected], axis=-1),
                                 jnp.zeros(chosen.shape, jnp.int32), batch["weights"])


def regression(model, batch, rng):
    scores_B = model(batch["input_ids"], batch["attention_mask"], token_type_ids_BxT=batch["token_type_ids"])
    return losses.regression_loss(scores_B, batch["score"], batch["weights"], centered=True)


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the (average) ranks."""
    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def pair_metrics(reward_chosen: np.ndarray, reward_rejected: np.ndarray, gold_chosen: np.ndarray,
                 gold_rejected: np.ndarray) -> dict:
    """Held-out pair metrics.

    label_accuracy: r(chosen) > r(rejected) (agreement with the noisy labels).
    gold_accuracy: the reward model orders the pair as the gold scores do, on pairs whose gold scores differ.
    spearman: between reward and gold score over every scored response.
    precision / recall / F1: the thresholded view, "response A is better than B" as the positive class,
    predicted by r(A) > r(B), against the gold order, over both orientations of each pair.
    """
    reward_chosen, reward_rejected = np.asarray(reward_chosen, np.float64), np.asarray(reward_rejected, np.float64)
    gold_chosen, gold_rejected = np.asarray(gold_chosen, np.float64), np.asarray(gold_rejected, np.float64)
    out = {"label_accuracy": float(np.mean(reward_chosen > reward_rejected)), "count": float(len(reward_chosen))}
    known = np.isfinite(gold_chosen) & np.isfinite(gold_rejected) & (gold_chosen != gold_rejected)
    if known.any():
        rc, rr, gc, gr = reward_chosen[known], reward_rejected[known], gold_chosen[known], gold_rejected[known]
        out["gold_accuracy"] = float(np.mean((rc > rr) == (gc > gr)))
        out["gold_pairs"] = float(known.sum())
        out["label_gold_agreement"] = float(np.mean(gc > gr))  # how often the noisy label matched the gold order
        out["spearman"] = spearman(np.concatenate([rc, rr]), np.concatenate([gc, gr]))
        predicted = np.concatenate([rc > rr, rr > rc])
        actual = np.concatenate([gc > gr, gr > gc])
        tp = float(np.sum(predicted & actual))
        precision = tp / max(float(predicted.sum()), 1.0)
        recall = tp / max(float(actual.sum()), 1.0)
        out.update(precision=precision, recall=recall,
                   f1=2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return out


def normalization(rewards: np.ndarray) -> dict:
    """Gain and bias such that gain * r + bias has mean 0 and std 1 on these (reference-policy) rewards."""
    rewards = np.asarray(rewards, np.float64)
    std = float(rewards.std())
    if std == 0:
        raise ValueError("rewards have zero spread: cannot normalise")
    return {"gain": 1.0 / std, "bias": -float(rewards.mean()) / std}


def calibration(p_chosen: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability table: predicted P(A > B) binned, against how often A really was preferred.

    Both orientations of each pair are used (p and 1 - p with outcomes 1 and 0), so the table is symmetric.
    """
    p = np.concatenate([p_chosen, 1 - np.asarray(p_chosen)])
    outcome = np.concatenate([np.ones(len(p_chosen)), np.zeros(len(p_chosen))])
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    return [{"predicted": float(p[index == b].mean()), "observed": float(outcome[index == b].mean()),
             "count": int((index == b).sum())} for b in range(bins) if (index == b).any()]
