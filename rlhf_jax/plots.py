"""Every PNG plot of the project: a supervised run's curves, PPO's scores against iteration and KL, a
reward model's calibration, feedback rounds side by side, a comparison's frontier. Matplotlib draws off-screen (Agg)."""

from __future__ import annotations

import os

from rlhf_jax.metrics import read_metrics

CURVES = ("loss", "accuracy", "perplexity", "f1")


def pyplot():
    """matplotlib.pyplot on the off-screen Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(workdir: str, filename: str = "training.png") -> str | None:
    """One panel per metric (train and validation curves); returns the PNG path, None if nothing to plot."""
    plt = pyplot()

    rows = read_metrics(workdir)
    names = [n for n in CURVES if any(n in r for r in rows)]
    if not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for axis, name in zip(axes[0], names):
        for split, style in (("train", "-"), ("validation", "o-"), ("test", "s")):
            points = [(r["step"], r[name]) for r in rows if r["split"] == split and name in r]
            if points:
                axis.plot(*zip(*points), style, label=split, markersize=4)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if "perplexity" in names:
        axes[0][names.index("perplexity")].set_yscale("log")
    figure.tight_layout()
    path = os.path.join(workdir, filename)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_policy_training(workdir: str, filename: str = "training.png") -> str | None:
    """Gold and reward-model scores against iteration and against KL (over-optimisation shows as the
    two curves parting), the KL coefficient, and (where logged) the sampler / trainer log-prob mismatch."""
    plt = pyplot()

    rows = [r for r in read_metrics(workdir) if r["split"] == "train" and "gold_score" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    mismatch = "mismatch_max_abs_logp" in rows[0]
    figure, axes = plt.subplots(1, 3 + mismatch, figsize=(13 + 4 * mismatch, 3.4))
    axes[0].plot(steps, [r["score"] for r in rows], label="reward model (normalised)")
    axes[0].plot(steps, [r["gold_score"] for r in rows], label="gold")
    axes[0].set_xlabel("iteration")
    axes[1].plot([r["kl"] for r in rows], [r["score"] for r in rows], "o", markersize=4, label="reward model")
    axes[1].plot([r["kl"] for r in rows], [r["gold_score"] for r in rows], "s", markersize=4, label="gold")
    axes[1].set_xlabel("KL(policy || reference), nats per sequence")
    axes[2].plot(steps, [r["kl"] for r in rows], label="KL")
    axes[2].plot(steps, [r["kl_coef"] * 100 for r in rows], label="beta x 100")
    axes[2].set_xlabel("iteration")
    if mismatch:  # the sampler's (KV-cache decode) log-probs against the trainer's (one full forward)
        for name, label in (("mismatch_max_abs_logp", "max |delta log p|"), ("mismatch_mean_abs_logp",
                                                                              "mean |delta log p|"),
                            ("mismatch_k3", "k3")):
            axes[3].semilogy(steps, [max(r[name], 1e-12) for r in rows], label=label)
        axes[3].set_xlabel("iteration")
    titles = ("score against iteration", "score against KL", "KL and its coefficient", "sampler / trainer mismatch")
    for axis, title in zip(axes, titles):
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = os.path.join(workdir, filename)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_calibration(table: list[dict], path: str) -> str:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect")
    axis.plot([r["predicted"] for r in table], [r["observed"] for r in table], "o-", label="reward model")
    for row in table:
        axis.annotate(str(row["count"]), (row["predicted"], row["observed"]), fontsize=6, xytext=(3, -8),
                      textcoords="offset points")
    axis.set_xlabel("predicted P(A preferred)")
    axis.set_ylabel("observed rate")
    axis.set_title("reward model calibration")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_rounds(history: list[dict], path: str) -> str:
    """Per round: the policy's gold score against its reference's, the win rate over it, the reward
    model's held-out gold accuracy, and the KL to the round's reference."""
    plt = pyplot()
    rounds = [h["round"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(rounds, [h["gold_score"] for h in history], "o-", label="policy after the round")
    axes[0].plot(rounds, [h["reference_gold_score"] for h in history], "s--", label="policy before the round")
    axes[0].set_title("gold score (held-out prompts)")
    axes[1].plot(rounds, [h["gold_win_rate"] for h in history], "o-", label="gold win rate over the round's start")
    axes[1].plot(rounds, [h["rm_gold_accuracy"] if h["rm_gold_accuracy"] is not None else float("nan")
                          for h in history], "s-", label="reward model gold accuracy")
    axes[1].set_title("win rate and reward-model accuracy")
    axes[2].plot(rounds, [h["kl"] for h in history], "o-", label="KL to the round's start")
    axes[2].set_title("KL, nats per sequence")
    for axis in axes:
        axis.set_xlabel("round")
        axis.set_xticks(rounds)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_frontier(results: dict[str, list[dict]], arms: dict, path: str) -> str:
    """Gold and proxy (reward-model) score gained over the reference against sqrt(KL): each arm's points
    (small: online training iterations; large: evaluations, best-of-n's n) and its fitted Gao et al. curve."""
    import numpy as np

    from rlhf_jax.frontier import curve

    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, runs) in enumerate(results.items()):
        colour = colours[index % len(colours)]
        d = np.linspace(0.0, max(np.sqrt(max(p["kl"], 0.0)) for r in runs for p in r["frontier"]), 100)  # its own range
        for axis, score in zip(axes, ("gold", "proxy")):
            for source, size, alpha in (("train", 8, 0.25), ("evaluation", 40, 1.0), ("best_of_n", 40, 1.0)):
                points = [p for r in runs for p in r["frontier"] if p["source"] == source]
                if points:
                    axis.scatter([np.sqrt(max(p["kl"], 0.0)) for p in points], [p[f"{score}_gain"] for p in points],
                                 s=size, alpha=alpha, color=colour, label=name if source != "train" else None)
            fit = arms[name].get("fit", {}).get(score)
            if fit:
                axis.plot(d, curve(fit["form"], fit["alpha"], fit["beta"], d), color=colour, linewidth=1.5)
    for axis, score in zip(axes, ("gold", "proxy (reward model)")):
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xlabel("sqrt(KL(policy || reference)), sqrt-nats per sequence")
        axis.set_ylabel(f"{score} score gained over the reference")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("gold (small dots: online training iterations)")
    axes[1].set_title("proxy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
