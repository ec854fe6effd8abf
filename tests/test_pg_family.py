"""The 2025 policy-gradient family (DAPO, GSPO and GSPO-token, CISPO, REINFORCE++), dynamic sampling, the
overlong filter and the sampler / trainer mismatch, against plain float64 Python loops: values, and
gradients against central differences of the loop (CISPO's, whose weight is cut from the gradient, against
its analytic gradient). The losses are reached through the registry, as the update calls them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.config import ConfigError, RLConfig
from rlhf_jax.rl import maths
from rlhf_jax.rl.algorithms import ALGORITHMS, Minibatch, PolicyOutputs

K, G, N = 3, 2, 6  # groups of K samples, G groups, N response tokens
B = K * G
LENGTHS = [6, 1, 4, 5, 3, 2]  # a full-length and a one-token response


@pytest.fixture
def rollout():
    rng = np.random.default_rng(7)
    mask = np.array([[1.0 if t < n else 0.0 for t in range(N)] for n in LENGTHS])
    logp = -rng.exponential(size=(B, N))
    return {"mask": mask, "logp": logp, "old_logp": logp + rng.normal(scale=0.3, size=(B, N)),
            "ref_logp": -rng.exponential(size=(B, N)), "advantages": rng.normal(size=B),
            "scores": rng.normal(size=B), "kl": rng.normal(scale=0.1, size=(B, N)),
            "entropy": rng.exponential(size=(B, N))}


def f32(x):
    return jnp.asarray(x, jnp.float32)


def clip(x, low, high):
    return min(max(x, low), high)


def k3(logp, ref_logp):
    r = math.exp(ref_logp - logp)
    return (r - 1) - math.log(r)


def surrogate(advantage, ratio, eps_low, eps_high):
    return max(-advantage * ratio, -advantage * clip(ratio, 1 - eps_low, 1 + eps_high))


def dapo_loop(r, logp, mask, eps_low, eps_high, beta):
    """sum over every real token of the batch of (clipped surrogate + beta k3), over the token count."""
    total, count = 0.0, 0.0
    for b in range(B):
        for t in range(N):
            if mask[b, t]:
                ratio = math.exp(logp[b, t] - r["old_logp"][b, t])
                total += (surrogate(r["advantages"][b], ratio, eps_low, eps_high)
                          + beta * k3(logp[b, t], r["ref_logp"][b, t]))
                count += 1
    return total / count


def gspo_loop(r, logp, mask, eps_low, eps_high, beta):
    """(1 / B') sum_b [clipped surrogate of s_b + beta mean_t k3], s_b the geometric mean of the token ratios."""
    total, rows = 0.0, 0
    for b in range(B):
        tokens = [t for t in range(N) if mask[b, t]]
        if not tokens:
            continue
        s = math.exp(sum(logp[b, t] - r["old_logp"][b, t] for t in tokens) / len(tokens))
        kl = sum(k3(logp[b, t], r["ref_logp"][b, t]) for t in tokens) / len(tokens)
        total += surrogate(r["advantages"][b], s, eps_low, eps_high) + beta * kl
        rows += 1
    return total / rows


def cispo_loop(r, logp, mask, eps_low, eps_high, beta):
    """(loss, d loss / d logp): -sg[clip(rho)] A log pi + beta k3 per token, over the token count."""
    count = mask.sum()
    total, grad = 0.0, np.zeros((B, N))
    for b in range(B):
        for t in range(N):
            if mask[b, t]:
                weight = clip(math.exp(logp[b, t] - r["old_logp"][b, t]), 1 - eps_low, 1 + eps_high)
                total += -weight * r["advantages"][b] * logp[b, t] + beta * k3(logp[b, t], r["ref_logp"][b, t])
                d_k3 = 1 - math.exp(r["ref_logp"][b, t] - logp[b, t])
                grad[b, t] = (-weight * r["advantages"][b] + beta * d_k3) / count
    return total / count, grad


def algorithm_loss(cfg, r, logp, mask, advantages):
    """The registry's loss of ``cfg.algorithm`` on the fixture's rows, as the update calls it."""
    batch = Minibatch(ids_BxT=jnp.zeros((B, N + 2), jnp.int32), mask_BxT=jnp.ones((B, N + 2), jnp.int32),
                      mask_BxN=f32(mask), old_logp_BxN=f32(r["old_logp"]), old_values_BxN=f32(np.zeros((B, N))),
                      advantages=f32(advantages), returns_BxN=f32(np.zeros((B, N))), ref_logp_BxN=f32(r["ref_logp"]))
    out = PolicyOutputs(logp_BxN=logp, entropy_BxN=f32(r["entropy"]), values_BxN=f32(np.zeros((B, N))))
    return ALGORITHMS[cfg.algorithm].loss(cfg, out, batch)[0]


def registry_loss(name, r, logp, mask=None, **fields):
    cfg = RLConfig(algorithm=name, rollout_prompts=G, samples_per_prompt=K, minibatches=1, kl_target=None, **fields)
    return algorithm_loss(cfg, r, logp, r["mask"] if mask is None else mask, r["advantages"])


def numeric_gradient(loop, r, at, mask, step=1e-6, **kw):
    grads = {}
    for b, t in at:
        up, down = r["logp"].copy(), r["logp"].copy()
        up[b, t] += step
        down[b, t] -= step
        grads[b, t] = (loop(r, up, mask, **kw) - loop(r, down, mask, **kw)) / (2 * step)
    return grads


POINTS = [(0, 0), (0, 5), (1, 0), (2, 3), (3, 4), (5, 1), (1, 3)]  # (1, 3) is padding: no gradient


def check_against_loop(name, loop, r, eps_low, eps_high, beta):
    """The registry's loss of ``name`` and its gradient against ``loop`` and its central differences."""
    def loss(logp):
        return registry_loss(name, r, logp, clip_ratio=eps_low, clip_ratio_high=eps_high, kl_coef=beta)

    assert float(loss(f32(r["logp"]))) == pytest.approx(loop(r, r["logp"], r["mask"], eps_low, eps_high, beta),
                                                        rel=1e-5)
    grad = np.asarray(jax.grad(loss)(f32(r["logp"])))
    for (b, t), want in numeric_gradient(loop, r, POINTS, r["mask"], eps_low=eps_low, eps_high=eps_high,
                                         beta=beta).items():
        assert grad[b, t] == pytest.approx(want, abs=1e-5), (name, b, t)


@pytest.mark.parametrize("eps_low,eps_high,beta", [(0.2, 0.28, 0.0), (0.1, 0.3, 0.05), (0.2, 0.2, 0.1)])
def test_dapo_loss_and_gradient_match_a_loop(rollout, eps_low, eps_high, beta):
    check_against_loop("dapo", dapo_loop, rollout, eps_low, eps_high, beta)


def test_the_asymmetric_clip_is_reached_on_both_sides(rollout):
    """The fixture's ratios leave [0.8, 1.28] on both sides, so the test above exercises both bounds."""
    ratio = np.exp(rollout["logp"] - rollout["old_logp"])[rollout["mask"] > 0]
    assert (ratio < 0.8).any() and (ratio > 1.28).any()


def test_dapo_with_a_symmetric_clip_is_grpo_with_the_token_mean(rollout):
    r = rollout
    logp = f32(r["logp"])
    dapo = registry_loss("dapo", r, logp, clip_ratio=0.2, clip_ratio_high=0.2, kl_coef=0.05)
    grpo = registry_loss("grpo", r, logp, clip_ratio=0.2, kl_coef=0.05, loss_aggregation="token_mean")
    assert float(dapo) == float(grpo)
    np.testing.assert_array_equal(jax.grad(lambda lp: registry_loss("dapo", r, lp, kl_coef=0.05))(logp),
                                  jax.grad(lambda lp: registry_loss("grpo", r, lp, kl_coef=0.05,
                                                                    loss_aggregation="token_mean"))(logp))


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
@pytest.mark.parametrize("eps_low,eps_high,beta", [(0.2, 0.2, 0.0), (3e-2, 4e-2, 0.05)])
def test_gspo_loss_and_gradient_match_a_loop(rollout, name, eps_low, eps_high, beta):
    check_against_loop(name, gspo_loop, rollout, eps_low, eps_high, beta)


def test_gspo_on_one_token_responses_is_grpo(rollout):
    """With one token per response the sequence ratio is the token ratio."""
    r = rollout
    one_token = np.zeros((B, N))
    one_token[:, 0] = 1.0
    logp = f32(r["logp"])
    for name in ("gspo", "gspo_token"):
        assert float(registry_loss(name, r, logp, one_token, kl_coef=0.05)) == pytest.approx(
            float(registry_loss("grpo", r, logp, one_token, kl_coef=0.05)), rel=1e-6)
        np.testing.assert_allclose(jax.grad(lambda lp, n=name: registry_loss(n, r, lp, one_token, kl_coef=0.05))(logp),
                                   jax.grad(lambda lp: registry_loss("grpo", r, lp, one_token, kl_coef=0.05))(logp),
                                   rtol=1e-6, atol=1e-8)


def test_gspo_clips_whole_sequences(rollout):
    """A sequence whose geometric-mean ratio is outside the range gets no gradient on any of its tokens."""
    r = rollout
    eps = 0.03
    grad = np.asarray(jax.grad(lambda lp: registry_loss("gspo", r, lp, clip_ratio=eps, kl_coef=0.0))(f32(r["logp"])))
    seen = set()
    for b in range(B):
        tokens = r["mask"][b] > 0
        s = math.exp(np.mean((r["logp"] - r["old_logp"])[b][tokens]))
        clipped = (r["advantages"][b] > 0 and s > 1 + eps) or (r["advantages"][b] < 0 and s < 1 - eps)
        assert (np.abs(grad[b][tokens]) == 0).all() == clipped, b
        seen.add(clipped)
    assert seen == {True, False}  # both kinds of sequence occur


@pytest.mark.parametrize("eps_low,eps_high,beta", [(0.2, 0.28, 0.0), (1.0, 0.28, 0.05)])
def test_cispo_loss_and_gradient_match_a_loop(rollout, eps_low, eps_high, beta):
    """eps_low = 1: no floor on the weight, as MiniMax trains it."""
    r = rollout

    def loss(logp):
        return registry_loss("cispo", r, logp, clip_ratio=eps_low, clip_ratio_high=eps_high, kl_coef=beta)

    want, want_grad = cispo_loop(r, r["logp"], r["mask"], eps_low, eps_high, beta)
    assert float(loss(f32(r["logp"]))) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(jax.grad(loss)(f32(r["logp"])), want_grad, rtol=1e-5, atol=1e-7)


def test_cispo_keeps_the_gradient_of_clipped_tokens(rollout):
    """Where PPO's clip zeroes a token's gradient, CISPO's is -clip(rho) A / tokens, not 0."""
    r = rollout
    logp = f32(r["logp"])
    grpo = np.asarray(jax.grad(lambda lp: registry_loss("dapo", r, lp, clip_ratio_high=0.28, kl_coef=0.0))(logp))
    cispo = np.asarray(jax.grad(lambda lp: registry_loss("cispo", r, lp, clip_ratio_high=0.28, kl_coef=0.0))(logp))
    zeroed = (grpo == 0) & (r["mask"] > 0)
    assert zeroed.any() and (cispo[zeroed] != 0).all()


def reinforce_pp_loop(scores, kl, mask, beta, gamma):
    returns = np.zeros((B, N))
    for b in range(B):
        length = int(mask[b].sum())
        rewards = [-beta * kl[b, t] + (scores[b] if t == length - 1 else 0.0) for t in range(length)]
        for t in range(length):
            returns[b, t] = sum(gamma ** (s - t) * rewards[s] for s in range(t, length))
    entries = [returns[b, t] for b in range(B) for t in range(N) if mask[b, t]]
    mean = sum(entries) / len(entries)
    std = math.sqrt(sum((e - mean) ** 2 for e in entries) / (len(entries) - 1) + 1e-8)
    return np.where(mask > 0, (returns - mean) / std, 0.0)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_advantages_match_a_loop(rollout, gamma):
    r = rollout
    got = maths.reinforce_pp_advantages(f32(r["scores"]), f32(r["kl"] * r["mask"]), f32(r["mask"]), 0.05, gamma)
    np.testing.assert_allclose(got, reinforce_pp_loop(r["scores"], r["kl"], r["mask"], 0.05, gamma), rtol=1e-5,
                               atol=1e-5)
    cfg = RLConfig(algorithm="reinforce_pp", gamma=gamma)
    via_registry, _ = ALGORITHMS["reinforce_pp"].advantages(cfg, f32(r["scores"]), f32(r["kl"] * r["mask"]), None,
                                                            f32(r["mask"]), 0.05)
    np.testing.assert_array_equal(via_registry, got)


def test_reinforce_pp_loss_and_gradient_match_a_loop(rollout):
    """PPO's clipped surrogate on the per-token advantages, over the batch's tokens."""
    r = rollout
    advantages = reinforce_pp_loop(r["scores"], r["kl"], r["mask"], 0.05, 1.0)

    def loop(r, logp, mask, eps_low, eps_high, beta):
        return sum(surrogate(advantages[b, t], math.exp(logp[b, t] - r["old_logp"][b, t]), eps_low, eps_high)
                   for b in range(B) for t in range(N) if mask[b, t]) / mask.sum()

    def loss(logp):
        return algorithm_loss(RLConfig(algorithm="reinforce_pp", clip_ratio_high=0.3), r, logp, r["mask"], advantages)

    assert float(loss(f32(r["logp"]))) == pytest.approx(loop(r, r["logp"], r["mask"], 0.2, 0.3, 0.0), rel=1e-5)
    grad = np.asarray(jax.grad(loss)(f32(r["logp"])))
    for (b, t), want in numeric_gradient(loop, r, POINTS, r["mask"], eps_low=0.2, eps_high=0.3, beta=0.0).items():
        assert grad[b, t] == pytest.approx(want, abs=1e-5), (b, t)


def test_dynamic_sampling_gives_an_all_equal_group_no_gradient(rollout):
    """Group 0's K scores are equal: masked out, its rows get exactly zero gradient, the KL term's too,
    and the loss is the loop over group 1's tokens alone."""
    r = dict(rollout)
    scores = r["scores"].copy()
    scores[:K] = 0.5
    r["advantages"] = np.asarray(maths.group_normalised(f32(scores), K), np.float64)
    keep = np.asarray(maths.informative_groups(f32(scores), K))
    np.testing.assert_array_equal(keep, [0.0] * K + [1.0] * K)
    kept_mask = r["mask"] * keep[:, None]
    for name in ("dapo", "grpo", "gspo"):
        def loss(logp, name=name):
            return registry_loss(name, r, logp, kept_mask, kl_coef=0.1)

        grad = np.asarray(jax.grad(loss)(f32(r["logp"])))
        assert (grad[:K] == 0).all() and (grad[K:][r["mask"][K:] > 0] != 0).all(), name
    assert float(registry_loss("dapo", r, f32(r["logp"]), kept_mask, kl_coef=0.1)) == pytest.approx(
        dapo_loop(r, r["logp"], kept_mask, 0.2, 0.2, 0.1), rel=1e-5)
    # without the filter the KL term alone moves group 0
    grad = np.asarray(jax.grad(lambda lp: registry_loss("dapo", r, lp, kl_coef=0.1))(f32(r["logp"])))
    assert (grad[:K][r["mask"][:K] > 0] != 0).all()


def test_truncated_responses_are_those_that_ran_out_without_eos():
    eos = 9
    tokens = np.array([[3, 4, 5], [3, eos, 0], [3, 4, eos], [3, 4, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], np.float32)
    np.testing.assert_array_equal(maths.truncated(jnp.asarray(tokens), f32(mask), eos), [1, 0, 0, 0])
    np.testing.assert_array_equal(maths.truncated(jnp.asarray(tokens), f32(mask), None), [1, 0, 1, 0])


def test_the_mismatch_metrics_match_a_loop(rollout):
    r = rollout
    sampler, trainer, mask = r["old_logp"], r["logp"], r["mask"]
    deltas = [trainer[b, t] - sampler[b, t] for b in range(B) for t in range(N) if mask[b, t]]
    got = maths.logprob_mismatch(f32(sampler), f32(trainer), f32(mask))
    assert float(got["mismatch_max_abs_logp"]) == pytest.approx(max(abs(d) for d in deltas), rel=1e-5)
    assert float(got["mismatch_mean_abs_logp"]) == pytest.approx(sum(abs(d) for d in deltas) / len(deltas), rel=1e-5)
    assert float(got["mismatch_k3"]) == pytest.approx(sum(math.expm1(d) - d for d in deltas) / len(deltas), rel=1e-5)


@pytest.mark.parametrize("fields,named", [
    (dict(algorithm="ppo", dynamic_sampling=True), "rl.dynamic_sampling"),
    (dict(algorithm="reinforce_pp", dynamic_sampling=True), "rl.dynamic_sampling"),
    (dict(algorithm="rloo", samples_per_prompt=4, epochs=1, clip_ratio_high=0.28), "rl.clip_ratio_high"),
    (dict(algorithm="reinforce", epochs=1, clip_ratio_high=0.28), "rl.clip_ratio_high"),
    (dict(algorithm="dapo", samples_per_prompt=1, kl_target=None), "rl.samples_per_prompt"),
    (dict(algorithm="gspo", samples_per_prompt=4), "rl.kl_target"),
    (dict(algorithm="cispo", samples_per_prompt=4, kl_target=None, clip_ratio_high=-0.1), "rl.clip_ratio_high"),
    (dict(algorithm="dapo", samples_per_prompt=4, kl_target=None, loss_aggregation="constant"),
     "rl.loss_aggregation"),
    (dict(algorithm="gspo", samples_per_prompt=4, kl_target=None, loss_aggregation="token_mean"),
     "rl.loss_aggregation"),
    (dict(algorithm="ppo", loss_aggregation="constant"), "rl.loss_aggregation"),
])
def test_options_that_do_not_suit_an_algorithm_are_refused(fields, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        RLConfig(**fields)


def test_an_algorithms_own_aggregation_is_accepted_by_name():
    assert RLConfig(algorithm="dapo", samples_per_prompt=4, kl_target=None, loss_aggregation="token_mean")
    assert RLConfig(algorithm="dr_grpo", samples_per_prompt=4, kl_target=None, loss_aggregation="constant")
    assert RLConfig(algorithm="grpo", samples_per_prompt=4, kl_target=None, loss_aggregation="constant")
