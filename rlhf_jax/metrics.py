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
    """Appends metric rows to metrics.jsonl and TensorBoard. In a multi-process run only process 0 writes
    (every process computes the same global metrics); the others' writers do nothing."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        from rlhf_jax.distributed import is_main_process

        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = None
        if not is_main_process():
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if self.tensorboard is None:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for name, value in row.items():
            if name not in ("step", "split") and math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
