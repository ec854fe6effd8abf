"""Metrics to ``<workdir>/metrics.jsonl`` (one JSON object per line: step, split, names) and to
TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import math
import os

from rlhf_jax.files import write_atomic


def truncate_after(path: str, step: int) -> None:
    """Drop the JSONL lines whose "step" is after the checkpoint a run resumes from (they will be
    written again), atomically."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    write_atomic(path, "".join(kept))


class MetricsWriter:
    def __init__(self, workdir: str, resume_step: int | None = None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for name, value in row.items():
            if name not in ("step", "split") and math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
