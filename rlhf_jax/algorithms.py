"""Policy-gradient algorithms as a registry: each is a pure advantage estimator, a pure loss and whether
it trains a critic. ``ppo.update`` looks the configured one up; adding an algorithm is one entry here
(plus its maths in ``rl.py``), with no edit to the update or the trainer.

Shapes: B sequences, N response tokens; ``mask_BxN`` is 1 on real response tokens.

* ``ppo`` (Schulman et al. 2017; Ziegler et al. 2019): per-token rewards -beta kl_t plus the score at
  the last token (optionally whitened), GAE advantages, whitened over the batch; the loss

      L = L_clip(rho, A) + c_v L_V(V, V_old, R) - c_H H,

  with the clipped surrogate and clipped value loss of ``rl.policy_loss`` / ``rl.value_loss``.
* ``reinforce``: one advantage per sequence, the KL-regularised return minus a leave-one-out baseline
  over the rollout (``rl.reinforce_advantages``), and the score-function loss
  ``rl.reinforce_surrogate`` - c_H H; no critic. The ratio diagnostics of PPO are logged beside it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax import rl


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


@struct.dataclass
class PolicyOutputs:
    """What the current parameters say about a minibatch's response tokens."""

    logp_BxN: jax.Array
    entropy_BxN: jax.Array
    values_BxN: jax.Array


def ppo_loss(logp_BxN, entropy_BxN, values_BxN, old_logp_BxN, old_values_BxN, advantages_BxN, returns_BxN, mask_BxN,
             clip_ratio: float, clip_value: float, value_coef: float, entropy_coef: float):
    """L = L_clip + value_coef L_V - entropy_coef H (to minimise); returns (L, metrics)."""
    entropy = rl.masked_mean(entropy_BxN, mask_BxN)
    pg_loss, pg_metrics = rl.policy_loss(logp_BxN, old_logp_BxN, advantages_BxN, mask_BxN, clip_ratio)
    vf_loss, vf_metrics = rl.value_loss(values_BxN, old_values_BxN, returns_BxN, mask_BxN, clip_value)
    loss = pg_loss + value_coef * vf_loss - entropy_coef * entropy
    return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss, **pg_metrics, **vf_metrics}


def reinforce_loss(logp_BxN, entropy_BxN, old_logp_BxN, advantages_B, mask_BxN, clip_ratio: float,
                   entropy_coef: float):
    """L = -(1/B) sum_b A_b sum_t m_bt log pi(y_bt) - entropy_coef H (to minimise); returns (L, metrics),
    with PPO's ratio diagnostics (approx_kl, clip_fraction, ratio) for comparison: on-policy they stay
    at 0, 0 and 1."""
    entropy = rl.masked_mean(entropy_BxN, mask_BxN)
    ratio_metrics = rl.ratio_diagnostics(logp_BxN, old_logp_BxN, advantages_B[:, None], mask_BxN, clip_ratio)
    pg_loss = rl.reinforce_surrogate(logp_BxN, advantages_B, mask_BxN)
    loss = pg_loss - entropy_coef * entropy
    return loss, {"loss": loss, "policy_loss": pg_loss, **ratio_metrics}


def ppo_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_BxN, returns_BxN): GAE on the KL-shaped rewards, advantages whitened."""
    rewards_BxN = rl.shaped_rewards(scores_B, kl_BxN, mask_BxN, kl_coef)
    if cfg.whiten_rewards:
        rewards_BxN = rl.masked_whiten(rewards_BxN, mask_BxN, shift_mean=False)
    advantages_BxN, returns_BxN = rl.gae(rewards_BxN, values_BxN, mask_BxN, cfg.gamma, cfg.lam)
    return rl.masked_whiten(advantages_BxN, mask_BxN), returns_BxN


def reinforce_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
    """(advantages_B, zero returns): leave-one-out baseline on the KL-regularised return."""
    return rl.reinforce_advantages(scores_B, kl_BxN, mask_BxN, kl_coef), jnp.zeros_like(mask_BxN)


def _ppo_minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
    return ppo_loss(out.logp_BxN, out.entropy_BxN, out.values_BxN, batch.old_logp_BxN, batch.old_values_BxN,
                    batch.advantages, batch.returns_BxN, batch.mask_BxN, cfg.clip_ratio, cfg.clip_value,
                    cfg.value_coef, cfg.entropy_coef)


def _reinforce_minibatch_loss(cfg, out: PolicyOutputs, batch: Minibatch):
    return reinforce_loss(out.logp_BxN, out.entropy_BxN, batch.old_logp_BxN, batch.advantages, batch.mask_BxN,
                          cfg.clip_ratio, cfg.entropy_coef)


def _reinforce_check(cfg) -> tuple[str, str] | None:
    if cfg.rollout_prompts < 2:
        return "ppo.rollout_prompts", "REINFORCE's leave-one-out baseline needs at least 2 samples per rollout"
    if cfg.epochs != 1:
        return "ppo.epochs", f"REINFORCE is on-policy: one pass over each rollout (epochs=1), got {cfg.epochs}"
    return None


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


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("ppo", "PPO", ppo_advantages, _ppo_minibatch_loss, uses_critic=True),
    "reinforce": Algorithm("reinforce", "REINFORCE (leave-one-out baseline)", reinforce_advantages,
                           _reinforce_minibatch_loss, uses_critic=False, check=_reinforce_check),
}
