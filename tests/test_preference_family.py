"""KTO, SimPO and ORPO (``losses.kto_loss``, ``losses.reference_free_loss``) against plain float64 loops:
values, the metrics the trainer sums, and gradients against central differences of the loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses
from rlhf_jax.config import ConfigError, TrainConfig

B = 5


@pytest.fixture
def pairs():
    rng = np.random.default_rng(3)
    lengths_c, lengths_r = rng.integers(1, 12, B).astype(float), rng.integers(1, 12, B).astype(float)
    return {"pi_c": -rng.uniform(0.2, 3.0, B) * lengths_c, "pi_r": -rng.uniform(0.2, 3.0, B) * lengths_r,
            "ref_c": -rng.uniform(0.2, 3.0, B) * lengths_c, "ref_r": -rng.uniform(0.2, 3.0, B) * lengths_r,
            "len_c": lengths_c, "len_r": lengths_r, "weights": np.array([1.0, 1.0, 0.5, 1.0, 0.0])}


def f32(x):
    return jnp.asarray(x, jnp.float32)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def simpo_loop(p, pi_c, pi_r, beta, gamma):
    total = sum(p["weights"][b] * -log_sigmoid(beta * (pi_c[b] / p["len_c"][b] - pi_r[b] / p["len_r"][b]) - gamma)
                for b in range(B))
    return total / p["weights"].sum()


def orpo_loop(p, pi_c, pi_r, lam):
    total = 0.0
    for b in range(B):
        a_c, a_r = pi_c[b] / p["len_c"][b], pi_r[b] / p["len_r"][b]
        odds_ratio = (a_c - math.log(1 - math.exp(a_c))) - (a_r - math.log(1 - math.exp(a_r)))
        total += p["weights"][b] * (-a_c - lam * log_sigmoid(odds_ratio))
    return total / p["weights"].sum()


def kto_loop(p, pi_c, pi_r, beta, w_d, w_u, z=None):
    """z None: the reference point from the batch; else held fixed (it is cut from the gradient)."""
    w = p["weights"]
    r_c = [pi_c[b] - p["ref_c"][b] for b in range(B)]
    r_r = [pi_r[b] - p["ref_r"][b] for b in range(B)]
    if z is None:
        z = max(0.0, sum(w[b] * (r_c[b] + r_r[b]) for b in range(B)) / (2 * w.sum()))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    total = sum(w[b] * (w_d * (1 - sigmoid(beta * (r_c[b] - z))) + w_u * (1 - sigmoid(beta * (z - r_r[b])))) / 2
                for b in range(B))
    return total / w.sum(), z


def numeric(loop, p, step=1e-6):
    grads = {}
    for side in ("pi_c", "pi_r"):
        grads[side] = np.zeros(B)
        for b in range(B):
            up, down = {**p}, {**p}
            up[side], down[side] = p[side].copy(), p[side].copy()
            up[side][b] += step
            down[side][b] -= step
            grads[side][b] = (loop(up) - loop(down)) / (2 * step)
    return grads


def check_gradient(fn, p, want):
    got = jax.grad(fn, argnums=(0, 1))(f32(p["pi_c"]), f32(p["pi_r"]))
    np.testing.assert_allclose(got[0], want["pi_c"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[1], want["pi_r"], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.4), (0.1, 0.0)])
def test_simpo_matches_a_loop(pairs, beta, gamma):
    p = pairs

    def loss(pi_c, pi_r):
        return losses.reference_free_loss(pi_c, pi_r, f32(p["len_c"]), f32(p["len_r"]), "simpo", beta, gamma,
                                          weights_B=f32(p["weights"]))[0]

    assert float(loss(f32(p["pi_c"]), f32(p["pi_r"]))) == pytest.approx(
        simpo_loop(p, p["pi_c"], p["pi_r"], beta, gamma), rel=1e-5)
    check_gradient(loss, p, numeric(lambda q: simpo_loop(q, q["pi_c"], q["pi_r"], beta, gamma), p))


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_matches_a_loop(pairs, lam):
    p = pairs

    def loss(pi_c, pi_r):
        return losses.reference_free_loss(pi_c, pi_r, f32(p["len_c"]), f32(p["len_r"]), "orpo", 1.0, lam=lam,
                                          weights_B=f32(p["weights"]))[0]

    assert float(loss(f32(p["pi_c"]), f32(p["pi_r"]))) == pytest.approx(orpo_loop(p, p["pi_c"], p["pi_r"], lam),
                                                                        rel=1e-5)
    check_gradient(loss, p, numeric(lambda q: orpo_loop(q, q["pi_c"], q["pi_r"], lam), p))


def test_orpo_log_odds_are_finite_near_certainty():
    """log(1 - exp(a)) at a -> 0 (a response the policy is sure of) and a very negative: finite, accurate."""
    a = f32([-1e-6, -0.5, -50.0])
    np.testing.assert_allclose(losses.log1mexp(a), [math.log(-math.expm1(-1e-6)), math.log(1 - math.exp(-0.5)),
                                                    math.log1p(-math.exp(-50.0))], rtol=1e-4)


@pytest.mark.parametrize("beta,w_d,w_u", [(0.1, 1.0, 1.0), (0.5, 1.0, 1.33)])
def test_kto_matches_a_loop(pairs, beta, w_d, w_u):
    p = pairs

    def loss(pi_c, pi_r):
        return losses.kto_loss(pi_c, pi_r, f32(p["ref_c"]), f32(p["ref_r"]), beta, w_d, w_u, f32(p["weights"]))[0]

    want, z = kto_loop(p, p["pi_c"], p["pi_r"], beta, w_d, w_u)
    assert float(loss(f32(p["pi_c"]), f32(p["pi_r"]))) == pytest.approx(want, rel=1e-5)
    check_gradient(loss, p, numeric(lambda q: kto_loop(q, q["pi_c"], q["pi_r"], beta, w_d, w_u, z=z)[0], p))


def kto_unpaired_loop(pi, ref, desirable, weights, beta, w_d, w_u, z=None):
    """KTO on unpaired examples, a plain float64 loop; z None: from the batch, else held fixed."""
    r = [pi[i] - ref[i] for i in range(len(pi))]
    if z is None:
        z = max(0.0, sum(weights[i] * r[i] for i in range(len(r))) / weights.sum())
    total = 0.0
    for i in range(len(r)):
        if desirable[i]:
            total += weights[i] * w_d * (1 - 1 / (1 + math.exp(-beta * (r[i] - z))))
        else:
            total += weights[i] * w_u * (1 - 1 / (1 + math.exp(-beta * (z - r[i]))))
    return total / weights.sum(), z


@pytest.mark.parametrize("beta,w_d,w_u", [(0.1, 1.0, 1.0), (0.5, 1.33, 1.0)])
def test_kto_on_unpaired_examples_matches_a_loop(beta, w_d, w_u):
    """Imbalanced labels (5 desirable, 2 not), weights with a zero: value and gradient."""
    rng = np.random.default_rng(5)
    pi, ref = -rng.uniform(1, 20, 7), -rng.uniform(1, 20, 7)
    desirable = np.array([1, 1, 0, 1, 1, 0, 1], float)
    weights = np.array([1.0, 0.5, 1.0, 1.0, 0.0, 1.0, 1.0])

    def loss(pi):
        return losses.kto_unpaired_loss(pi, f32(ref), f32(desirable), beta, w_d, w_u, f32(weights))[0]

    want, z = kto_unpaired_loop(pi, ref, desirable, weights, beta, w_d, w_u)
    assert float(loss(f32(pi))) == pytest.approx(want, rel=1e-5)
    numeric_grad = np.zeros(7)
    for i in range(7):
        up, down = pi.copy(), pi.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric_grad[i] = (kto_unpaired_loop(up, ref, desirable, weights, beta, w_d, w_u, z)[0]
                           - kto_unpaired_loop(down, ref, desirable, weights, beta, w_d, w_u, z)[0]) / 2e-6
    np.testing.assert_allclose(jax.grad(loss)(f32(pi)), numeric_grad, rtol=1e-4, atol=1e-6)


def test_kto_on_pairs_is_kto_on_their_responses_unpaired(pairs):
    """Every chosen response desirable, every rejected one not: the unpaired loss of the 2B responses is the
    paired loss, value and gradient."""
    p = pairs
    paired = losses.kto_loss(f32(p["pi_c"]), f32(p["pi_r"]), f32(p["ref_c"]), f32(p["ref_r"]), 0.3, 1.2, 0.8,
                             f32(p["weights"]))[0]

    def unpaired(pi_c, pi_r):
        return losses.kto_unpaired_loss(jnp.concatenate([pi_c, pi_r]), f32(np.concatenate([p["ref_c"], p["ref_r"]])),
                                        f32([1.0] * B + [0.0] * B), 0.3, 1.2, 0.8,
                                        f32(np.concatenate([p["weights"], p["weights"]])))[0]

    assert float(unpaired(f32(p["pi_c"]), f32(p["pi_r"]))) == pytest.approx(float(paired), rel=1e-6)
    check_gradient(unpaired, p, numeric(lambda q: kto_loop(q, q["pi_c"], q["pi_r"], 0.3, 1.2, 0.8,
                                                           z=kto_loop(p, p["pi_c"], p["pi_r"], 0.3, 1.2, 0.8)[1])[0],
                                        p))


def test_kto_reference_point_is_positive_and_moves_the_loss(pairs):
    """With every log-ratio raised by 1 the reference point z rises to meet it (the loss barely moves); at
    ratios below 0 it is clipped to 0."""
    p = pairs
    _, z = kto_loop(p, p["pi_c"], p["pi_r"], 0.1, 1.0, 1.0)
    low = {**p, "pi_c": p["ref_c"] - 1.0, "pi_r": p["ref_r"] - 1.0}
    assert kto_loop(low, low["pi_c"], low["pi_r"], 0.1, 1.0, 1.0)[1] == 0.0 and z >= 0.0


@pytest.mark.parametrize("kind", ["simpo", "orpo", "kto"])
def test_the_metrics_count_the_pairs_ordered_as_labelled(pairs, kind):
    p = pairs
    if kind == "kto":
        _, metrics = losses.kto_loss(f32(p["pi_c"]), f32(p["pi_r"]), f32(p["ref_c"]), f32(p["ref_r"]), 0.1,
                                     weights_B=f32(p["weights"]))
        h = (p["pi_c"] - p["ref_c"]) - (p["pi_r"] - p["ref_r"])
    else:
        _, metrics = losses.reference_free_loss(f32(p["pi_c"]), f32(p["pi_r"]), f32(p["len_c"]), f32(p["len_r"]),
                                                kind, 2.0, weights_B=f32(p["weights"]))
        h = p["pi_c"] / p["len_c"] - p["pi_r"] / p["len_r"]
    assert float(metrics["correct_sum"]) == pytest.approx(float(((h > 0) * p["weights"]).sum()))
    assert float(metrics["count"]) == pytest.approx(p["weights"].sum())


@pytest.mark.parametrize("field", ["orpo_lambda", "kto_desirable_weight", "kto_undesirable_weight"])
def test_a_negative_weight_is_refused(field):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(task="kto", **{field: -1.0})
