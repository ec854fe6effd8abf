"""Global-norm clipping + Adam(W), optionally fused into one pass per parameter (``fused_optimizer``).

Every run's optimizer is ``optax.chain(clip_by_global_norm(c), adam or adamw(lr, ...))``. optax clips
with ``select(unclipped, g, (g / ||g||) * c)``: a division per parameter, and the chain makes separate
passes over the parameters: memory traffic, which torch's fused AdamW (whose clip multiplies by a
coefficient) does in one pass (``experiments/bench_optimizer.py [--fused]`` times the three; the figures
are in docs/performance.md). A policy-gradient iteration takes epochs x minibatches such steps. The fused
form here computes each leaf's update as one expression that XLA runs as one loop:

    g <- g * s,   s = 1 if ||g|| < c else c / ||g||
    m <- (1 - b1) g + b1 m              v <- (1 - b2) g^2 + b2 v          t <- t + 1
    u <- -lr_t * ( (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * p  [wd on masked leaves] )

optax's operations in optax's order otherwise, so a step whose gradient is not clipped gives optax's
numbers bit for bit; a clipped one differs at float32 rounding (g * (c / ||g||) is not (g / ||g||) * c).
Off by default, so that no recorded run moves. ``init`` is the optax chain's own: the optimizer state
(its structure, checkpoints and shardings) is optax's either way.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics


def clipped_adam(learning_rate: float | optax.Schedule, *, max_norm: float, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float | None = None, decay_mask: Callable | None = None,
                 fused: bool = False) -> optax.GradientTransformation:
    """``optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(...))``, or ``optax.adamw(...)`` with
    ``weight_decay`` and ``decay_mask``; ``fused``: the same maths in one pass per parameter (see above)."""
    adam = (optax.adam(learning_rate, b1=b1, b2=b2, eps=eps) if weight_decay is None else
            optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask))
    reference = optax.chain(optax.clip_by_global_norm(max_norm), adam)
    if not fused:
        return reference
    is_state = lambda x: isinstance(x, (optax.ScaleByAdamState, optax.ScaleByScheduleState))  # noqa: E731

    def update(grads, state, params=None):
        if weight_decay is not None and params is None:
            raise ValueError("clipped_adam with weight decay needs the parameters")
        substates = jax.tree.leaves(state, is_leaf=is_state)
        moments = next(s for s in substates if isinstance(s, optax.ScaleByAdamState))
        schedule = [s for s in substates if isinstance(s, optax.ScaleByScheduleState)]
        g_norm = optax.tree.norm(grads)
        clip_scale = jnp.where(jnp.squeeze(g_norm < max_norm), 1.0, max_norm / g_norm)
        count = numerics.safe_increment(moments.count)
        correction1, correction2 = 1 - b1**count, 1 - b2**count
        step_size = -1 * learning_rate(schedule[0].count) if schedule else -1 * learning_rate
        decays = (jax.tree.map(lambda _: False, grads) if weight_decay is None else
                  decay_mask(params) if decay_mask is not None else jax.tree.map(lambda _: True, grads))

        def leaf(g, m, v, p, decays_p):
            g = g * clip_scale.astype(g.dtype)
            m = (1 - b1) * (g**1) + b1 * m
            v = (1 - b2) * (g**2) + b2 * v
            u = (m / correction1.astype(m.dtype)) / (jnp.sqrt(v / correction2.astype(v.dtype) + 0.0) + eps)
            if decays_p:
                u = u + weight_decay * p
            u = jnp.array(step_size, dtype=u.dtype) * u if schedule else step_size * u
            return u, m, v

        out = jax.tree.map(leaf, grads, moments.mu, moments.nu, grads if params is None else params, decays)
        pick = lambda i: jax.tree.map(lambda _, t: t[i], grads, out)  # noqa: E731
        new_moments = optax.ScaleByAdamState(count=count, mu=pick(1), nu=pick(2))

        def renew(s):
            if isinstance(s, optax.ScaleByAdamState):
                return new_moments
            if isinstance(s, optax.ScaleByScheduleState):
                return optax.ScaleByScheduleState(count=numerics.safe_increment(s.count))
            return s

        return pick(0), jax.tree.map(renew, state, is_leaf=is_state)

    return optax.GradientTransformation(reference.init, update)
