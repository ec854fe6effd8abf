"""Policy-gradient algorithms as a registry: each is a pure advantage estimator, a pure loss and whether
it trains a critic. ``online.update`` looks the configured one up; adding an algorithm is one entry here
(plus its maths in ``maths.py``), with no edit to the update or the trainer.

Shapes: B sequences, N response tokens; ``mask_BxN`` is 1 on real response tokens.

* ``ppo`` (Schulman et al. 2017; Ziegler et al. 2019): per-token rewards -beta kl_t plus the score at
  the last token (optionally whitened), GAE advantages, whitened over the batch; the loss

      L = L_clip(rho, A) + c_v L_V(V, V_old, R) - c_H H,

  with the clipped surrogate and clipped value loss of ``maths.policy_loss`` / ``maths.value_loss``.
* ``reinforce``: one advantage per sequence, the KL-regularised return minus the mean return of the
  rollout's other sequences, which answer other prompts (``maths.reinforce_advantages``: unbiased, but it
  removes no per-prompt variance), and the score-function loss ``maths.reinforce_surrogate`` - c_H H;
  no critic. The ratio diagnostics of PPO are logged beside it.
* ``rloo`` (Ahmadian et al. 2024): the same loss, the baseline taken within each prompt's k samples
  (``maths.samples_per_prompt``; ``maths.group_leave_one_out``).
* ``grpo`` (Shao et al. 2024): the scores normalised within each prompt's k samples
  (``maths.group_normalised``), no KL in the reward; PPO's clipped surrogate plus beta k3(pi || pi_ref) in
  the loss (``maths.grpo_loss_terms``), averaged as ``maths.loss_aggregation`` says. ``dr_grpo`` (Liu et al.
  2025): the scores only centred, the loss summed over a constant B N.
* ``dapo`` (Yu et al. 2025): GRPO's advantages and per-token loss with the asymmetric clip
  [1 - eps_low, 1 + eps_high] (``rl.clip_ratio``, ``rl.clip_ratio_high``), averaged over every token of the
  batch; its dynamic sampling (``rl.dynamic_sampling``) and overlong filter (``rl.mask_truncated``) are
  config fields that any group algorithm can take.
* ``gspo`` / ``gspo_token`` (Zheng et al. 2025): one length-normalised importance ratio per sequence,
  clipped per sequence (``maths.gspo_loss_terms``), averaged over sequences.
* ``cispo`` (MiniMax 2025): the clipped importance weight, cut from the gradient, times log pi
  (``maths.cispo_loss_terms``): clipped tokens still get a gradient. Averaged over tokens.
* ``reinforce_pp`` (Hu 2025): the KL in the per-token reward, discounted returns with no critic,
  normalised over the global batch (``maths.reinforce_pp_advantages``), PPO's clipped surrogate.

Every clipped loss takes ``rl.clip_ratio_high`` (eps_high; None: eps_low) and logs PPO's ratio diagnostics.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.rl import maths


@struct.dataclass
class Minibatch:
    """The rows of one Adam step: the rollout's tokens and old log-probs / values, and the targets the
    algorithm computed for them (``advantages`` is [B, N] per token or [B] per sequence)."""

    ids_BxT: jax.Array
    mask_BxT: jax.Array
    mask_BxN: jax.Array
    old_logp_BxN: jax.Array
    old_values_BxN: jax.Array
    advantages: jax.Array
    returns_BxN: jax.Array
    ref_logp_BxN: jax.Array  # the frozen reference's log-probs (GRPO's KL term)

    def check_shapes(self) -> None:
        """Trace-time checks: [B, T] tokens, [B, N] per-token arrays, advantages [B, N] or [B]."""
        rows, length = self.ids_BxT.shape
        chex.assert_shape(self.mask_BxT, (rows, length))
        chex.assert_equal_shape([self.mask_BxN, self.old_logp_BxN, self.old_values_BxN, self.returns_BxN,
                                 self.ref_logp_BxN])
        chex.assert_shape(self.mask_BxN, (rows, None))
        chex.assert_shape(self.advantages, (rows,) if self.advantages.ndim == 1 else self.mask_BxN.shape)


@struct.dataclass
class PolicyOutputs:
    """What the current parameters say about a minibatch's response tokens."""

    logp_BxN: jax.Array
    entropy_BxN: jax.Array
    values_BxN: jax.Array


def ppo_loss(logp_BxN, entropy_BxN, values_BxN, old_logp_BxN, old_values_BxN, advantages_BxN, returns_BxN, mask_BxN,
             clip_ratio: float, clip_value: float, value_coef: float, entropy_coef: float,
             clip_high: float | None = None):
    """L = L_clip + value_coef L_V - entropy_coef H (to minimise); returns (L, metrics)."""
    entropy = maths.masked_mean(entropy_BxN, mask_BxN)
    pg_loss, pg_metrics = maths.policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip_ratio, clip_high)
    vf_loss, vf_metrics = maths.value_loss(values_BxN, old_values_BxN, returns_BxN, mask_BxN, clip_value)
    loss = pg_loss + value_coef * vf_loss - entropy_coef * entropy
    return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss, **pg_metrics, **vf_metrics}


def reinforce_loss(logp_BxN, entropy_BxN, old_logp_BxN, advantages_B, mask_BxN, clip_ratio: float,
                   entropy_coef: float):
    """L = -(1/B) sum_b A_b sum_t m_bt log pi(y_bt) - entropy_coef H (to minimise); returns (L, metrics),
    with PPO's ratio diagnostics (approx_kl, clip_fraction, ratio) for comparison: on-policy they stay
    at 0, 0 and 1."""
    entropy = maths.masked_mean(entropy_BxN, mask_BxN)
    ratio_metrics = maths.ratio_diagnostics(logp_BxN, old_logp_BxN, advantages_B[:, None], mask_BxN, clip_ratio)
    pg_loss = maths.reinforce_surrogate(logp_BxN, advantages_B, mask_BxN)
    loss = pg_loss - entropy_coef * entropy
    return loss, {"loss": loss, "policy_loss": pg_loss, **ratio_metrics}


def ppo_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_BxN, returns_BxN): GAE on the KL-shaped rewards, advantages whitened."""
    rewards_BxN = maths.shaped_rewards(scores_B, kl_BxN, mask_BxN, kl_coef)
    if cfg.whiten_rewards:
        rewards_BxN = maths.masked_whiten(rewards_BxN, mask_BxN, shift_mean=False)
    advantages_BxN, returns_BxN = maths.gae(rewards_BxN, values_BxN, mask_BxN, cfg.gamma, cfg.lam)
    return maths.masked_whiten(advantages_BxN, mask_BxN), returns_BxN


def reinforce_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_B, zero returns): leave-one-out baseline on the KL-regularised return."""
    return maths.reinforce_advantages(scores_B, kl_BxN, mask_BxN, kl_coef), jnp.zeros_like(mask_BxN)


def rloo_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_B, zero returns): leave-one-out within each prompt's k samples, on the KL-regularised
    return."""
    returns_B = maths.regularised_returns(scores_B, kl_BxN, mask_BxN, kl_coef)
    return maths.group_leave_one_out(returns_B, cfg.samples_per_prompt), jnp.zeros_like(mask_BxN)


def grpo_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_B, zero returns): the scores normalised within each prompt's k samples; the KL is in
    the loss, not the reward."""
    return maths.group_normalised(scores_B, cfg.samples_per_prompt), jnp.zeros_like(mask_BxN)


def dr_grpo_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    return maths.group_normalised(scores_B, cfg.samples_per_prompt, scale=False), jnp.zeros_like(mask_BxN)


def reinforce_pp_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_BxN, zero returns): KL-shaped rewards, discounted returns, whitened over the batch."""
    return maths.reinforce_pp_advantages(scores_B, kl_BxN, mask_BxN, kl_coef, cfg.gamma), jnp.zeros_like(mask_BxN)


LOSS_TERMS = {"grpo": maths.grpo_loss_terms, "gspo": maths.gspo_loss_terms,
              "gspo_token": functools.partial(maths.gspo_loss_terms, token_level=True),
              "cispo": maths.cispo_loss_terms}


def grpo_loss(logp_BxN, entropy_BxN, old_logp_BxN, ref_logp_BxN, advantages_B, mask_BxN, clip_ratio: float,
              kl_coef: float, entropy_coef: float, aggregation: str, clip_high: float | None = None,
              terms: str = "grpo"):
    """L = aggregate(per-token terms + beta k3) - entropy_coef H (to minimise); returns (L, metrics). ``terms``
    names the per-token loss (``LOSS_TERMS``: GRPO's clipped surrogate, GSPO's sequence ratio, CISPO's
    clipped weight)."""
    terms_BxN = LOSS_TERMS[terms](logp_BxN, old_logp_BxN, ref_logp_BxN, advantages_B, mask_BxN, clip_ratio, kl_coef,
                                  clip_high)
    entropy = maths.masked_mean(entropy_BxN, mask_BxN)
    loss = maths.aggregate(terms_BxN, mask_BxN, aggregation) - entropy_coef * entropy
    return loss, {"loss": loss, "policy_loss": loss,
                  **maths.ratio_diagnostics(logp_BxN, old_logp_BxN, advantages_B[:, None], mask_BxN, clip_ratio,
                                            clip_high)}


def _grpo_minibatch_loss(aggregation: str | None, terms: str = "grpo"):
    def minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
        return grpo_loss(out.logp_BxN, out.entropy_BxN, batch.old_logp_BxN, batch.ref_logp_BxN, batch.advantages,
                         batch.mask_BxN, cfg.clip_ratio, cfg.kl_coef, cfg.entropy_coef,
                         aggregation or cfg.loss_aggregation, cfg.clip_ratio_high, terms)

    return minibatch_loss


def _ppo_minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
    return ppo_loss(out.logp_BxN, out.entropy_BxN, out.values_BxN, batch.old_logp_BxN, batch.old_values_BxN,
                    batch.advantages, batch.returns_BxN, batch.mask_BxN, cfg.clip_ratio, cfg.clip_value,
                    cfg.value_coef, cfg.entropy_coef, cfg.clip_ratio_high)


def _reinforce_pp_minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
    """PPO's clipped surrogate on the per-token advantages, no critic, minus the entropy bonus."""
    pg_loss, metrics = maths.policy_loss(out.logp_BxN, batch.old_logp_BxN, batch.advantages, batch.mask_BxN,
                                         cfg.clip_ratio, cfg.clip_ratio_high)
    loss = pg_loss - cfg.entropy_coef * maths.masked_mean(out.entropy_BxN, batch.mask_BxN)
    return loss, {"loss": loss, "policy_loss": pg_loss, **metrics}


def _reinforce_minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
    return reinforce_loss(out.logp_BxN, out.entropy_BxN, batch.old_logp_BxN, batch.advantages, batch.mask_BxN,
                          cfg.clip_ratio, cfg.entropy_coef)


def _reinforce_check(cfg) -> tuple[str, str] | None:
    if cfg.rollout_rows < 2:
        return "rl.rollout_prompts", "REINFORCE's leave-one-out baseline needs at least 2 samples per rollout"
    if cfg.epochs != 1:
        return "rl.epochs", f"REINFORCE is on-policy: one pass over each rollout (epochs=1), got {cfg.epochs}"
    return _not_grouped("REINFORCE", cfg) or _unclipped("REINFORCE", cfg)


def _not_grouped(name: str, cfg) -> tuple[str, str] | None:
    if cfg.dynamic_sampling:
        return "rl.dynamic_sampling", f"{name} has no groups of k samples to drop: dynamic sampling is for RLOO / GRPO"
    return None


def _unclipped(name: str, cfg) -> tuple[str, str] | None:
    if cfg.clip_ratio_high is not None:
        return "rl.clip_ratio_high", f"{name}'s loss has no clipped ratio: set rl.clip_ratio_high=None"
    return None


def _group_check(name: str, on_policy: bool, clipped: bool = True):
    def check(cfg) -> tuple[str, str] | None:
        if cfg.samples_per_prompt < 2:
            return (
                "rl.samples_per_prompt",
                f"{name} compares k >= 2 samples of each prompt, got {cfg.samples_per_prompt}",
            )
        if on_policy and cfg.epochs != 1:
            return "rl.epochs", f"{name} is on-policy: one pass over each rollout (epochs=1), got {cfg.epochs}"
        if not on_policy and cfg.kl_target is not None:
            return "rl.kl_target", f"{name}'s KL term in the loss has the fixed rl.kl_coef: set rl.kl_target=None"
        return None if clipped else _unclipped(name, cfg)

    return check


def _ungrouped_check(name: str):
    return lambda cfg: _not_grouped(name, cfg)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef) -> (advantages, returns_BxN);
    loss(cfg, PolicyOutputs, Minibatch) -> (loss, metrics), the metrics holding at least 'loss' and
    'ratio' (pi / pi_old, logged as first_ratio); check(cfg) -> None, or (field, why) when the config
    does not suit the algorithm."""

    name: str
    title: str  # how reports name it
    advantages: Callable
    loss: Callable
    uses_critic: bool
    check: Callable = lambda cfg: None
    aggregation: str | None = "token_mean"  # how its loss averages tokens (maths.aggregate); None: rl.loss_aggregation


def _grpo_family(name: str, title: str, aggregation: str | None, terms: str = "grpo",
                 advantages: Callable = grpo_advantages) -> Algorithm:
    """A group-baseline algorithm whose loss is ``grpo_loss`` with per-token ``terms``, averaged as
    ``aggregation`` says (None: as rl.loss_aggregation says)."""
    return Algorithm(name, title, advantages, _grpo_minibatch_loss(aggregation, terms), uses_critic=False,
                     check=_group_check(title, on_policy=False), aggregation=aggregation)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", "PPO", ppo_advantages, _ppo_minibatch_loss, uses_critic=True,
                     check=_ungrouped_check("PPO")),
    "reinforce": Algorithm("reinforce", "REINFORCE (baseline: the rollout's other prompts)", reinforce_advantages,
                           _reinforce_minibatch_loss, uses_critic=False, check=_reinforce_check),
    "rloo": Algorithm("rloo", "RLOO", rloo_advantages, _reinforce_minibatch_loss, uses_critic=False,
                      check=_group_check("RLOO", on_policy=True, clipped=False)),
    "grpo": _grpo_family("grpo", "GRPO", None),
    "dr_grpo": _grpo_family("dr_grpo", "Dr. GRPO", "constant", advantages=dr_grpo_advantages),
    "dapo": _grpo_family("dapo", "DAPO", "token_mean"),
    "gspo": _grpo_family("gspo", "GSPO", "sequence_mean", "gspo"),
    "gspo_token": _grpo_family("gspo_token", "GSPO-token", "sequence_mean", "gspo_token"),
    "cispo": _grpo_family("cispo", "CISPO", "token_mean", "cispo"),
    "reinforce_pp": Algorithm("reinforce_pp", "REINFORCE++", reinforce_pp_advantages, _reinforce_pp_minibatch_loss,
                              uses_critic=False, check=_ungrouped_check("REINFORCE++")),
}
