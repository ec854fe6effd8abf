"""Losses against plain float64 loops written out here; BERT masking proportions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses


def log_softmax64(row):
    row = np.asarray(row, np.float64)
    top = max(row)
    return [x - top - math.log(sum(math.exp(y - top) for y in row)) for x in row]


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_causal_lm_loss_matches_a_float64_loop(rng):
    b, t, v = 3, 6, 11
    logits = rng.normal(size=(b, t, v)).astype(np.float32)
    ids = rng.integers(0, v, size=(b, t))
    mask = (rng.random((b, t)) > 0.3).astype(np.int32)
    total, count, correct = 0.0, 0, 0
    for i in range(b):
        for j in range(t - 1):
            if mask[i, j + 1]:
                total -= log_softmax64(logits[i, j])[ids[i, j + 1]]
                count += 1
                correct += int(np.argmax(logits[i, j]) == ids[i, j + 1])
    loss, metrics = losses.causal_lm_loss(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask))
    assert abs(float(loss) - total / count) < 1e-5
    assert float(metrics["count"]) == count and float(metrics["correct_sum"]) == correct


def test_masked_lm_loss_counts_only_selected_positions(rng):
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(2, 5))
    selected = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], np.float32)
    expected = -np.mean([log_softmax64(logits[i, j])[labels[i, j]] for i, j in zip(*np.nonzero(selected))])
    loss, _ = losses.masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(selected))
    assert abs(float(loss) - expected) < 1e-5


def test_classification_loss_and_confusion_match_a_loop(rng):
    logits = rng.normal(size=(9, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=9)
    weights = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], np.float32)  # two padding rows
    nll = [-log_softmax64(logits[i])[labels[i]] for i in range(7)]
    confusion = np.zeros((3, 3))
    for i in range(7):
        confusion[labels[i], np.argmax(logits[i])] += 1
    loss, metrics = losses.classification_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    assert abs(float(loss) - np.mean(nll)) < 1e-5
    np.testing.assert_array_equal(np.asarray(metrics["confusion"]), confusion)


def test_gradient_of_classification_loss_is_softmax_minus_onehot(rng):
    logits = rng.normal(size=(4, 3))
    labels = np.array([0, 2, 1, 1])
    grad = jax.grad(lambda z: losses.classification_loss(z, jnp.asarray(labels))[0])(jnp.asarray(logits, jnp.float32))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = (probs - np.eye(3)[labels]) / 4
    assert np.abs(np.asarray(grad) - expected).max() < 1e-6


def test_precision_recall_f1_from_counts():
    # true x predicted, binary: tp=30, fn=10, fp=5, tn=55
    sums = {"loss_sum": 10.0, "correct_sum": 85.0, "count": 100.0, "confusion": np.array([[55, 5], [10, 30]])}
    out = losses.summarize(sums)
    assert out["accuracy"] == 0.85
    assert abs(out["precision"] - 30 / 35) < 1e-12 and abs(out["recall"] - 30 / 40) < 1e-12
    p, r = 30 / 35, 30 / 40
    assert abs(out["f1"] - 2 * p * r / (p + r)) < 1e-12
    assert "perplexity" not in out
    assert abs(losses.summarize({"loss_sum": 6.0, "correct_sum": 1.0, "count": 3.0})["perplexity"] - math.exp(2)) < 1e-9


def test_bert_masking_proportions():
    n = 200_000
    ids = jnp.full((1, n), 7, jnp.int32)
    maskable = jnp.ones((1, n), jnp.int32).at[0, :1000].set(0)
    inputs, labels, selected = losses.mask_tokens(jax.random.PRNGKey(0), ids, maskable, mask_token_id=3,
                                                  vocab_size=1000, probability=0.15)
    inputs, selected = np.asarray(inputs)[0], np.asarray(selected)[0].astype(bool)
    assert not selected[:1000].any()  # special / padding tokens are never selected
    share = selected.mean() / (1 - 1000 / n)
    assert abs(share - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    k = selected.sum()
    as_mask = (inputs[selected] == 3).mean()
    unchanged = (inputs[selected] == 7).mean()  # kept (10%) plus random draws that hit 7 (10% / 1000)
    assert abs(as_mask - 0.8) < 4 * math.sqrt(0.8 * 0.2 / k)
    assert abs(unchanged - (0.1 + 0.1 / 1000)) < 4 * math.sqrt(0.1 * 0.9 / k)
    assert (inputs[~selected] == 7).all()
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(ids))


def test_pairwise_loss_matches_a_float64_loop(rng):
    chosen, rejected, margin = rng.normal(size=7), rng.normal(size=7), rng.random(7)
    expected = np.mean([math.log1p(math.exp(-(c - r - m))) for c, r, m in zip(chosen, rejected, margin)])
    loss, metrics = losses.pairwise_loss(jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32),
                                         jnp.asarray(margin, jnp.float32))
    assert abs(float(loss) - expected) < 1e-6
    assert float(metrics["correct_sum"]) == float(np.sum(chosen > rejected))


def test_best_of_n_matches_a_float64_loop_and_equals_pairwise_for_two(rng):
    rewards, chosen = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
    expected = np.mean([-log_softmax64(rewards[i])[chosen[i]] for i in range(6)])
    loss, _ = losses.best_of_n_loss(jnp.asarray(rewards, jnp.float32), jnp.asarray(chosen))
    assert abs(float(loss) - expected) < 1e-6
    pair = rng.normal(size=(5, 2)).astype(np.float32)
    as_best_of_2, _ = losses.best_of_n_loss(jnp.asarray(pair), jnp.zeros(5, jnp.int32))
    as_pairwise, _ = losses.pairwise_loss(jnp.asarray(pair[:, 0]), jnp.asarray(pair[:, 1]))
    assert abs(float(as_best_of_2) - float(as_pairwise)) < 1e-6


def test_regression_loss_matches_a_float64_loop(rng):
    predictions, targets = rng.normal(size=9), rng.normal(size=9) * 3
    loss, _ = losses.regression_loss(jnp.asarray(predictions, jnp.float32), jnp.asarray(targets, jnp.float32))
    assert abs(float(loss) - np.mean((predictions - targets) ** 2)) < 1e-5


def test_centered_regression_loss_matches_a_float64_loop_and_ignores_offsets(rng):
    predictions, targets = rng.normal(size=9), rng.normal(size=9) * 3 + 4
    weights = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], np.float64)  # two padding rows
    kept = [i for i in range(9) if weights[i]]
    mean_p = sum(predictions[i] for i in kept) / len(kept)
    mean_t = sum(targets[i] for i in kept) / len(kept)
    expected = sum(((predictions[i] - mean_p) - (targets[i] - mean_t)) ** 2 for i in kept) / len(kept)

    def centered(p, t):
        return losses.regression_loss(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32),
                                      jnp.asarray(weights, jnp.float32), centered=True)[0]

    assert abs(float(centered(predictions, targets)) - expected) < 1e-5
    assert abs(float(centered(predictions + 2.5, targets - 1.0)) - expected) < 1e-5
    uncentered = losses.regression_loss(jnp.asarray(predictions, jnp.float32), jnp.asarray(targets, jnp.float32),
                                        jnp.asarray(weights, jnp.float32))[0]
    assert float(uncentered) > expected + 1.0  # the offset of about 4 is what centring removes


def test_reward_loss_gradients_match_finite_differences(rng):
    chosen, rejected = rng.normal(size=4), rng.normal(size=4)

    def f64(c, r):
        return np.mean([math.log1p(math.exp(-(a - b))) for a, b in zip(c, r)])

    grad_c, grad_r = jax.grad(lambda c, r: losses.pairwise_loss(c, r)[0], argnums=(0, 1))(
        jnp.asarray(chosen, jnp.float32), jnp.asarray(rejected, jnp.float32))
    eps = 1e-6
    for i in range(4):
        bump = np.eye(4)[i] * eps
        numeric = (f64(chosen + bump, rejected) - f64(chosen - bump, rejected)) / (2 * eps)
        assert abs(float(grad_c[i]) - numeric) < 1e-5
        assert abs(float(grad_r[i]) + numeric) < 1e-5  # d/dr = -d/dc
    rewards = rng.normal(size=(3, 3))
    grad = jax.grad(lambda z: losses.best_of_n_loss(z, jnp.asarray([0, 2, 1]))[0])(jnp.asarray(rewards, jnp.float32))
    probs = np.exp(rewards) / np.exp(rewards).sum(-1, keepdims=True)
    assert np.abs(np.asarray(grad) - (probs - np.eye(3)[[0, 2, 1]]) / 3).max() < 1e-6


def preference_loop(pc, pr, rc, rr, beta, kind, eps):
    total = 0.0
    for a, b, c, d in zip(pc, pr, rc, rr):
        h = (a - c) - (b - d)
        if kind == "dpo":
            total += -(1 - eps) * math.log(1 / (1 + math.exp(-beta * h))) - eps * math.log(1 / (1 + math.exp(beta * h)))
        else:
            total += (h - 1 / (2 * beta)) ** 2
    return total / len(pc)


@pytest.mark.parametrize("kind,eps", [("dpo", 0.0), ("dpo", 0.2), ("ipo", 0.0)])
def test_preference_losses_and_gradients_match_a_float64_loop(rng, kind, eps):
    pc, pr, rc, rr = (rng.normal(scale=3.0, size=6) - 20 for _ in range(4))
    beta = 0.1

    def loss(pc_, pr_):
        return losses.preference_loss(pc_, pr_, jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32), beta, kind,
                                      eps)[0]

    value = float(loss(jnp.asarray(pc, jnp.float32), jnp.asarray(pr, jnp.float32)))
    assert value == pytest.approx(preference_loop(pc, pr, rc, rr, beta, kind, eps), rel=1e-5)
    grad_c, grad_r = jax.grad(loss, argnums=(0, 1))(jnp.asarray(pc, jnp.float32), jnp.asarray(pr, jnp.float32))
    step = 1e-5
    for i in range(6):
        for grad, moved in ((grad_c, 0), (grad_r, 1)):
            up, down = [pc.copy(), pr.copy()], [pc.copy(), pr.copy()]
            up[moved][i] += step
            down[moved][i] -= step
            numeric = (
                preference_loop(*up, rc, rr, beta, kind, eps) - preference_loop(*down, rc, rr, beta, kind, eps)
            ) / (2 * step)
            assert float(grad[i]) == pytest.approx(numeric, abs=1e-5), (moved, i)


def test_dpo_at_equal_log_ratios_is_log_2_and_pushes_chosen_up_rejected_down():
    same = jnp.asarray([-12.0, -30.0], jnp.float32)
    for beta in (0.01, 0.1, 1.0):
        for eps in (0.0, 0.3):
            value, metrics = losses.preference_loss(same, same + 2.0, same, same + 2.0, beta, "dpo", eps)
            assert float(value) == pytest.approx(math.log(2), rel=1e-6)
    grad_c, grad_r = jax.grad(lambda c, r: losses.preference_loss(c, r, same, same, 0.1)[0], argnums=(0, 1))(same, same)
    assert (np.asarray(grad_c) < 0).all() and (np.asarray(grad_r) > 0).all()  # descent raises chosen, lowers rejected
    # Conservative DPO with eps = 1/2: the labels carry no information, and the loss pulls h back to 0
    # from either side. IPO is at its optimum at h = 1 / (2 beta).
    for shift, sign in ((3.0, 1.0), (-3.0, -1.0)):
        grad_half = jax.grad(lambda c: losses.preference_loss(c, same, same, same, 0.1, "dpo", 0.5)[0])(same + shift)
        assert (sign * np.asarray(grad_half) > 0).all()
    assert float(losses.preference_loss(same + 5.0, same, same, same, 0.1, "ipo")[0]) == pytest.approx(0.0, abs=1e-6)


def test_sequence_logprob_matches_a_loop(rng):
    logits = rng.normal(size=(2, 5, 7))
    ids = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    expected = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):
            if mask[b, t]:
                row = logits[b, t - 1]
                total += row[ids[b, t]] - math.log(sum(math.exp(v) for v in row))
        expected.append(total)
    got = losses.sequence_logprob(jnp.asarray(logits, jnp.float32), jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


def test_sequence_logprob_equals_reading_a_log_softmax_to_the_bit(rng):
    """Read from the logits, log p is jax.nn.log_softmax's own arithmetic: the same value and gradient, bit for
    bit, as the [B, T, V] log-softmax it no longer writes."""
    logits = jnp.asarray(5 * rng.normal(size=(3, 9, 515)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 515, size=(3, 9)))
    mask = jnp.asarray(rng.integers(0, 2, size=(3, 9)))
    weights = jnp.asarray(rng.normal(size=3), jnp.float32)

    def read_from_log_softmax(logits_BxTxV):
        logp_BxTxV = jax.nn.log_softmax(logits_BxTxV[:, :-1], axis=-1)
        token_logp_BxT = jnp.take_along_axis(logp_BxTxV, ids[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(token_logp_BxT * mask[:, 1:], axis=1)

    def value_and_grad(fn):  # the [B] log-probs, and the gradient of a weighted sum of them
        return jax.jit(lambda z: (fn(z), jax.grad(lambda z: jnp.sum(fn(z) * weights))(z)))(logits)

    ours = value_and_grad(lambda z: losses.sequence_logprob(z, ids, mask))
    for got, expected in zip(ours, value_and_grad(read_from_log_softmax), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
