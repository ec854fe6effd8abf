"""A task graded by a program: GRPO teaches SmolLM2-135M-Instruct generated arithmetic ("12 - 15 =", two
solved examples before it), rewarded by an exact-match grader, which is also the gold metric: held-out
exact-match accuracy, policy against the reference with the same sampling keys, with 95% intervals
over the 40 held-out problems (each sampled 8 times: rl.eval_prompts = 320 cycles through them).

    rlhf-jax run --config configs/arith_grpo.py          (workdir: runs/arith_grpo)

No reward model is trained and no feedback is collected (the model / data / train / feedback sections
are the main job's, unused). Difficulty: rl.arithmetic_max_operand, rl.arithmetic_operations.
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.rl = {"reward": "arithmetic", "arithmetic_max_operand": 10, "arithmetic_operations": "+-",
                 "algorithm": "grpo", "rollout_prompts": 8, "samples_per_prompt": 8, "epochs": 1, "minibatches": 2,
                 "learning_rate": 2e-5, "kl_target": None, "kl_coef": 0.05, "prompt_tokens": 24,
                 "response_tokens": 4, "iterations": 40, "eval_prompts": 320, "eval_batch_size": 64,
                 "checkpoint_every": 10, "log_samples": 8}
    return config
