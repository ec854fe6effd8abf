"""Gold and proxy reward against KL: the functional forms of Gao et al. 2022 ("Scaling laws for reward
model overoptimization"), fitted by least squares, and the interval of a mean over seeds.

With d = sqrt(KL(pi || pi_ref)) in sqrt-nats and R the score gained over the reference (R(0) = 0):

    best-of-n:  R(d) = d (alpha - beta d)
    RL:         R(d) = d (alpha - beta log d)

Both are linear in (alpha, beta): R = alpha * d - beta * g(d) with g = d^2 or d log d (0 at d = 0), so one
least-squares solve gives them. The gold curve's peak, where over-optimisation of the proxy starts to cost
gold reward, is at d* = alpha / (2 beta) (best-of-n) or exp(alpha / beta - 1) (RL), when alpha, beta > 0.
"""

from __future__ import annotations

import math

import numpy as np

FORMS = ("best_of_n", "rl")


def _features(form: str, d: np.ndarray) -> np.ndarray:
    if form == "best_of_n":
        return np.stack([d, -d * d], axis=1)
    if form == "rl":
        return np.stack([d, -np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)], axis=1)
    raise ValueError(f"form {form!r} is not one of {FORMS}")


def fit(form: str, kl: np.ndarray, gain: np.ndarray) -> dict:
    """Least-squares (alpha, beta) of ``form`` to points (KL in nats, score gained over the reference);
    with the fit's R^2 and the sqrt-KL of its peak (None when the fitted curve never turns down)."""
    d = np.sqrt(np.maximum(np.asarray(kl, np.float64), 0.0))
    gain = np.asarray(gain, np.float64)
    if len(d) < 2:
        raise ValueError(f"fitting {form} needs at least 2 points, got {len(d)}")
    (alpha, beta), *_ = np.linalg.lstsq(_features(form, d), gain, rcond=None)
    residual = gain - _features(form, d) @ np.array([alpha, beta])
    total = np.sum((gain - gain.mean()) ** 2)
    peak = None
    if alpha > 0 and beta > 0:  # rises from 0, then turns down
        peak = alpha / (2 * beta) if form == "best_of_n" else math.exp(alpha / beta - 1)
    return {"form": form, "alpha": float(alpha), "beta": float(beta), "points": int(len(d)),
            "max_sqrt_kl": float(d.max()),
            "r2": float(1 - np.sum(residual ** 2) / total) if total > 0 else None,
            "peak_sqrt_kl": None if peak is None else float(peak)}


def curve(form: str, alpha: float, beta: float, d: np.ndarray) -> np.ndarray:
    """R(d) of a fitted form at sqrt-KL values ``d``."""
    return _features(form, np.asarray(d, np.float64)) @ np.array([alpha, beta])


def mean_interval(values, confidence: float = 0.95) -> dict:
    """Mean of per-seed values and the half-width of its Student-t interval (None for one seed):
    t_{(1 + c) / 2, S - 1} * s / sqrt(S), s the sample standard deviation."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return {"mean": float(values.mean()), "half_width": None, "seeds": len(values)}
    from scipy import stats  # here, not at the top: scipy.stats takes a second to import, every run imports this

    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return {"mean": float(values.mean()), "half_width": float(half), "seeds": len(values)}
