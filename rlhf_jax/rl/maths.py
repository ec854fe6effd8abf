"""The maths of policy-gradient RL on language models, as pure functions of arrays.

Shapes: B sequences, N response tokens, V vocabulary. ``mask_BxN`` is 1 on real response tokens
(up to and including EOS) and 0 after. Every mean is over the whole array, so under ``jax.jit``
with a sharded batch the statistics are global (XLA inserts the all-reduce), not per device.

Each function is checked against a plain float64 Python loop in ``tests/test_rl.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_softmax(logits_BxNxV: jax.Array, temperature: float = 1.0) -> jax.Array:
    """log pi(. | context) over the vocabulary, from logits / temperature, in float32."""
    return jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32) / temperature, axis=-1)


def token_logprobs(logp_BxNxV: jax.Array, tokens_BxN: jax.Array) -> jax.Array:
    """log pi(token_t | context): the log-probabilities read at the sampled tokens."""
    return jnp.take_along_axis(logp_BxNxV, tokens_BxN[..., None], axis=-1)[..., 0]


def entropy(logp_BxNxV: jax.Array) -> jax.Array:
    """H(pi(. | context)) = -sum_v p_v log p_v per token."""
    return -jnp.sum(jnp.exp(logp_BxNxV) * logp_BxNxV, axis=-1)


def masked_sum(x, mask, axis=None):
    return jnp.sum(x * mask, axis=axis)


def masked_mean(x, mask, axis=None):
    """sum(x * mask) / sum(mask) (0 where the mask is empty)."""
    return masked_sum(x, mask, axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def masked_var(x, mask):
    """Unbiased variance over the masked entries: sum(mask (x - mean)^2) / (sum(mask) - 1)."""
    count = jnp.sum(mask)
    centred = (x - masked_mean(x, mask)) * mask
    return jnp.sum(centred ** 2) / jnp.maximum(count - 1, 1)


def masked_whiten(x, mask, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / sqrt(var + eps) over the masked entries; with ``shift_mean=False`` the mean is
    added back (scale only, as for rewards). Entries outside the mask are returned as 0."""
    mean = masked_mean(x, mask)
    whitened = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
    return (whitened if shift_mean else whitened + mean) * mask


def kl_per_token(logp_BxN, ref_logp_BxN, estimator: str = "k1"):
    """Per-token estimate of KL(pi || pi_ref) from a token sampled from pi (Schulman's k1 / k3):

        k1 = log pi - log pi_ref                      (unbiased, can be negative)
        k3 = (r - 1) - log r,  r = pi_ref / pi         (unbiased, always >= 0, lower variance)
    """
    log_ratio = logp_BxN - ref_logp_BxN
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return jnp.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k3)")


def last_index(mask_BxN):
    """Index of each row's last real response token (its EOS, or N - 1)."""
    return jnp.maximum(jnp.sum(mask_BxN, axis=-1).astype(jnp.int32) - 1, 0)


def shaped_rewards(score_B, kl_BxN, mask_BxN, kl_coef):
    """Per-token rewards: r_t = -beta kl_t on every response token, plus the reward model's score at
    the last one (Ziegler et al. 2019, eq. 2)."""
    rewards_BxN = -kl_coef * kl_BxN * mask_BxN
    at_end_BxN = jax.nn.one_hot(last_index(mask_BxN), mask_BxN.shape[1], dtype=rewards_BxN.dtype)
    return rewards_BxN + score_B[:, None] * at_end_BxN


def gae(rewards_BxN, values_BxN, mask_BxN, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016), as a reverse ``lax.scan`` over tokens:

        delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t
        A_t     = delta_t + gamma lambda m_{t+1} A_{t+1},     A_N = V_N = 0
        R_t     = A_t + V_t                                   (the value target)

    m is the response mask: the episode ends at the last real token, nothing after it counts.
    Returns (advantages_BxN, returns_BxN), both zero outside the mask.
    """
    values_BxN = values_BxN * mask_BxN
    next_values_BxN = jnp.concatenate([values_BxN[:, 1:], jnp.zeros_like(values_BxN[:, :1])], axis=1)
    next_mask_BxN = jnp.concatenate([mask_BxN[:, 1:], jnp.zeros_like(mask_BxN[:, :1])], axis=1)
    deltas_BxN = rewards_BxN + gamma * next_values_BxN - values_BxN

    def step(advantage_B, inputs):
        delta_B, next_mask_B = inputs
        advantage_B = delta_B + gamma * lam * next_mask_B * advantage_B
        return advantage_B, advantage_B

    _, advantages_NxB = jax.lax.scan(step, jnp.zeros_like(deltas_BxN[:, 0]), (deltas_BxN.T, next_mask_BxN.T),
                                     reverse=True)
    advantages_BxN = advantages_NxB.T * mask_BxN
    return advantages_BxN, (advantages_BxN + values_BxN) * mask_BxN


def policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip: float, clip_high: float | None = None):
    """Clipped surrogate (Schulman et al. 2017), to minimise:

        L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high)),   rho_t = exp(log pi - log pi_old)

    eps_low = ``clip``; eps_high = ``clip_high`` (DAPO's clip-higher), ``clip`` when None. Also returns
    approx_kl = mean 0.5 (log rho)^2, the clip fraction and the mean ratio.
    """
    terms_BxN = clipped_surrogate(jnp.exp(logp_BxN - old_logp_BxN), advantages_BxN, clip, clip_high)
    loss = masked_mean(terms_BxN, mask_BxN)
    return loss, ratio_diagnostics(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip, clip_high)


def clipped_ratio(ratio, clip: float, clip_high: float | None = None):
    """clip(rho, 1 - eps_low, 1 + eps_high), eps_low = ``clip``, eps_high = ``clip_high`` (``clip`` when None)."""
    return jnp.clip(ratio, 1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))


def _surrogate_terms(ratio, advantages, clip: float, clip_high: float | None = None):
    return -advantages * ratio, -advantages * clipped_ratio(ratio, clip, clip_high)


def clipped_surrogate(ratio, advantages, clip: float, clip_high: float | None = None):
    """max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)) elementwise: PPO's pessimistic bound, to minimise."""
    return jnp.maximum(*_surrogate_terms(ratio, advantages, clip, clip_high))


def ratio_diagnostics(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip: float,
                      clip_high: float | None = None) -> dict:
    """How far the policy moved from the one that sampled: approx_kl = mean 0.5 (log rho)^2, the share of
    tokens where the clipped term of the surrogate is the larger (clip_fraction), and the mean ratio rho."""
    log_ratio_BxN = logp_BxN - old_logp_BxN
    ratio_BxN = jnp.exp(log_ratio_BxN)
    unclipped_BxN, clipped_BxN = _surrogate_terms(ratio_BxN, advantages_BxN, clip, clip_high)
    return {"approx_kl": masked_mean(0.5 * log_ratio_BxN ** 2, mask_BxN),
            "clip_fraction": masked_mean((clipped_BxN > unclipped_BxN).astype(jnp.float32), mask_BxN),
            "ratio": masked_mean(ratio_BxN, mask_BxN)}


def regularised_returns(score_B, kl_BxN, mask_BxN, kl_coef):
    """R_b = s_b - beta sum_t m_bt kl_bt: the score less the sequence's KL penalty."""
    return score_B - kl_coef * masked_sum(kl_BxN, mask_BxN, axis=1)


def reinforce_advantages(score_B, kl_BxN, mask_BxN, kl_coef):
    """Sequence advantages of REINFORCE with the rollout's other sequences as baseline: with the
    KL-regularised return R_b (``regularised_returns``),

        A_b = R_b - (1 / (B - 1)) sum_{j != b} R_j.

    Unbiased (the baseline does not depend on sample b), but the other sequences answer other prompts,
    so it removes none of the variance between prompts: that is ``group_leave_one_out`` (RLOO), which
    needs k samples of each prompt. Returns A_B."""
    returns_B = regularised_returns(score_B, kl_BxN, mask_BxN, kl_coef)
    batch = returns_B.shape[0]
    return returns_B - (jnp.sum(returns_B) - returns_B) / (batch - 1)


def group_leave_one_out(returns_B, k: int):
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): rows come in groups of k samples of one prompt
    (rows g k .. g k + k - 1); each sample's baseline is the mean return of the other k - 1 of its group,

        A_gi = R_gi - (1 / (k - 1)) sum_{j != i} R_gj.

    Returns A_B."""
    returns_GxK = returns_B.reshape(-1, k)
    return (returns_GxK - (jnp.sum(returns_GxK, axis=1, keepdims=True) - returns_GxK) / (k - 1)).reshape(-1)


def group_normalised(score_B, k: int, scale: bool = True, eps: float = 1e-4):
    """GRPO's advantages (Shao et al. 2024): each score less its group's mean, divided by the group's
    standard deviation (unbiased, k - 1) + eps when ``scale``; Dr. GRPO (Liu et al. 2025) drops the
    division, which favours groups whose scores barely differ. Returns A_B."""
    score_GxK = score_B.reshape(-1, k)
    centred_GxK = score_GxK - jnp.mean(score_GxK, axis=1, keepdims=True)
    if scale:
        centred_GxK = centred_GxK / (jnp.std(score_GxK, axis=1, keepdims=True, ddof=1) + eps)
    return centred_GxK.reshape(-1)


AGGREGATIONS = ("token_mean", "sequence_mean", "constant")


def aggregate(x_BxN, mask_BxN, how: str):
    """One number from per-token loss terms, three ways:

        token_mean     sum_bt m x / sum_bt m                    (every token weighs the same; DAPO)
        sequence_mean  (1/B') sum_b (sum_t m x / sum_t m)       (every sequence weighs the same; GRPO)
        constant       sum_bt m x / (B N)                       (a fixed normaliser; Dr. GRPO)

    B' counts the sequences with at least one token in the mask (all of them, unless a filter such as
    dynamic sampling masked some out).
    """
    if how == "token_mean":
        return masked_mean(x_BxN, mask_BxN)
    if how == "sequence_mean":
        return masked_mean(masked_mean(x_BxN, mask_BxN, axis=1), (jnp.sum(mask_BxN, axis=1) > 0).astype(x_BxN.dtype))
    if how == "constant":
        return masked_sum(x_BxN, mask_BxN) / x_BxN.size
    raise ValueError(f"unknown loss aggregation {how!r} {AGGREGATIONS}")


def grpo_loss_terms(logp_BxN, old_logp_BxN, ref_logp_BxN, advantages_B, mask_BxN, clip: float, kl_coef: float,
                    clip_high: float | None = None):
    """GRPO's per-token loss (to minimise): PPO's clipped surrogate with the sequence's advantage on
    every token, plus beta times the k3 estimate of KL(pi || pi_ref) (Shao et al. 2024, eq. 3-4):

        l_bt = max(-A_b rho_bt, -A_b clip(rho_bt, 1 - eps_low, 1 + eps_high)) + beta k3_bt,

    0 outside the mask (where k3's exponential could overflow, and 0 x inf would poison the gradient).
    DAPO (Yu et al. 2025) is this with eps_high > eps_low, aggregated over tokens."""
    ratio_BxN = jnp.exp(logp_BxN - old_logp_BxN)
    return (clipped_surrogate(ratio_BxN, advantages_B[:, None], clip, clip_high)
            + kl_coef * masked_k3(logp_BxN, ref_logp_BxN, mask_BxN)) * mask_BxN


def masked_k3(logp_BxN, ref_logp_BxN, mask_BxN):
    """k3(pi || pi_ref) per token, computed on masked log-probs so that padding cannot overflow."""
    return kl_per_token(logp_BxN * mask_BxN, ref_logp_BxN * mask_BxN, "k3")


def gspo_loss_terms(logp_BxN, old_logp_BxN, ref_logp_BxN, advantages_B, mask_BxN, clip: float, kl_coef: float,
                    clip_high: float | None = None, token_level: bool = False):
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the geometric mean of its tokens',

        s_b = exp((1 / |y_b|) sum_t m_bt (log pi_bt - log pi_old_bt)),
        l_bt = max(-A_b s_b, -A_b clip(s_b, 1 - eps_low, 1 + eps_high)) + beta k3_bt,

    every token of a sequence carrying its sequence's term, so that the sequence mean of ``aggregate``
    gives the paper's per-sequence objective. ``token_level`` (GSPO-token) uses
    s_bt = sg[s_b] pi_bt / sg[pi_bt]: the same value, and with one advantage per sequence the same
    gradient, but a per-token advantage would weight each token's own gradient."""
    log_ratio_B = masked_mean(logp_BxN - old_logp_BxN, mask_BxN, axis=1)
    log_ratio_BxN = jnp.broadcast_to(log_ratio_B[:, None], logp_BxN.shape)
    if token_level:
        log_ratio_BxN = jax.lax.stop_gradient(log_ratio_BxN) + logp_BxN - jax.lax.stop_gradient(logp_BxN)
    return (clipped_surrogate(jnp.exp(log_ratio_BxN), advantages_B[:, None], clip, clip_high)
            + kl_coef * masked_k3(logp_BxN, ref_logp_BxN, mask_BxN)) * mask_BxN


def cispo_loss_terms(logp_BxN, old_logp_BxN, ref_logp_BxN, advantages_B, mask_BxN, clip: float, kl_coef: float,
                     clip_high: float | None = None):
    """CISPO (MiniMax 2025): the importance weight clipped and cut from the gradient, times the log-prob,

        l_bt = -sg[clip(rho_bt, 1 - eps_low, 1 + eps_high)] A_b log pi_bt + beta k3_bt,

    so d l / d log pi_bt = -clip(rho_bt) A_b on every token: a clipped token still contributes, with a
    bounded weight, where PPO's clip gives it no gradient at all."""
    weight_BxN = jax.lax.stop_gradient(clipped_ratio(jnp.exp(logp_BxN - old_logp_BxN), clip, clip_high))
    return (-weight_BxN * advantages_B[:, None] * logp_BxN
            + kl_coef * masked_k3(logp_BxN, ref_logp_BxN, mask_BxN)) * mask_BxN


def discounted_returns(rewards_BxN, mask_BxN, gamma: float):
    """G_t = sum_{s >= t} gamma^(s - t) r_s within the mask: GAE with no critic and lambda = 1."""
    return gae(rewards_BxN, jnp.zeros_like(rewards_BxN), mask_BxN, gamma, 1.0)[0]


def reinforce_pp_advantages(score_B, kl_BxN, mask_BxN, kl_coef, gamma: float):
    """REINFORCE++ (Hu 2025): the per-token KL in the reward (``shaped_rewards``), its discounted return
    per token with no critic, normalised over every token of the global batch:

        A_bt = (G_bt - mean(G)) / std(G),   G_bt = sum_{s >= t} gamma^(s - t) r_bs."""
    returns_BxN = discounted_returns(shaped_rewards(score_B, kl_BxN, mask_BxN, kl_coef), mask_BxN, gamma)
    return masked_whiten(returns_BxN, mask_BxN)


def informative_groups(score_B, k: int):
    """DAPO's dynamic sampling, as a mask that keeps the batch's shape: 1 for every sample of a group whose
    k scores are not all equal, 0 for the groups that carry no signal (all right or all wrong)."""
    score_GxK = score_B.reshape(-1, k)
    varied_G = jnp.max(score_GxK, axis=1) > jnp.min(score_GxK, axis=1)
    return jnp.repeat(varied_G, k).astype(jnp.float32)


def truncated(tokens_BxN, mask_BxN, eos_token_id: int | None):
    """1 for a response that ran to the last of its N tokens without ending (DAPO's overlong filter)."""
    ran_out_B = mask_BxN[:, -1] > 0
    if eos_token_id is None:
        return ran_out_B.astype(jnp.float32)
    return (ran_out_B & (tokens_BxN[:, -1] != eos_token_id)).astype(jnp.float32)


def logprob_mismatch(sampler_logp_BxN, trainer_logp_BxN, mask_BxN) -> dict:
    """How far the sampler's log-probs (KV-cache decode) are from the trainer's (one full forward) on the
    sampled tokens: max and mean |delta log p| and k3(pi_sampler || pi_trainer) on the real tokens."""
    delta_BxN = (trainer_logp_BxN - sampler_logp_BxN) * mask_BxN
    return {"mismatch_max_abs_logp": jnp.max(jnp.abs(delta_BxN)),
            "mismatch_mean_abs_logp": masked_mean(jnp.abs(delta_BxN), mask_BxN),
            "mismatch_k3": masked_mean(jnp.expm1(delta_BxN) - delta_BxN, mask_BxN)}


def reinforce_surrogate(logp_BxN, advantages_B, mask_BxN):
    """The REINFORCE surrogate, to minimise: L = -(1/B) sum_b A_b sum_t m_bt log pi(y_bt); its gradient
    is the score-function estimate of -grad E[R]."""
    return -jnp.mean(advantages_B * masked_sum(logp_BxN, mask_BxN, axis=1))


def value_loss(values_BxN, old_values_BxN, returns_BxN, mask_BxN, clip: float):
    """Clipped value loss: 0.5 mean_t max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2).

    value_clip_fraction: the share of tokens where the clipped term is the one used, i.e. V moved
    further than eps from V_old and clipping it raised the loss. Inside the range V_old + (V - V_old)
    is V only up to float32 rounding, so the first condition is tested on |V - V_old| itself."""
    clipped_BxN = old_values_BxN + jnp.clip(values_BxN - old_values_BxN, -clip, clip)
    losses_BxN = jnp.maximum((values_BxN - returns_BxN) ** 2, (clipped_BxN - returns_BxN) ** 2)
    loss = 0.5 * masked_mean(losses_BxN, mask_BxN)
    used_BxN = (jnp.abs(values_BxN - old_values_BxN) > clip) & (
        (clipped_BxN - returns_BxN) ** 2 > (values_BxN - returns_BxN) ** 2)
    return loss, {"value_clip_fraction": masked_mean(used_BxN.astype(jnp.float32), mask_BxN)}


def explained_variance(values_BxN, returns_BxN, mask_BxN):
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 is a perfect value function, <= 0 is useless."""
    return 1.0 - masked_var(returns_BxN - values_BxN, mask_BxN) / jnp.maximum(masked_var(returns_BxN, mask_BxN), 1e-8)


def adaptive_kl_coef(kl_coef, observed_kl, n_steps, target: float, horizon: float):
    """Ziegler et al. (2019) proportional controller on log(beta):

        e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta (1 + e n / horizon)

    with n the number of episodes in the batch. ``target=None``-style fixed control is simply not
    calling this.
    """
    error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
