"""A task graded by a program: GRPO teaches SmolLM2-135M-Instruct generated arithmetic ("12 - 15 =", two
solved examples before it), rewarded by an exact-match grader, which is also the gold metric: held-out
exact-match accuracy, policy against the reference with the same sampling keys, with 95% intervals.

    rlhf-jax run --config configs/arith_grpo.py          (workdir: runs/arith_grpo)

No reward model is trained and no feedback is collected (the model / data / train / feedback sections
are the main job's, unused). Difficulty: rl.arithmetic_max_operand, rl.arithmetic_operations.
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.rl = {"reward": "arithmetic", "arithmetic_max_operand": 20, "arithmetic_operations": "+-",
                 "algorithm": "grpo", "rollout_prompts": 16, "samples_per_prompt": 4, "epochs": 1, "minibatches": 2,
                 "learning_rate": 3e-5, "kl_target": None, "kl_coef": 0.01, "prompt_tokens": 24,
                 "response_tokens": 5, "iterations": 40, "eval_prompts": 160, "eval_batch_size": 32,
                 "checkpoint_every": 10, "log_samples": 8}
    return config
