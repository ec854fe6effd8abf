"""Compile time of a causal-LM train step with the layers scanned (``model.scan_layers``) beside the loop of
blocks, at 30 and 60 layers (SmolLM2-135M's widths, remat full, one 128-token sequence per device).

Each compile is a fresh ``jit(...).lower(...).compile()`` of ``rlhf_jax.plan.plan_train_step`` for the target:
XLA's CPU compiler on 4 simulated devices, and, where libtpu is installed (the tpu extra), the TPU compiler
for a v5e 2x2. The two layouts alternate for ``--passes`` rounds; the median of each is printed, with the
generated code size and the per-device temporaries. Prints one JSON line.

    python experiments/bench_scan_compile.py [--layers 30,60] [--passes 1] [--targets cpu,tpu-v5e-4]
"""

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
from bench_lib import emit

from rlhf_jax import plan, sharding, targets
from rlhf_jax.config import load_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sft_smollm2_rt.py")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="30,60")
    parser.add_argument("--passes", type=int, default=1)
    default_targets = "cpu,tpu-v5e-4" if importlib.util.find_spec("libtpu") else "cpu"
    parser.add_argument("--targets", default=default_targets)
    args = parser.parse_args(argv)
    exp = load_config(CONFIG, ["--config.mesh.shape={'data': 1, 'fsdp': 4, 'tensor': 1}",
                               "--config.train.batch_size=4", "--config.data.max_length=128"])
    results = []
    for target in args.targets.split(","):
        devices = jax.devices("cpu") if target == "cpu" else targets.target(target).devices()
        layout = sharding.Layout.of(exp.mesh, devices)
        for layers in map(int, args.layers.split(",")):
            base = plan.named_config("smollm2-135m", "causal_lm", {"remat": "full"})
            runs = {False: [], True: []}
            for _ in range(args.passes):
                for scan in (False, True):  # alternating
                    cfg = dataclasses.replace(base, num_layers=layers, scan_layers=scan)
                    runs[scan].append(plan.plan_train_step(exp, cfg, layout))
            for scan, steps in runs.items():
                row = {"target": target, "layers": layers, "scan_layers": scan,
                       "compile_seconds": statistics.median(s.compile_seconds for s in steps),
                       "generated_code_mib": round(steps[-1].generated_code / 2 ** 20, 1),
                       "temporaries_gib": round(steps[-1].temporaries / 2 ** 30, 3)}
                results.append(row)
                print(row, file=sys.stderr, flush=True)
    emit({"bench": "scan_compile", "passes": args.passes, "results": results})


if __name__ == "__main__":
    main()
