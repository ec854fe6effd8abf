"""The online arms on the task graded by a program (configs/arith_grpo.py): GRPO, DAPO (clip-higher, dynamic
sampling, token mean), GSPO, CISPO and REINFORCE++, two seeds each, the same 8 problems x 8 samples per
iteration, 20 iterations (40 Adam steps: half arith_grpo's 40 iterations, whose held-out accuracy GRPO
reaches by the 20th); gold is held-out exact-match accuracy. The seeds run one after the other: vmapped
(compare.parallel_seeds) the two need about 17 GB on this task, more than a 24 GB machine has beside
anything else.

    rlhf-jax run --config configs/compare_arith.py          (workdir: runs/compare_arith)
"""

from . import arith_grpo


def get_config():
    config = arith_grpo.get_config()
    config.rl.iterations = 20
    config.compare = {
        "seeds": 2,
        "parallel_seeds": False,
        "arms": (
            ("grpo", {}),
            ("dapo", {"rl": {"algorithm": "dapo", "clip_ratio_high": 0.28, "dynamic_sampling": True, "kl_coef": 0.0}}),
            ("gspo", {"rl": {"algorithm": "gspo", "clip_ratio": 3e-3, "clip_ratio_high": 4e-3}}),
            ("cispo", {"rl": {"algorithm": "cispo", "clip_ratio": 1.0, "clip_ratio_high": 0.28}}),
            ("reinforce_pp", {"rl": {"algorithm": "reinforce_pp", "kl_target": None, "kl_coef": 0.01}}),
        ),
    }
    return config
