"""The planning table: SmolLM2-135M, SmolLM2-1.7B and Llama-3-8B on TPU v5e-16, v5p-64 and v6e-8, for SFT,
DPO, PPO and GRPO, each program compiled by libtpu's TPU compiler (``rlhf-jax plan --target``; the tpu extra).

Every row: bf16 compute, float32 parameters and Adam, remat full, layers scanned, FSDP over every chip;
with --lora R also the same program with rank-R adapters on every projection (alpha 2R; the base frozen,
Adam for the adapters only, no separate reference).
SFT: one 1024-token sequence per chip. DPO: one pair of 512-token sequences per chip. PPO and GRPO: 128
prompt + 128 response tokens, two rollouts per chip, two minibatches (GRPO: groups of 4). Prints a markdown
row per program as it goes (stderr) and one JSON line at the end.

    python experiments/tpu_plan_table.py [--shapes smollm2-135m,smollm2-1.7b,llama3-8b]
        [--targets tpu-v5e-16,tpu-v5p-64,tpu-v6e-8] [--algorithms sft,dpo,ppo,grpo] [--lora none,16]
"""

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench_lib import emit

from rlhf_jax import plan, targets
from rlhf_jax.config import load_config

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
RUN = "{'remat': 'full', 'dtype': 'bfloat16', 'scan_layers': True}"


def experiment(algorithm: str, chips: int, rank: int | None = None):
    """(config, steps to compile) of one algorithm at one sequence (SFT, DPO) or two rollouts (RL) per chip;
    ``rank``: with LoRA adapters of that rank."""
    adapters = [] if rank is None else [f"--config.{'model' if algorithm in ('sft', 'dpo') else 'rl'}.lora="
                                        f"{{'rank': {rank}, 'alpha': {2.0 * rank}}}"]
    if algorithm in ("sft", "dpo"):
        name, length = ("sft_smollm2_rt.py", 1024) if algorithm == "sft" else ("dpo_quick.py", 512)
        return load_config(os.path.join(CONFIGS, name), [
            f"--config.train.batch_size={chips}", f"--config.data.max_length={length}",
            f"--config.model.config={RUN}", *adapters]), ("train",)
    group = 4 if algorithm == "grpo" else 1
    config = "grpo_quick.py" if algorithm == "grpo" else "sentiment_quick.py"
    return load_config(os.path.join(CONFIGS, config), [
        f"--config.rl.rollout_prompts={2 * chips // group}", f"--config.rl.samples_per_prompt={group}",
        "--config.rl.prompt_tokens=128", "--config.rl.response_tokens=128", "--config.rl.minibatches=2",
        f"--config.rl.model_config={RUN}", *adapters]), ("rollout", "update")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smollm2-135m,smollm2-1.7b,llama3-8b")
    parser.add_argument("--targets", default="tpu-v5e-16,tpu-v5p-64,tpu-v6e-8")
    parser.add_argument("--algorithms", default="sft,dpo,ppo,grpo")
    parser.add_argument("--lora", default="none", help="comma-separated: 'none' (full fine-tuning) and/or ranks")
    args = parser.parse_args(argv)
    ranks = [None if r == "none" else int(r) for r in args.lora.split(",")]
    gib, rows = 2 ** 30, []
    print("| model | slice | program | LoRA | params + Adam | temporaries | total | HBM | fits | compile |",
          file=sys.stderr)
    for target_name in args.targets.split(","):
        target = targets.target(target_name)
        devices = target.devices()
        mesh = (("data", 1), ("fsdp", target.chips), ("tensor", 1))
        for shape in args.shapes.split(","):
            for algorithm, rank in ((a, r) for a in args.algorithms.split(",") for r in ranks):
                exp, steps = experiment(algorithm, target.chips, rank)
                exp = dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, shape=mesh))
                for step in plan.plan(exp, shape, devices, steps)[1]:
                    fits = "refused" if step.refused else "yes" if step.total <= target.hbm_gib * gib else "no"
                    row = dict(shape=shape, target=target_name, algorithm=algorithm, lora_rank=rank,
                               hbm_gib=target.hbm_gib, fits=fits, **dataclasses.asdict(step))
                    rows.append(row)
                    state = (step.parameters + step.optimizer) / gib
                    print(f"| {shape} | {target_name} | {step.step} | {rank or '-'} | {state:.2f} | "
                          f"{step.temporaries / gib:.2f} | {step.total / gib:.2f} | {target.hbm_gib:g} | {fits} | "
                          f"{step.compile_seconds:g} s |", file=sys.stderr, flush=True)
    emit({"bench": "tpu_plan_table", "rows": rows})


if __name__ == "__main__":
    main()
