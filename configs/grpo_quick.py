"""GRPO (Shao et al. 2024) instead of PPO in the main job: the same preferences, reward model and
evaluation as configs/sentiment_quick.py; 8 openings x 4 continuations per iteration (the 32 samples
of PPO's iteration), advantages normalised within each opening's 4, KL to the reference in the loss.

    rlhf-jax run --config configs/grpo_quick.py          (workdir: runs/grpo_quick)
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.rl.update({"algorithm": "grpo", "rollout_prompts": 8, "samples_per_prompt": 4, "kl_target": None,
                       "kl_coef": 0.03, "epochs": 2, "minibatches": 2, "learning_rate": 5e-5})
    return config
