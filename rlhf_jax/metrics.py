"""What a run reports: metrics to ``<workdir>/metrics.jsonl`` (one JSON object per line: step, split,
names), to TensorBoard event files (tensorboardX: no TensorFlow) and, when ``RLHF_JAX_WANDB`` is set, to
Weights & Biases (the ``wandb`` package, in the test extra); its progress lines to stderr.

``RLHF_JAX_WANDB``: 'online', 'offline' (the run is written under ``<workdir>/wandb/`` for ``wandb sync``),
or 'auto' (online when W&B's server answers, else offline). Each stage's workdir is one W&B run: its name the
workdir's, its group the experiment's workdir, its id a hash of the workdir's path (a resumed stage goes on
in the same run), ``WANDB_PROJECT`` its project (default rlhf_jax); the stage's config.json is its config and
is attached, as is the report."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys

from rlhf_jax.files import write_atomic

TIMING = ("seconds_per_step", "seconds_per_iteration")  # the only fields that differ between two equal runs
WANDB = "RLHF_JAX_WANDB"


def wandb_mode() -> str | None:
    """'online' or 'offline' as ``RLHF_JAX_WANDB`` asks ('auto': online when W&B's server answers), None when
    it is not set."""
    asked = os.environ.get(WANDB, "").strip().lower()
    if asked in ("", "0", "off"):
        return None
    if asked not in ("online", "offline", "auto"):
        raise ValueError(f"{WANDB}={asked!r}: use 'online', 'offline' or 'auto'")
    if asked != "auto":
        return asked
    import socket

    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=3).close()
        return "online"
    except OSError:
        return "offline"


class WandbRun:
    """One stage's W&B run (``wandb_mode``'s mode), fed the rows MetricsWriter writes."""

    def __init__(self, workdir: str, mode: str):
        try:
            import wandb
        except ImportError:
            raise ValueError(f"{WANDB} is set but wandb is not installed: pip install wandb (the test extra has "
                             "it)") from None
        import hashlib

        path = os.path.abspath(workdir)
        self.workdir = workdir
        self.run = wandb.init(dir=workdir, project=os.environ.get("WANDB_PROJECT", "rlhf_jax"), mode=mode,
                              name=os.path.basename(path), group=os.path.basename(os.path.dirname(path)),
                              id=hashlib.sha256(path.encode()).hexdigest()[:16], resume="allow",
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("*", step_metric="step")

    def log(self, row: dict) -> None:
        self.run.log({"step": row["step"], **{f"{row['split']}/{k}": v for k, v in row.items()
                                              if k not in ("step", "split") and math.isfinite(v)}})

    def attach(self, path: str) -> None:
        self.run.save(os.path.abspath(path), base_path=os.path.dirname(os.path.abspath(path)), policy="now")

    def finish(self) -> None:
        config = os.path.join(self.workdir, "config.json")
        if os.path.exists(config):
            with open(config) as f:
                self.run.config.update(json.load(f), allow_val_change=True)
            self.attach(config)
        self.run.finish()


def _identity(row: dict) -> str:
    """A row without its timing: what a rerun of the same step writes again."""
    return json.dumps({k: v for k, v in row.items() if k not in TIMING}, sort_keys=True)


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
    (every process computes the same global metrics); the others' writers do nothing.

    A row already in the file (equal but for its timing) is not written again: a stage rerun after a kill
    (an evaluation done, its completion not yet marked) leaves the file as one uninterrupted run writes it.
    A line is appended whole or not at all: a failed write (a full disk) is cut off and raises OSError
    naming the file."""

    def __init__(self, workdir: str, resume_step: int | None = None):
        from rlhf_jax.distributed import is_main_process

        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = self.wandb = None
        if not is_main_process():
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        self.written = {_identity(row) for row in read_metrics(workdir)}
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
        mode = wandb_mode()
        self.wandb = WandbRun(workdir, mode) if mode else None

    def write(self, step: int, split: str, metrics: dict) -> None:
        if self.tensorboard is None:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        if _identity(row) in self.written:
            return
        self.written.add(_identity(row))
        line = (json.dumps(row) + "\n").encode()
        with open(self.path, "ab", buffering=0) as f:
            end = f.tell()
            try:
                if f.write(line) != len(line):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as error:
                f.truncate(end)
                raise OSError(error.errno, f"{self.path}: cannot append a metrics row ({error.strerror}); "
                                           "the rows before it and the checkpoints are untouched") from error
        for name, value in row.items():
            if name not in ("step", "split") and math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(row)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None


def attach(workdir: str, path: str) -> None:
    """Keep a file (a report) with ``workdir``'s W&B run when ``RLHF_JAX_WANDB`` asks for one (process 0);
    else nothing."""
    from rlhf_jax.distributed import is_main_process

    mode = wandb_mode()
    if mode and is_main_process():
        run = WandbRun(workdir, mode)
        run.attach(path)
        run.finish()


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def log_to_stderr() -> None:
    """The package's progress lines (each stage as it starts, resumes, damaged checkpoints) on stderr."""
    package = logging.getLogger("rlhf_jax")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("rlhf-jax %(asctime)s %(message)s", "%H:%M:%S"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False  # once, even where something configured the root logger
