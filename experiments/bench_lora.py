"""Full fine-tuning against LoRA on the main job's PPO: seconds per iteration and bytes per device, same run.

Both arms are the real SmolLM2-135M-Instruct policy of configs/sentiment_quick.py and configs/sentiment_lora.py
(32 openings of 8 tokens, 24 sampled tokens, 2 epochs x 2 minibatches, value head on the trunk), built by
``policy_training.prepare`` exactly as a run builds them. One iteration = rollout + update on fixed scores
(the reward model is not part of what differs). The arms alternate for --passes rounds; each pass is the
median of --iterations timed iterations after a first (compilation, reported apart); the ratio is full / LoRA.

Bytes on device 0, from the arrays themselves: the parameters (trained and frozen), the optimiser's state,
the separate reference model's parameters (none with LoRA: the policy's base with the adapters off), and
the compiled update's temporaries (the compiler's buffer assignment: activations, gradients). Prints one
JSON line.

    python experiments/bench_lora.py [--passes 3] [--iterations 3] [--rank 16]
"""

import argparse
import statistics
import sys
import time

import jax
import numpy as np
from bench_lib import emit
from rt_prompts import fixed_length_prompts

from rlhf_jax.config import load_config
from rlhf_jax.models import lora
from rlhf_jax.rl import online
from rlhf_jax.runs import policy_training

ONE_DEVICE = "--config.mesh.shape={'data': 1, 'fsdp': 1, 'tensor': 1}"


def device_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays that live on the first device."""
    device = jax.devices()[0]
    return int(sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
                   if shard.device == device))


def arm(config: str, overrides: list[str]):
    """(one iteration () -> seconds, the bytes and parameter counts of this arm)."""
    exp = load_config(config, [ONE_DEVICE, *overrides])
    run = policy_training.prepare(exp, None)
    cfg = exp.rl
    ids = np.asarray(fixed_length_prompts(run.tokenizer, cfg.rollout_rows, cfg.prompt_tokens), np.int32)
    scores = np.random.default_rng(0).normal(size=cfg.rollout_rows).astype(np.float32)
    state = run.state

    def iteration() -> float:
        nonlocal state
        start = time.perf_counter()
        experience = run.functions.rollout(state.params, run.ref_params,
                                           *policy_training.to_mesh((ids, np.ones_like(ids)), run),
                                           online.rollout_key(state.rng))
        state, metrics = run.functions.update(state, experience, policy_training.to_mesh(scores, run))
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    trained, frozen = lora.split(state.params, online.trainable_parameters(cfg))
    experience = jax.eval_shape(run.functions.rollout, state.params, run.ref_params,
                                *policy_training.to_mesh((ids, np.ones_like(ids)), run), online.rollout_key(state.rng))
    update = run.functions.update.lower(state, experience, policy_training.to_mesh(scores, run)).compile()
    figures = {"trained_parameters": lora.parameter_count(trained), "frozen_parameters": lora.parameter_count(frozen),
               "bytes_trained_parameters": device_bytes(trained), "bytes_frozen_parameters": device_bytes(frozen),
               "bytes_optimizer_state": device_bytes(state.opt_state), "bytes_reference": device_bytes(run.ref_params),
               "bytes_update_temporaries": int(update.memory_analysis().temp_size_in_bytes)}
    figures["bytes_total_state"] = sum(figures[k] for k in ("bytes_trained_parameters", "bytes_frozen_parameters",
                                                            "bytes_optimizer_state", "bytes_reference"))
    return iteration, figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per pass")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)
    full, full_figures = arm("configs/sentiment_quick.py", [])
    adapted, lora_figures = arm("configs/sentiment_lora.py", [f"--config.rl.lora.rank={args.rank}"])
    first = {"full": full(), "lora": adapted()}  # compilation
    passes = []
    for _ in range(args.passes):
        f = statistics.median([full() for _ in range(args.iterations)])
        a = statistics.median([adapted() for _ in range(args.iterations)])
        passes.append({"full": round(f, 3), "lora": round(a, 3), "ratio": round(f / a, 3)})
    emit({"workload": "ppo_iteration_full_vs_lora", "metric": "seconds per PPO iteration (ratio: full / LoRA)",
          "config": {"policy": "smollm2-135m-instruct", "lora_rank": args.rank, "dtype": "float32",
                     "shape": "configs/sentiment_quick.py's rl section"},
          "passes": passes, "median_ratio": statistics.median(p["ratio"] for p in passes),
          "first_iteration_incl_compile": {k: round(v, 2) for k, v in first.items()},
          "full": full_figures, "lora": lora_figures})


if __name__ == "__main__":
    sys.exit(main())
