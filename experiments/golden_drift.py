"""How far this jax and this CPU move the PPO / REINFORCE goldens from the reference recording: every metric
of tests/golden/ that differs, with its
absolute and relative deviation (docs/versions.md). Run from the repository root:

    RLHF_JAX_TINY_POLICY=DIR python experiments/golden_drift.py

DIR is a tiny policy written by tests/conftest.py's write_tiny_policy (it needs torch, so a venv without
it takes one written elsewhere).
"""

import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import conftest  # noqa: F401  (8 simulated devices, before jax starts)
from conftest import GOLDEN_REFERENCE, golden_environment
from test_ppo_golden import ALGORITHMS, GOLDEN, logged_metrics

for algorithm in sorted(ALGORITHMS):
    metrics = logged_metrics(pathlib.Path(tempfile.mkdtemp()), os.environ["RLHF_JAX_TINY_POLICY"], algorithm)
    moved = {}
    for row, recorded in zip(metrics, json.load(open(GOLDEN))[GOLDEN_REFERENCE][algorithm]):
        for name, value in recorded.items():
            if row[name] != value:
                moved[f"{row['step']}:{name}"] = {"recorded": value, "got": row[name], "abs": abs(row[name] - value),
                                                  "rel": abs(row[name] - value) / max(abs(value), 1e-30)}
    print(json.dumps({"environment": golden_environment(), "algorithm": algorithm, "metrics_moved": len(moved),
                      "max_abs": max((m["abs"] for m in moved.values()), default=0.0),
                      "max_rel": max((m["rel"] for m in moved.values()), default=0.0), "moved": moved}))
