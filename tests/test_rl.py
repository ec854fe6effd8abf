"""RL estimators against plain float64 Python loops on random inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.rl import maths

B, N, V = 5, 9, 7


@pytest.fixture
def rollout():
    rng = np.random.default_rng(0)
    lengths = [9, 1, 4, 7, 3]  # includes a full-length and a one-token response
    mask = np.array([[1.0 if t < n else 0.0 for t in range(N)] for n in lengths])
    return {"mask": mask, "rewards": rng.normal(size=(B, N)), "values": rng.normal(size=(B, N)),
            "logp": -rng.exponential(size=(B, N)), "ref_logp": -rng.exponential(size=(B, N)),
            "advantages": rng.normal(size=(B, N)), "returns": rng.normal(size=(B, N)),
            "scores": rng.normal(size=B), "logits": rng.normal(size=(B, N, V)),
            "tokens": rng.integers(0, V, size=(B, N))}


def f32(x):
    return jnp.asarray(x, jnp.float32)


def gae_loop(rewards, values, mask, gamma, lam):
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        length = int(mask[b].sum())
        next_advantage = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1] if t + 1 < length else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_advantage = delta + gamma * lam * next_advantage
            advantages[b, t] = next_advantage
    returns = (advantages + values) * mask
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_a_loop(rollout, gamma, lam):
    r = rollout
    advantages, returns = maths.gae(f32(r["rewards"] * r["mask"]), f32(r["values"]), f32(r["mask"]), gamma, lam)
    want_advantages, want_returns = gae_loop(r["rewards"] * r["mask"], r["values"], r["mask"], gamma, lam)
    np.testing.assert_allclose(advantages, want_advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, want_returns, rtol=1e-5, atol=1e-5)


def test_whitening_matches_a_loop(rollout):
    x, mask = rollout["advantages"], rollout["mask"]
    entries = [x[b, t] for b in range(B) for t in range(N) if mask[b, t]]
    mean = sum(entries) / len(entries)
    var = sum((e - mean) ** 2 for e in entries) / (len(entries) - 1)
    want = np.array([[(x[b, t] - mean) / math.sqrt(var + 1e-8) if mask[b, t] else 0.0 for t in range(N)]
                     for b in range(B)])
    np.testing.assert_allclose(maths.masked_whiten(f32(x), f32(mask)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maths.masked_whiten(f32(x), f32(mask), shift_mean=False), (want + mean) * mask,
                               rtol=1e-5, atol=1e-5)
    whitened = np.asarray(maths.masked_whiten(f32(x), f32(mask)))[mask.astype(bool)]
    assert abs(whitened.mean()) < 1e-6 and abs(whitened.std(ddof=1) - 1) < 1e-4


def test_kl_estimators_match_a_loop(rollout):
    logp, ref = rollout["logp"], rollout["ref_logp"]
    k1 = [[logp[b, t] - ref[b, t] for t in range(N)] for b in range(B)]
    k3 = [[math.exp(ref[b, t] - logp[b, t]) - 1 - (ref[b, t] - logp[b, t]) for t in range(N)] for b in range(B)]
    np.testing.assert_allclose(maths.kl_per_token(f32(logp), f32(ref), "k1"), k1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maths.kl_per_token(f32(logp), f32(ref), "k3"), k3, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(maths.kl_per_token(f32(logp), f32(ref), "k3")) >= 0)
    with pytest.raises(ValueError, match="k2"):
        maths.kl_per_token(f32(logp), f32(ref), "k2")


def test_kl_estimators_are_unbiased_for_a_known_kl():
    """Sampling from p, both estimators average to the exact KL(p || q) of two categoricals."""
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.4, 0.4])
    exact = float(np.sum(p * np.log(p / q)))
    draws = np.random.default_rng(0).choice(3, size=200_000, p=p)
    for estimator in ("k1", "k3"):
        estimate = float(jnp.mean(maths.kl_per_token(f32(np.log(p)[draws]), f32(np.log(q)[draws]), estimator)))
        assert abs(estimate - exact) < 5e-3, (estimator, estimate, exact)


def test_shaped_rewards_match_a_loop(rollout):
    r = rollout
    kl = r["logp"] - r["ref_logp"]
    got = maths.shaped_rewards(f32(r["scores"]), f32(kl), f32(r["mask"]), 0.1)
    want = np.zeros((B, N))
    for b in range(B):
        length = int(r["mask"][b].sum())
        for t in range(length):
            want[b, t] = -0.1 * kl[b, t] + (r["scores"][b] if t == length - 1 else 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_policy_loss_matches_a_loop(rollout):
    r, clip = rollout, 0.2
    logp = r["logp"] + np.random.default_rng(1).normal(scale=0.3, size=(B, N))
    loss, metrics = maths.policy_loss(f32(logp), f32(r["logp"]), f32(r["advantages"]), f32(r["mask"]), clip)
    terms, clipped, approx = [], [], []
    for b in range(B):
        for t in range(N):
            if r["mask"][b, t]:
                ratio = math.exp(logp[b, t] - r["logp"][b, t])
                a = r["advantages"][b, t]
                unclipped_loss, clipped_loss = -a * ratio, -a * min(max(ratio, 1 - clip), 1 + clip)
                terms.append(max(unclipped_loss, clipped_loss))
                clipped.append(clipped_loss > unclipped_loss)
                approx.append(0.5 * (logp[b, t] - r["logp"][b, t]) ** 2)
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(sum(clipped) / len(clipped), abs=1e-6)
    assert float(metrics["approx_kl"]) == pytest.approx(sum(approx) / len(approx), rel=1e-5)
    assert 0 < float(metrics["clip_fraction"]) < 1  # the test exercises both branches


def test_value_loss_and_clip_fraction_match_a_loop(rollout):
    r, clip = rollout, 0.2
    values = r["values"] + np.random.default_rng(2).normal(scale=0.3, size=(B, N))
    loss, metrics = maths.value_loss(f32(values), f32(r["values"]), f32(r["returns"]), f32(r["mask"]), clip)
    terms, used = [], []
    for b in range(B):
        for t in range(N):
            if r["mask"][b, t]:
                v, old, ret = values[b, t], r["values"][b, t], r["returns"][b, t]
                v_clipped = old + min(max(v - old, -clip), clip)
                terms.append(max((v - ret) ** 2, (v_clipped - ret) ** 2))
                used.append(abs(v - old) > clip and (v_clipped - ret) ** 2 > (v - ret) ** 2)
    assert float(loss) == pytest.approx(0.5 * sum(terms) / len(terms), rel=1e-5)
    assert float(metrics["value_clip_fraction"]) == pytest.approx(sum(used) / len(used), abs=1e-6)
    assert 0 < sum(used) < len(used)  # both branches


def test_value_clip_fraction_is_zero_when_no_value_moved_past_the_range():
    """V_old + clip(V - V_old) is not exactly V in float32; that rounding is not clipping."""
    rng = np.random.default_rng(3)
    old = rng.normal(size=(64, 16))
    old_values, values = f32(old), f32(old + rng.uniform(-0.19, 0.19, size=(64, 16)))  # |V - V_old| < 0.2
    returns = f32(rng.normal(size=(64, 16)))
    clipped = old_values + jnp.clip(values - old_values, -0.2, 0.2)
    assert bool(jnp.any(clipped != values))  # the rounding the old count mistook for clipping is there
    _, metrics = maths.value_loss(values, old_values, returns, jnp.ones((64, 16)), 0.2)
    assert float(metrics["value_clip_fraction"]) == 0.0


def test_logprobs_and_entropy_match_a_loop(rollout):
    logits, tokens = rollout["logits"], rollout["tokens"]
    for temperature in (1.0, 0.7):
        logp_BxNxV = maths.log_softmax(f32(logits), temperature)
        logp, ent = maths.token_logprobs(logp_BxNxV, jnp.asarray(tokens)), maths.entropy(logp_BxNxV)
        for b in range(B):
            for t in range(N):
                z = [x / temperature for x in logits[b, t]]
                log_norm = math.log(sum(math.exp(x) for x in z))
                assert float(logp[b, t]) == pytest.approx(z[tokens[b, t]] - log_norm, abs=1e-5)
                probs = [math.exp(x - log_norm) for x in z]
                assert float(ent[b, t]) == pytest.approx(-sum(p * math.log(p) for p in probs), abs=1e-5)


def test_explained_variance(rollout):
    r = rollout
    assert float(maths.explained_variance(f32(r["returns"]), f32(r["returns"]), f32(r["mask"]))) == pytest.approx(1.0)
    noisy = r["returns"] + 0.5 * r["values"]
    entries = [(noisy[b, t], r["returns"][b, t]) for b in range(B) for t in range(N) if r["mask"][b, t]]
    residual = [ret - v for v, ret in entries]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / (len(xs) - 1)  # noqa: E731
    want = 1 - var(residual) / var([ret for _, ret in entries])
    assert float(maths.explained_variance(f32(noisy), f32(r["returns"]), f32(r["mask"]))) == pytest.approx(
        want, rel=1e-5
    )


def test_adaptive_kl_controller_matches_a_loop():
    beta, target, horizon, n = 0.1, 6.0, 10000.0, 64
    observed = [0.5, 3.0, 6.0, 7.0, 30.0, 5.9]
    got, want = jnp.float32(beta), beta
    for kl in observed:
        got = maths.adaptive_kl_coef(got, jnp.float32(kl), n, target, horizon)
        error = min(max(kl / target - 1, -0.2), 0.2)
        want = want * (1 + error * n / horizon)
        assert float(got) == pytest.approx(want, rel=1e-6)
    assert want < beta  # mostly below target: beta went down


def test_gae_is_one_compiled_scan():
    """GAE lowers to a loop (lax.scan), not an unrolled chain of N steps."""
    text = jax.jit(maths.gae, static_argnums=(3, 4)).lower(
        jnp.zeros((2, 64)), jnp.zeros((2, 64)), jnp.ones((2, 64)), 1.0, 0.95).as_text()
    assert "while" in text


def test_reinforce_advantages_and_loss_match_a_loop(rollout):
    mask, beta = rollout["mask"], 0.1
    kl = rollout["logp"] - rollout["ref_logp"]
    returns = [rollout["scores"][b] - beta * sum(kl[b, t] for t in range(N) if mask[b, t]) for b in range(B)]
    expected = [returns[b] - sum(returns[j] for j in range(B) if j != b) / (B - 1) for b in range(B)]
    advantages = maths.reinforce_advantages(f32(rollout["scores"]), f32(kl), f32(mask), beta)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-6)
    loss = -sum(expected[b] * sum(rollout["logp"][b, t] for t in range(N) if mask[b, t]) for b in range(B)) / B
    np.testing.assert_allclose(
        maths.reinforce_surrogate(f32(rollout["logp"]), f32(expected), f32(mask)), loss, rtol=1e-5
    )
    # The gradient with respect to each log-prob is -A_b m_bt / B.
    grad = jax.grad(lambda logp: maths.reinforce_surrogate(logp, f32(expected), f32(mask)))(f32(rollout["logp"]))
    np.testing.assert_allclose(grad, -np.asarray(expected)[:, None] * mask / B, rtol=1e-5, atol=1e-7)


K = 4  # samples per prompt: 3 groups of 4


def test_group_baselines_match_a_loop():
    rng = np.random.default_rng(3)
    returns = rng.normal(size=3 * K)
    rloo = np.asarray(maths.group_leave_one_out(f32(returns), K))
    grpo = np.asarray(maths.group_normalised(f32(returns), K))
    dr_grpo = np.asarray(maths.group_normalised(f32(returns), K, scale=False))
    for i in range(3 * K):
        group = returns[(i // K) * K:(i // K + 1) * K]
        others = [r for j, r in enumerate(group) if (i // K) * K + j != i]
        assert rloo[i] == pytest.approx(returns[i] - sum(others) / (K - 1), abs=1e-5)
        mean = sum(group) / K
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (K - 1))
        assert grpo[i] == pytest.approx((returns[i] - mean) / (std + 1e-4), abs=1e-5)
        assert dr_grpo[i] == pytest.approx(returns[i] - mean, abs=1e-6)
    # RLOO's baseline leaves out the sample itself: a group of equal returns has advantage 0, and one
    # sample's return moves only its own group's advantages.
    moved = returns.copy()
    moved[0] += 1.0
    change = np.asarray(maths.group_leave_one_out(f32(moved), K)) - rloo
    assert np.allclose(change[K:], 0, atol=1e-6) and change[0] == pytest.approx(1.0, abs=1e-5)


def aggregate_loop(x, mask, how):
    if how == "token_mean":
        return sum(x[b, t] * mask[b, t] for b in range(B) for t in range(N)) / mask.sum()
    if how == "sequence_mean":
        return sum(sum(x[b, t] * mask[b, t] for t in range(N)) / mask[b].sum() for b in range(B)) / B
    return sum(x[b, t] * mask[b, t] for b in range(B) for t in range(N)) / (B * N)


def grpo_loss_loop(logp, old_logp, ref_logp, advantages, mask, clip, beta, how):
    terms = np.zeros((B, N))
    for b in range(B):
        for t in range(N):
            if mask[b, t]:
                ratio = math.exp(logp[b, t] - old_logp[b, t])
                surrogate = max(-advantages[b] * ratio, -advantages[b] * min(max(ratio, 1 - clip), 1 + clip))
                r = math.exp(ref_logp[b, t] - logp[b, t])
                terms[b, t] = surrogate + beta * ((r - 1) - math.log(r))
    return aggregate_loop(terms, mask, how)


@pytest.mark.parametrize("how", maths.AGGREGATIONS)
def test_grpo_loss_and_its_gradient_match_a_loop(rollout, how):
    r = rollout
    old_logp = r["logp"] + np.random.default_rng(4).normal(scale=0.3, size=(B, N))  # some ratios clipped
    advantages = r["scores"]
    clip, beta = 0.2, 0.1

    def loss(logp):
        terms = maths.grpo_loss_terms(
            logp, f32(old_logp), f32(r["ref_logp"]), f32(advantages), f32(r["mask"]), clip, beta
        )
        return maths.aggregate(terms, f32(r["mask"]), how)

    expected = grpo_loss_loop(r["logp"], old_logp, r["ref_logp"], advantages, r["mask"], clip, beta, how)
    assert float(loss(f32(r["logp"]))) == pytest.approx(expected, rel=1e-5)
    # The gradient against central differences of the float64 loop.
    grad = np.asarray(jax.grad(loss)(f32(r["logp"])))
    step = 1e-6
    for b, t in [(0, 0), (0, 8), (2, 3), (3, 6), (1, 0), (1, 5)]:  # (1, 5) is padding: no gradient
        up, down = r["logp"].copy(), r["logp"].copy()
        up[b, t] += step
        down[b, t] -= step
        numeric = (grpo_loss_loop(up, old_logp, r["ref_logp"], advantages, r["mask"], clip, beta, how)
                   - grpo_loss_loop(down, old_logp, r["ref_logp"], advantages, r["mask"], clip, beta, how)) / (2 * step)
        assert grad[b, t] == pytest.approx(numeric, abs=1e-5), (b, t)


def test_grpo_loss_has_a_finite_gradient_where_padding_is_improbable(rollout):
    """Past the EOS the log-probs can be anything; k3 = exp(ref - logp) there must not reach the gradient."""
    r = rollout
    logp = np.where(r["mask"] > 0, r["logp"], -200.0)
    grad = jax.grad(
        lambda lp: maths.aggregate(
            maths.grpo_loss_terms(lp, f32(logp), f32(r["ref_logp"]), f32(r["scores"]), f32(r["mask"]), 0.2, 0.1),
            f32(r["mask"]),
            "token_mean",
        )
    )
    assert np.isfinite(np.asarray(grad(f32(logp)))).all()
