"""Where the time of a bench's step goes: a ``jax.profiler`` trace of a few steps, summed by kind of work.

Workloads are the benches' own (same models, shapes and steps): ``reward`` (bench_reward's pairwise MiniLM
step), ``sft`` (bench_sft's SmolLM2 step), ``dpo`` (bench_jax_peers' DPO step: 16 pairs of 40 tokens, the
reference's log-probs given), ``generate`` (bench_generate's sampler, --batch prompts) and ``ppo``
(bench_ppo's whole iteration: rollout, host decode and scoring, update). XLA:CPU records one trace
event per executed HLO op (thunk), tagged with its module; the optimised HLO, dumped with ``--xla_dump_to``,
names the JAX operation each op came from (``op_name``), so each op's time is put under one heading:

- matmul fwd / bwd / no grad: dots (``ynn_fusion`` / ``dot``) of the forward pass, its transpose (the
  backward), or neither (a rollout, sampling);
- other ops fwd / bwd / no grad: every other op (norms, activations, softmax, masks, copies, broadcasts;
  in training, "no grad" is mostly the optimizer update), split further by the JAX primitive that ends
  its op_name;
- matmul: Eigen dots running after their launch: XLA:CPU launches Eigen dots (here, weight gradients:
  a transposed left operand, which YNNPACK does not take) asynchronously, so their trace events end
  at launch; the quiet time that follows one is charged to it;
- idle: the rest of the step's wall time, on which no op ran (dispatch, host work, waits).

Host phases (PPO: rollout, decode + score, update) come from ``jax.profiler.TraceAnnotation``s. Prints a
table and one JSON line; the raw trace (Perfetto JSON, open at ui.perfetto.dev) stays in --out.

``dpo --peer tunix|easydel`` profiles the peer's DPO trainer instead, at bench_jax_peers' DPO shape, in the
peer's own venv (experiments/jax_peers/setup.sh): its process dumps its HLO and traces its steps, and the
same headings sum them. The peer computes its reference's log-probs inside each step; ``dpo
--with-reference`` adds our one reference forward of the batch to each of our steps, the like-for-like work.

    python experiments/profile_step.py reward|sft|dpo|ppo|generate [--steps 3] [--batch 64] [--top 12]
        [--out /tmp/profile_<workload>] [--peer tunix|easydel] [--with-reference]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import time

PHASES = ("rollout", "decode + score", "update")  # bench_ppo's TraceAnnotations
PERFETTO_EVENT_CAP = 1_000_000  # jax's Perfetto trace keeps at most this many events (one PPO iteration: ~0.9M)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=["reward", "sft", "dpo", "ppo", "generate"])
    parser.add_argument("--batch", type=int, default=64, help="generate: prompts per call")
    parser.add_argument("--steps", type=int, default=3, help="traced steps (PPO: iterations), after warm-up")
    parser.add_argument("--out", default=None, help="trace and HLO folder (default /tmp/profile_<workload>)")
    parser.add_argument("--top", type=int, default=12, help="rows of the per-primitive table")
    parser.add_argument("--peer", choices=["tunix", "easydel"], help="dpo: profile this JAX peer's DPO trainer")
    parser.add_argument("--with-reference", action="store_true",
                        help="dpo: each of our steps also runs one reference forward of the batch")
    args = parser.parse_args()
    if (args.peer or args.with_reference) and args.workload != "dpo":
        parser.error("--peer and --with-reference profile the dpo workload only")
    return args


def workload(name: str, batch: int, with_reference: bool = False):
    """() -> None running one step (PPO: iteration; generate: call) of the bench's workload, compiled."""
    import jax

    if name == "generate":
        import bench_generate

        return bench_generate.sampler("smollm2-135m-instruct", batch)
    if name == "ppo":
        import bench_ppo

        iteration, _ = bench_ppo.prepare(bench_ppo.parse_args([]))
        iteration()
        return iteration
    from bench_lib import compiled_train_step, model_dir

    if name == "reward":
        from bench_reward import pair_batches

        tokenizer, state, step = compiled_train_step(model_dir("minilm-l6"), "scalar", "reward_pairwise", 5e-5, 8)
        batches = pair_batches(tokenizer, 8, 16, 64)
    elif name == "dpo":
        import numpy as np
        from bench_jax_peers import dpo_batch

        tokenizer, state, step = compiled_train_step(model_dir("smollm2-135m-instruct"), "causal_lm", "dpo", 5e-5, 8)
        batch, _ = dpo_batch(tokenizer, 16)
        batches = [{**batch, "ref_chosen": np.zeros(16, np.float32), "ref_rejected": np.zeros(16, np.float32)}]
        if with_reference:
            return reference_then(step, state, batches[0])
    else:
        from bench_sft import sft_batches

        tokenizer, state, step = compiled_train_step(model_dir("smollm2-135m-instruct"), "causal_lm", "causal_lm",
                                                     2e-5, 8)
        batches = sft_batches(tokenizer, 8, 8, 128)
    cursor = {"state": state, "i": 0}

    def one_step():
        cursor["state"], metrics = step(cursor["state"], batches[cursor["i"] % len(batches)])
        cursor["i"] += 1
        jax.block_until_ready(metrics)

    one_step()
    return one_step


def reference_then(step, state, batch):
    """() -> None running one reference forward of ``batch`` (a frozen copy of the policy, jitted on its own as
    bench_jax_peers times it) and then one DPO step on it, compiled."""
    import jax
    from bench_jax_peers import reference_forward

    reference = reference_forward("smollm2-135m-instruct")
    cursor = {"state": state}

    def one_step():
        ref_chosen, ref_rejected = reference(batch)
        cursor["state"], metrics = step(cursor["state"], {**batch, "ref_chosen": ref_chosen,
                                                          "ref_rejected": ref_rejected})
        jax.block_until_ready(metrics)

    one_step()
    return one_step


def profile_peer(peer_name: str, steps: int, trace_dir: str, xla_flags: str) -> float:
    """Wall seconds of ``steps`` DPO steps of the peer's trainer at bench_jax_peers' shape, traced into
    ``trace_dir`` by the peer's own process (its HLO dumped by ``xla_flags``), after one warm step."""
    from bench_jax_peers import PEERS, PeerProcess, dpo_batch
    from bench_lib import HERE, model_dir

    from rlhf_jax.models import load_tokenizer

    script, python, _ = PEERS[peer_name]
    source = model_dir("smollm2-135m-instruct")
    peer = PeerProcess(python, os.path.join(HERE, "jax_peers", script), source, "same", xla_flags)
    _, peer_batch = dpo_batch(load_tokenizer(source), 16)
    peer("dpo_trainer", **peer_batch, beta=0.05, learning_rate=5e-5, total_steps=1 + 1 + steps + 1)
    peer("dpo", steps=1)
    seconds = peer("profile", trace_dir=trace_dir, inner={"op": "dpo", "steps": steps})["profiled_seconds"]
    peer.close()
    return seconds


def op_names(hlo_dir: str) -> dict[tuple[str, str], str]:
    """(module name, HLO op) -> the JAX op_name it came from, over every optimised module dumped."""
    names = {}
    for path in glob.glob(os.path.join(hlo_dir, "*after_optimizations.txt")):
        text = open(path).read()
        module = re.search(r"^HloModule (\S+?)[,\s]", text, re.M)
        for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", text, re.M):
            names[(module.group(1) if module else "", m.group(1))] = m.group(2)
    return names


def heading(op: str, op_name: str) -> tuple[str, str]:
    """(kind of work, JAX primitive) of one HLO op."""
    phase = "bwd" if "transpose(" in op_name else "fwd" if "jvp(" in op_name else "no grad"
    kind = "matmul" if op.startswith(("ynn_fusion", "dot")) or op_name.endswith("dot_general") else "other ops"
    primitive = op_name.rsplit("/", 1)[-1] if op_name else re.sub(r"[.\d]+$", "", op)
    return f"{kind} {phase}", primitive


def gaps_after_async_dots(ops: list[tuple[float, float, str]]) -> tuple[float, float]:
    """(union of the ops' [start, end) time, the part of the time between ops that follows the launch of
    an Eigen ``dot``). XLA:CPU runs Eigen dots asynchronously: their event ends at launch and the product
    runs on in the thread pool, so the quiet time after one is that dot's, not idle time."""
    busy = async_dot = 0.0
    end, last_launch = float("-inf"), ""
    for start, stop, name in sorted(ops):
        if start > end:
            gap = start - end if end > float("-inf") else 0.0
            async_dot += gap if last_launch.startswith("dot") else 0.0
            busy, end = busy + stop - start, stop
        elif stop > end:
            busy, end = busy + stop - end, stop
        last_launch = name
    return busy, async_dot


def summarise(trace_dir: str, hlo_dir: str, steps: int, wall_s: float, top: int) -> dict:
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    if len(events) >= PERFETTO_EVENT_CAP:
        print(f"warning: the trace holds {len(events):,} events, the Perfetto export's cap: later ops are missing, "
              "so the headings undercount. Trace fewer --steps.", file=sys.stderr)
    names = op_names(hlo_dir)
    by_heading, by_primitive, by_module, phases = (collections.Counter() for _ in range(4))
    ops = []
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args", {})
        if "hlo_op" in args:
            module, op, us = args.get("hlo_module", ""), args["hlo_op"], e.get("dur", 0.0)
            kind, primitive = heading(op, names.get((module, op), ""))
            by_heading[kind] += us
            by_primitive[(kind, primitive)] += us
            by_module[module] += us
            ops.append((e["ts"], e["ts"] + us, op))
        elif e["name"] in PHASES:
            phases[e["name"]] += e.get("dur", 0.0)
    per_step_ms = lambda us: round(us / steps / 1e3, 1)  # noqa: E731
    wall_ms = wall_s / steps * 1e3
    busy_us, async_dot_us = gaps_after_async_dots(ops)
    by_heading["matmul: Eigen dots running after their launch"] += async_dot_us
    busy_ms, async_dot_ms = busy_us / steps / 1e3, async_dot_us / steps / 1e3
    op_ms = sum(by_heading.values()) / steps / 1e3
    return {
        "trace_truncated": len(events) >= PERFETTO_EVENT_CAP,
        "wall_ms_per_step": round(wall_ms, 1),
        "op_ms_per_step": round(op_ms, 1),
        "ops_running_ms_per_step": round(busy_ms + async_dot_ms, 1),
        "idle_ms_per_step": round(wall_ms - busy_ms - async_dot_ms, 1),
        "phases_ms_per_step": {k: per_step_ms(v) for k, v in phases.most_common()},
        "modules_ms_per_step": {k: per_step_ms(v) for k, v in by_module.most_common(8)},
        "headings_ms_per_step": {k: per_step_ms(v) for k, v in by_heading.most_common()},
        "top_primitives_ms_per_step": [[k, p, per_step_ms(v)] for (k, p), v in by_primitive.most_common(top)],
    }


def print_table(result: dict) -> None:
    wall, op_ms = result["wall_ms_per_step"], result["op_ms_per_step"]
    print(f"wall {wall} ms/step; ops ran {result['ops_running_ms_per_step']} ms (sum over ops {op_ms} ms: "
          f">wall where two ran at once); idle {result['idle_ms_per_step']} ms. Shares: of the sum over ops "
          "(phases: of wall time)")
    primitives = ((f"{kind} / {primitive}", ms) for kind, primitive, ms in result["top_primitives_ms_per_step"])
    for title, rows in (("phase", result["phases_ms_per_step"].items()),
                        ("module", result["modules_ms_per_step"].items()),
                        ("heading", result["headings_ms_per_step"].items()), ("heading / primitive", primitives)):
        print(f"-- by {title}")
        for name, ms in rows:
            print(f"{ms:9.1f} ms {100 * ms / (wall if title == 'phase' else op_ms):5.1f}%  {name}")


def main():
    args = parse_args()
    out = args.out or f"/tmp/profile_{args.workload}"
    shutil.rmtree(out, ignore_errors=True)
    hlo_dir, trace_dir = os.path.join(out, "hlo"), os.path.join(out, "trace")
    # Before jax starts (ours or the peer's): dump every optimised module as text, to name each op in the trace.
    dump = f"--xla_dump_to={hlo_dir} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + dump).strip()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax

    if args.peer:
        wall = profile_peer(args.peer, args.steps, trace_dir, dump)
    else:
        step = workload(args.workload, args.batch, args.with_reference)
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            wall = time.perf_counter() - start
    result = {"workload": args.workload, "peer": args.peer or "rlhf_jax", "with_reference": args.with_reference,
              "steps": args.steps, "trace": trace_dir,
              **summarise(trace_dir, hlo_dir, args.steps, wall, args.top)}
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
