"""One optimizer step over PPO's trainable weights: rlhf_jax's clip + Adam beside torch's, same run.

The bench_ppo workload trains a SmolLM2-135M policy and a separate SmolLM2 value trunk: 269M float32
parameters, and 16 optimizer steps per PPO iteration. Ours is the optimizer PPO builds
(``rlhf_jax.rl.make_optimizer``: global-norm clipping, then Adam), jitted with the parameters and
moments donated; the peer is ``torch.nn.utils.clip_grad_norm_`` then ``torch.optim.AdamW`` with no
weight decay, trl's optimizer (its default implementation, and ``fused=True``) in the peers' venv. Both update
the same shapes (read from the asset's config.json) with fixed gradients; the figure is the median
seconds of --steps steps after one warm-up. A step reads the gradient twice (norm, update) and reads and
writes parameter and both moments: at least 8 float32 arrays per parameter cross memory, so the printed
GB/s (8 x 4 B x parameters / seconds) is a lower bound on the memory traffic achieved, to set beside
the machine's memory rate. Ours and the peer alternate for --passes rounds. Prints one JSON line.

    python experiments/bench_optimizer.py [--passes 3] [--steps 5] [--fused] [--model smollm2-135m-instruct]
        [--peer-python /tmp/venv_peers/bin/python] [--no-peer]
"""

import argparse
import json
import math
import os
import statistics
import sys
import time


def trunk_shapes(config: dict) -> list[tuple[int, ...]]:
    """Parameter shapes of one llama-family trunk with its embedding (transformers' config.json fields)."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * (d // config["num_attention_heads"])
    layer = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d), (d,), (d,)]
    return [(config["vocab_size"], d)] + layer * layers + [(d,)]


def ppo_shapes(config: dict) -> list[tuple[int, ...]]:
    """The policy trunk and the value trunk with its scalar head."""
    return trunk_shapes(config) + trunk_shapes(config) + [(config["hidden_size"], 1)]


def median_step_seconds(step, steps: int) -> float:
    step()  # warm-up (ours: compilation)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def ours(shapes, steps: int, fused: bool) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    from rlhf_jax.config import RLConfig
    from rlhf_jax.rl.online import make_optimizer

    tx = make_optimizer(RLConfig(fused_optimizer=fused))
    keys = jax.random.split(jax.random.key(0), len(shapes))
    params = {str(i): 0.02 * jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}
    grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p), params)
    opt_state = tx.init(params)

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))
    state = [params, opt_state]

    def step():
        state[0], state[1] = update(state[0], state[1], grads)
        jax.block_until_ready(state)

    return median_step_seconds(step, steps)


def torch_peer(shapes, steps: int, fused: bool) -> float:
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(0.02 * torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = 1e-3 * torch.sign(p.detach())
    optimizer = torch.optim.AdamW(params, lr=1e-5, eps=1e-5, weight_decay=0.0, fused=fused or None)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return median_step_seconds(step, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="asset name or Hugging Face directory")
    parser.add_argument("--peer-python", default="/tmp/venv_peers/bin/python")
    parser.add_argument("--fused", action="store_true", help="ours with rl.fused_optimizer (rlhf_jax/optim.py)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--as-peer", choices=["default", "fused"], help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_peer:  # run by the peers' python: torch only, shapes from the config given
        with open(args.config_json) as f:
            seconds = torch_peer(ppo_shapes(json.load(f)), args.steps, fused=args.as_peer == "fused")
        import torch

        print(json.dumps({"value": seconds, "versions": {"torch": torch.__version__}}))
        return

    from bench_lib import alternate, emit, model_dir, run_peer, summary

    config_json = os.path.join(model_dir(args.model), "config.json")
    with open(config_json) as f:
        shapes = ppo_shapes(json.load(f))
    parameters = sum(math.prod(shape) for shape in shapes)
    here = os.path.abspath(__file__)
    peer_runs = {}

    def peer(kind):
        def run():
            result = run_peer(args.peer_python, here, ["--as-peer", kind, "--config-json", config_json,
                                                       "--steps", str(args.steps)])
            peer_runs.setdefault(kind, []).append(result)
            return result.get("value")
        return None if args.no_peer else run

    ours_seconds = []

    def ours_run():
        ours_seconds.append(ours(shapes, args.steps, args.fused))
        return ours_seconds[-1]

    rounds = alternate(args.passes, ours_run, peer("default"), lower_is_better=True)
    fused_peer = None if args.no_peer else peer("fused")()  # once, after the passes
    ours_median = statistics.median(ours_seconds)
    failures = {kind: runs[0] for kind, runs in peer_runs.items() if "value" not in runs[0]}
    emit(
        {
            "workload": "optimizer_step",
            "metric": "seconds_per_adamw_step (ratio: peer / ours)",
            "config": {
                "model": args.model,
                "trees": "policy trunk + value trunk with scalar head",
                "fused": args.fused,
                "parameters_millions": round(parameters / 1e6, 1),
                "dtype": "float32",
                "steps": args.steps,
                "peer": "torch clip_grad_norm_ + torch.optim.AdamW, no weight decay (default implementation; "
                        "then fused=True)",
            },
            **summary(rounds),
            "peer_fused_seconds": fused_peer and round(fused_peer, 3),
            "ratio_vs_peer_fused": fused_peer and round(fused_peer / ours_median, 3),
            "peer_failures": failures or None,
            "rlhf_jax_gb_per_s_lower_bound": round(8 * 4 * parameters / ours_median / 1e9, 1),
            "versions": next((r["versions"] for runs in peer_runs.values() for r in runs if "versions" in r), {}),
        }
    )


if __name__ == "__main__":
    sys.exit(main())
