"""What the side-by-side benches share: where their models come from, step timing, the machine's GEMM
ceiling measured in the same run, the FLOPs of a compiled step by XLA's own count, running a peer script,
and alternating passes of ours and the peer's so that one noisy minute cannot decide a ratio.

Model FLOPs utilisation (MFU) here = (XLA's FLOP count of one compiled step / the step's seconds) / the
float32 GEMM rate that jax reaches on this machine at 2048^3 in the same run: the fraction of the
machine's best dense matrix rate that the whole step achieves.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.allocator import keep_freed_memory

keep_freed_memory()  # as the CLI does: freed buffers stay mapped for the next step (rlhf_jax/allocator.py)

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("RLHF_JAX_PEERS", os.path.join(HERE, "..", "..", "shared", "peers"))


def model_dir(name_or_path: str) -> str:
    """An asset's name (fetched and verified into the cache) or a local Hugging Face directory."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from rlhf_jax.models.pretrained import resolve_source

    return resolve_source(name_or_path)


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 n x n x n matrix products per second through jax, in GFLOP/s (median of ``repeats``)."""
    a, b = (jax.random.normal(key, (n, n), jnp.float32) for key in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds) / 1e9


def compiled_flops(jitted, *args) -> float:
    """FLOPs of one call of a jitted function on these arguments, as XLA counts them after compilation."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


def time_steps(step, state, batches, skip: int):
    """Run ``state, metrics = step(state, batch)`` over ``batches``; per-step seconds after the first ``skip``."""
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return state, seconds[skip:]


def run_peer(python: str, script: str, args: list[str], timeout: float = 1800) -> dict:
    """The peer script's last JSON line, or {'skipped' | 'failed': why}."""
    if not (os.path.exists(python) and os.path.exists(script)):
        return {"skipped": f"no peer: {python} or {script} is missing (../shared/peers/setup.sh makes them)"}
    result = subprocess.run([python, script, *args], capture_output=True, text=True, cwd=os.path.dirname(script),
                            timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"failed": (result.stderr or result.stdout)[-1500:]}
    return json.loads(lines[-1])


def alternate(passes: int, ours, peer, lower_is_better: bool = False) -> list[dict]:
    """``passes`` rounds of ours() then peer(), each a number or None; per pass both figures and how many
    times better ours is (ours / peer, or peer / ours where lower is better, e.g. seconds)."""
    rounds = []
    for _ in range(passes):
        mine = ours()
        theirs = peer() if peer is not None else None
        ratio = round((theirs / mine) if lower_is_better else (mine / theirs), 3) if theirs else None
        rounds.append({"rlhf_jax": round(mine, 3), "peer": None if theirs is None else round(theirs, 3),
                       "ratio": ratio})
    return rounds


def summary(rounds: list[dict]) -> dict:
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {"passes": rounds, "median_ratio": round(statistics.median(ratios), 3) if ratios else None,
            "ours_faster_every_pass": bool(ratios) and len(ratios) == len(rounds) and min(ratios) > 1}


def environment() -> dict:
    device = jax.devices()[0]
    return {"versions": {"jax": jax.__version__, "numpy": np.__version__},
            "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                        "device": getattr(device, "device_kind", device.platform), "backend": jax.default_backend()},
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def emit(result: dict) -> None:
    """Print the result as one JSON line with the environment; ``result['versions']`` (a peer's) joins jax's."""
    env = environment()
    env["versions"].update(result.get("versions", {}))
    print(json.dumps({**result, **env}), flush=True)


def compiled_train_step(source: str, head: str, task: str, learning_rate: float, steps: int):
    """(tokenizer, train state, jitted train step) for one model and task, exactly as a supervised run builds
    them (``rlhf_jax.steps``), on a one-device mesh; float32."""
    from flax import nnx

    from rlhf_jax import sharding
    from rlhf_jax.config import experiment_from_dict
    from rlhf_jax.models import from_pretrained, load_tokenizer
    from rlhf_jax.steps import jit_steps, make_optimizer, train_state_shardings
    from rlhf_jax.tasks import TASKS
    from rlhf_jax.train_state import TrainState

    exp = experiment_from_dict({"model": {"source": source, "head": head},
                                "train": {"task": task, "learning_rate": learning_rate, "steps": steps,
                                          "warmup_steps": 0},
                                "mesh": {"shape": {"data": 1, "fsdp": 1, "tensor": 1}}})
    layout = sharding.Layout.of(exp.mesh)
    model, tokenizer = from_pretrained(source, head=head, dtype="float32"), load_tokenizer(source)
    tx = make_optimizer(exp.train)
    graphdef, params = nnx.split(model)
    state = TrainState.create(params, tx, exp.train.seed)
    state_sharding = train_state_shardings(state, tx, layout)
    loss_fn = TASKS[task].make_loss(tokenizer, model.config.vocab_size, exp.train)
    train_step, _ = jit_steps(graphdef, tx, loss_fn, state_sharding, layout)
    return tokenizer, jax.device_put(state, state_sharding), train_step


def side_by_side_steps(train_step, state, batches, skip: int, passes: int, units_per_step: int, peer) -> dict:
    """Our jitted train step over ``batches`` (figure: ``units_per_step`` / the median step seconds) against
    ``peer()`` (a peer script's JSON, its figure under 'value'; None: no peer) in alternating passes. Returns
    the fields every training bench prints: the passes and ratios, our step seconds, XLA's GFLOP per step, the
    GEMM ceiling measured now, our MFU against it, and the peer's first run."""
    flops = compiled_flops(train_step, state, batches[0])
    step_seconds, peer_runs = [], []

    def ours():
        nonlocal state
        state, seconds = time_steps(train_step, state, batches, skip)
        step_seconds.append(statistics.median(seconds))
        return units_per_step / step_seconds[-1]

    def theirs():
        peer_runs.append(peer())
        return peer_runs[-1].get("value")

    rounds = alternate(passes, ours, theirs if peer is not None else None)
    ceiling = gemm_gflops()
    return {**summary(rounds), "rlhf_jax_step_seconds": [round(s, 4) for s in step_seconds],
            "step_gflop_xla": round(flops / 1e9, 2), "gemm_ceiling_gflops": round(ceiling, 1),
            "rlhf_jax_mfu": round(flops / statistics.median(step_seconds) / 1e9 / ceiling, 3),
            "peer_runs": [{k: v for k, v in run.items() if k != "config"} for run in peer_runs][:1]}
