"""PNG plots of a run's metrics.jsonl: training loss and every validation metric against step."""

from __future__ import annotations

import os

from rlhf_jax.metrics import read_metrics

CURVES = ("loss", "accuracy", "perplexity", "f1")


def plot_training(workdir: str, filename: str = "training.png") -> str | None:
    """One panel per metric (train and validation curves); returns the PNG path, None if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
