"""Losses as pure functions of arrays: ``(arrays...) -> (loss, metrics)``. No model objects inside.

Every metric is returned as a *sum* with its count (``*_sum``, ``count``) next to the mean, so metrics
of many batches (or many devices) aggregate exactly: mean = sum(loss_sum) / sum(count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array):
    """Mean over weighted tokens of -log softmax(logits)[target].

    loss = sum_{b,t} w_bt * (logsumexp(z_bt) - z_bt[y_bt]) / sum_{b,t} w_bt
    Returns (loss, metrics) with loss_sum, correct_sum (argmax == target) and count = sum w.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    weights = weights_BxT.astype(jnp.float32)
    target_logit_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    nll_BxT = jax.nn.logsumexp(logits, axis=-1) - target_logit_BxT
    count = weights.sum()
    loss_sum = (nll_BxT * weights).sum()
    correct_sum = ((jnp.argmax(logits, axis=-1) == targets_BxT) * weights).sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "loss_sum": loss_sum, "correct_sum": correct_sum, "count": count}


def causal_lm_loss(logits_BxTxV: jax.Array, input_ids_BxT: jax.Array, loss_mask_BxT: jax.Array):
    """Next-token prediction: position t predicts token t+1, counted where loss_mask[t+1] is 1.

    loss_mask is 1 on the tokens to be learned (all real tokens, or only the response tokens when
    the data has prompts) and 0 on prompts and padding.
    """
    return token_cross_entropy(logits_BxTxV[:, :-1], input_ids_BxT[:, 1:], loss_mask_BxT[:, 1:])


def masked_lm_loss(logits_BxTxV: jax.Array, labels_BxT: jax.Array, label_mask_BxT: jax.Array):
    """Cross-entropy on the selected (masked) positions only."""
    return token_cross_entropy(logits_BxTxV, labels_BxT, label_mask_BxT)


def classification_loss(logits_BxC: jax.Array, labels_B: jax.Array, weights_B: jax.Array | None = None):
    """Softmax cross-entropy, weighted per example (weight 0: padding rows).

    loss = sum_b w_b (logsumexp(z_b) - z_b[y_b]) / sum_b w_b. Metrics also hold the confusion matrix
    (true x predicted) as weighted counts.
    """
    logits = logits_BxC.astype(jnp.float32)
    weights_B = jnp.ones(labels_B.shape, jnp.float32) if weights_B is None else weights_B.astype(jnp.float32)
    num_classes = logits.shape[-1]
    nll_B = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels_B[:, None], axis=-1)[:, 0]
    predicted_B = jnp.argmax(logits, axis=-1)
    confusion_CxC = jnp.zeros((num_classes, num_classes), jnp.float32).at[labels_B, predicted_B].add(weights_B)
    count = weights_B.sum()
    loss_sum = (nll_B * weights_B).sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "loss_sum": loss_sum, "correct_sum": ((predicted_B == labels_B) * weights_B).sum(),
                  "count": count, "confusion": confusion_CxC}


def mask_tokens(rng: jax.Array, input_ids_BxT: jax.Array, maskable_BxT: jax.Array, *, mask_token_id: int,
                vocab_size: int, probability: float = 0.15):
    """BERT's masking: pick each maskable token with ``probability``; of those, 80% become [MASK],
    10% a random token, 10% stay. Returns (inputs_BxT, labels_BxT, label_mask_BxT)."""
    select_key, choice_key, random_key = jax.random.split(rng, 3)
    selected_BxT = (jax.random.uniform(select_key, input_ids_BxT.shape) < probability) & maskable_BxT.astype(bool)
    choice_BxT = jax.random.uniform(choice_key, input_ids_BxT.shape)
    random_ids_BxT = jax.random.randint(random_key, input_ids_BxT.shape, 0, vocab_size, dtype=input_ids_BxT.dtype)
    inputs_BxT = jnp.where(selected_BxT & (choice_BxT < 0.8), mask_token_id, input_ids_BxT)
    inputs_BxT = jnp.where(selected_BxT & (choice_BxT >= 0.8) & (choice_BxT < 0.9), random_ids_BxT, inputs_BxT)
    return inputs_BxT, input_ids_BxT, selected_BxT.astype(jnp.float32)


def summarize(sums: dict, perplexity: bool = True) -> dict:
    """Means from summed metrics: loss, accuracy, and perplexity (token tasks, if asked) or
    precision/recall/F1 (when a confusion matrix is present).

    For two classes, precision/recall/F1 are those of the positive class (label 1); for more,
    their macro average.
    """
    import numpy as np

    count = max(float(sums["count"]), 1.0)
    out = {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct_sum"]) / count,
           "count": float(sums["count"])}
    if "margin_sum" in sums:  # preference optimisation: the mean implicit-reward margin beta h
        out["margin"] = float(sums["margin_sum"]) / count
    if "confusion" not in sums:
        if perplexity:
            out["perplexity"] = float(np.exp(out["loss"]))
        return out
    confusion = np.asarray(sums["confusion"], np.float64)
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros_like(true_positive), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(true_positive),
                   where=(precision + recall) > 0)
    pick = (lambda v: float(v[1])) if confusion.shape[0] == 2 else (lambda v: float(v.mean()))
    out.update(precision=pick(precision), recall=pick(recall), f1=pick(f1))
    return out


# ----------------------------------------------------------------------------------------------
# Reward-model losses. r: scalar rewards from the reward model.

def pairwise_loss(rewards_chosen_B: jax.Array, rewards_rejected_B: jax.Array, margin_B: jax.Array | None = None,
                  weights_B: jax.Array | None = None):
    """Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r); loss = -log sigmoid(r_c - r_r - m).

    The optional margin m asks for a larger gap where annotators were more certain.
    """
    diff_B = (rewards_chosen_B - rewards_rejected_B).astype(jnp.float32)
    if margin_B is not None:
        diff_B = diff_B - margin_B
    weights_B = jnp.ones_like(diff_B) if weights_B is None else weights_B.astype(jnp.float32)
    nll_B = -jax.nn.log_sigmoid(diff_B)
    count = weights_B.sum()
    loss_sum = (nll_B * weights_B).sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    correct = ((rewards_chosen_B > rewards_rejected_B) * weights_B).sum()
    return loss, {"loss": loss, "loss_sum": loss_sum, "correct_sum": correct, "count": count}


def best_of_n_loss(rewards_BxN: jax.Array, chosen_B: jax.Array, weights_B: jax.Array | None = None):
    """Best-of-n (Ziegler et al. 2019): softmax over the n candidates' rewards, cross-entropy on the
    one the labeler chose: loss = logsumexp_j r_j - r_chosen. With n = 2 this is the pairwise loss."""
    rewards = rewards_BxN.astype(jnp.float32)
    weights_B = jnp.ones(chosen_B.shape, jnp.float32) if weights_B is None else weights_B.astype(jnp.float32)
    nll_B = jax.nn.logsumexp(rewards, axis=-1) - jnp.take_along_axis(rewards, chosen_B[:, None], axis=-1)[:, 0]
    count = weights_B.sum()
    loss_sum = (nll_B * weights_B).sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    correct = ((jnp.argmax(rewards, axis=-1) == chosen_B) * weights_B).sum()
    return loss, {"loss": loss, "loss_sum": loss_sum, "correct_sum": correct, "count": count}


def regression_loss(predictions_B: jax.Array, targets_B: jax.Array, weights_B: jax.Array | None = None,
                    centered: bool = False):
    """Scalar ratings: mean squared error (p - y)^2.

    centered: fit up to a constant, ((p - mean p) - (y - mean y))^2 with batch means over the weighted
    rows. A reward is only defined up to an offset (it is normalised after training), and a 1-7 scale
    would otherwise make the head spend its first steps moving its bias from 0 to about 4.
    """
    predictions_B, targets_B = predictions_B.astype(jnp.float32), targets_B.astype(jnp.float32)
    weights_B = jnp.ones_like(predictions_B) if weights_B is None else weights_B.astype(jnp.float32)
    count = weights_B.sum()
    if centered:
        def mean(x_B):
            return (x_B * weights_B).sum() / jnp.maximum(count, 1.0)

        predictions_B, targets_B = predictions_B - mean(predictions_B), targets_B - mean(targets_B)
    error_B = predictions_B - targets_B
    loss_sum = (error_B ** 2 * weights_B).sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "loss_sum": loss_sum, "correct_sum": jnp.zeros(()), "count": count}


# ----------------------------------------------------------------------------------------------
# Offline preference optimisation of a policy. pi_*: log pi(response | prompt) of the policy (a sum over
# the response's tokens), ref_*: the same under the frozen reference.

PREFERENCE_LOSSES = ("dpo", "ipo")  # on the policy's and the reference's log-probs (preference_loss)
REFERENCE_FREE_LOSSES = ("simpo", "orpo")  # on the policy's alone, length-normalised (reference_free_loss)
# the tasks that learn offline: from pairs, and KTO from unpaired examples (each desirable or not)
OFFLINE_LOSSES = PREFERENCE_LOSSES + ("kto",) + REFERENCE_FREE_LOSSES + ("kto_unpaired",)


def _log_normaliser(logits_BxNxV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(M_BxNx1 = max_v z_v, held constant under differentiation; log sum_v exp(z_v - M)_BxN), so that
    log p(x) = (z_x - M) - log sum_v exp(z_v - M): jax.nn.log_softmax's own operations, to the bit."""
    max_BxNx1 = jax.lax.stop_gradient(jnp.max(logits_BxNxV, axis=-1, keepdims=True))
    return max_BxNx1, jnp.log(jnp.sum(jnp.exp(logits_BxNxV - max_BxNx1), axis=-1))


def sequence_logprob(logits_BxTxV: jax.Array, input_ids_BxT: jax.Array, loss_mask_BxT: jax.Array) -> jax.Array:
    """log pi(response | prompt) = sum_t m_t log p(x_t | x_<t): the logits z at t - 1 predict token t, and
    ``loss_mask`` marks the response's tokens. Returns [B] in float32.

    log p(x) as ``_log_normaliser`` has it, on the one entry read per position rather than on all V. No
    [B, T, V] log-softmax is written, nor a copy of the logits without the last position, and the backward
    adds the one-hot to the softmax where read-after-log_softmax scatters into zeros first.
    """
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    max_BxTx1, log_sum_BxT = _log_normaliser(logits_BxTxV)
    next_logit_BxT = jnp.take_along_axis(logits_BxTxV[:, :-1], input_ids_BxT[:, 1:, None], axis=-1)[..., 0]
    token_logp_BxT = (next_logit_BxT - max_BxTx1[:, :-1, 0]) - log_sum_BxT[:, :-1]
    return jnp.sum(token_logp_BxT * loss_mask_BxT[:, 1:], axis=1)


def scored_logprob(logits_BxRxV: jax.Array, targets_BxR: jax.Array, scored_BxR: jax.Array) -> jax.Array:
    """``sequence_logprob`` on logits already aligned with their targets: sum_r s_r log p(y_r), where the
    logits at r predict y_r (the LM head run at the response's positions alone). Returns [B] in float32."""
    logits_BxRxV = logits_BxRxV.astype(jnp.float32)
    max_BxRx1, log_sum_BxR = _log_normaliser(logits_BxRxV)
    target_logit_BxR = jnp.take_along_axis(logits_BxRxV, targets_BxR[..., None], axis=-1)[..., 0]
    return jnp.sum(((target_logit_BxR - max_BxRx1[..., 0]) - log_sum_BxR) * scored_BxR, axis=1)


def preference_loss(pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B, beta: float, kind: str = "dpo",
                    label_smoothing: float = 0.0, weights_B=None):
    """With the difference of the two log-ratios h = (pi_c - ref_c) - (pi_r - ref_r):

        dpo  (Rafailov et al. 2023)   L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
        ipo  (Azar et al. 2023)       L = (h - 1 / (2 beta))^2

    eps > 0 is conservative DPO (Mitchell 2023): the label is wrong with probability eps. At h = 0 the
    DPO loss is log 2 for every eps and beta. The implicit reward of a response is beta (pi - ref);
    metrics count the pairs it orders as labelled (correct_sum) and the mean margin beta h.
    """
    h_B = ((pi_chosen_B - ref_chosen_B) - (pi_rejected_B - ref_rejected_B)).astype(jnp.float32)
    weights_B = jnp.ones_like(h_B) if weights_B is None else weights_B.astype(jnp.float32)
    if kind == "dpo":
        nll_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h_B) - label_smoothing * jax.nn.log_sigmoid(
            -beta * h_B)
    elif kind == "ipo":
        nll_B = (h_B - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r} {PREFERENCE_LOSSES}")
    metrics = _pair_metrics((nll_B * weights_B).sum(), h_B, beta * h_B, weights_B)
    return metrics["loss"], metrics


def _pair_metrics(loss_sum, h_B, margin_B, weights_B) -> dict:
    """The preference tasks' shared sums: the pairs the implicit reward orders as labelled (h > 0) and the
    implicit-reward margin."""
    count = weights_B.sum()
    loss = loss_sum / jnp.maximum(count, 1.0)
    return {"loss": loss, "loss_sum": loss_sum, "correct_sum": ((h_B > 0) * weights_B).sum(), "count": count,
            "margin_sum": (margin_B * weights_B).sum()}


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return jnp.where(x > -0.6931, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def reference_free_loss(pi_chosen_B, pi_rejected_B, length_chosen_B, length_rejected_B, kind: str, beta: float,
                        gamma: float = 0.0, lam: float = 0.1, weights_B=None):
    """With the mean log-prob per response token a = log pi(y | x) / |y|:

        simpo (Meng et al. 2024)  L = -log sigmoid(beta (a_c - a_r) - gamma)         (gamma: the target margin)
        orpo  (Hong et al. 2024)  L = -a_c - lam log sigmoid(log odds_c - log odds_r),
                                  log odds = a - log(1 - exp(a))                     (SFT on chosen + odds ratio)

    No reference model. Returns (loss, metrics) as ``preference_loss``; the margin is beta (a_c - a_r) for
    SimPO and the log odds ratio for ORPO."""
    weights_B = jnp.ones_like(pi_chosen_B) if weights_B is None else weights_B.astype(jnp.float32)
    a_chosen_B = pi_chosen_B / jnp.maximum(length_chosen_B, 1.0)
    a_rejected_B = pi_rejected_B / jnp.maximum(length_rejected_B, 1.0)
    if kind == "simpo":
        h_B = beta * (a_chosen_B - a_rejected_B)
        nll_B = -jax.nn.log_sigmoid(h_B - gamma)
    elif kind == "orpo":
        h_B = (a_chosen_B - log1mexp(a_chosen_B)) - (a_rejected_B - log1mexp(a_rejected_B))
        nll_B = -a_chosen_B - lam * jax.nn.log_sigmoid(h_B)
    else:
        raise ValueError(f"unknown reference-free loss {kind!r} {REFERENCE_FREE_LOSSES}")
    metrics = _pair_metrics((nll_B * weights_B).sum(), h_B, h_B, weights_B)
    return metrics["loss"], metrics


def kto_loss(pi_chosen_B, pi_rejected_B, ref_chosen_B, ref_rejected_B, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, weights_B=None):
    """KTO (Ethayarajh et al. 2024) with each pair's chosen response as a desirable example and its rejected
    one as an undesirable example, unpaired in the loss: with the log-ratios r = log pi - log pi_ref,

        L = (1 / 2B) sum_b [ w_D (1 - sigmoid(beta (r_c - z))) + w_U (1 - sigmoid(beta (z - r_r))) ],
        z = max(0, sg[mean_b (r_c + r_r) / 2])

    z, the reference point, is the batch's mean log-ratio on its own responses, cut from the gradient: a
    cheaper stand-in for the paper's estimate on mismatched (prompt, response) pairs, which would take a
    second forward of the policy and the reference. Correct: r_c > r_r; margin: beta (r_c - r_r)."""
    weights_B = jnp.ones_like(pi_chosen_B) if weights_B is None else weights_B.astype(jnp.float32)
    r_chosen_B = (pi_chosen_B - ref_chosen_B).astype(jnp.float32)
    r_rejected_B = (pi_rejected_B - ref_rejected_B).astype(jnp.float32)
    mean_ratio = ((r_chosen_B + r_rejected_B) * weights_B).sum() / (2.0 * jnp.maximum(weights_B.sum(), 1.0))
    z = jax.lax.stop_gradient(jnp.maximum(mean_ratio, 0.0))
    losses_B = (desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r_chosen_B - z)))
                + undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z - r_rejected_B)))) / 2.0
    metrics = _pair_metrics((losses_B * weights_B).sum(), r_chosen_B - r_rejected_B,
                            beta * (r_chosen_B - r_rejected_B), weights_B)
    return metrics["loss"], metrics


def kto_unpaired_loss(pi_B, ref_B, desirable_B, beta: float, desirable_weight: float = 1.0,
                      undesirable_weight: float = 1.0, weights_B=None):
    """KTO (Ethayarajh et al. 2024) on unpaired examples, each response desirable (d = 1) or undesirable
    (d = 0), with the log-ratio r = log pi - log pi_ref:

        L = (1 / sum_i w_i) sum_i w_i [ d_i w_D (1 - sigmoid(beta (r_i - z)))
                                        + (1 - d_i) w_U (1 - sigmoid(beta (z - r_i))) ],
        z = max(0, sg[sum_i w_i r_i / sum_i w_i])

    z is ``kto_loss``'s reference point, the batch's own mean log-ratio cut from the gradient; ``kto_loss``
    is this loss on a batch of pairs (every chosen response desirable, every rejected one not). Correct: r on
    the labelled side of z; margin: beta (r - z), signed by the label."""
    weights_B = jnp.ones_like(pi_B) if weights_B is None else weights_B.astype(jnp.float32)
    r_B = (pi_B - ref_B).astype(jnp.float32)
    d_B = desirable_B.astype(jnp.float32)
    z = jax.lax.stop_gradient(jnp.maximum((r_B * weights_B).sum() / jnp.maximum(weights_B.sum(), 1.0), 0.0))
    losses_B = (d_B * desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r_B - z)))
                + (1.0 - d_B) * undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z - r_B))))
    signed_B = (2.0 * d_B - 1.0) * (r_B - z)
    metrics = _pair_metrics((losses_B * weights_B).sum(), signed_B, beta * signed_B, weights_B)
    return metrics["loss"], metrics
