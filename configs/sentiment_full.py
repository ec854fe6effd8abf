"""The main job, bigger and longer: the reward model of configs/rm_minilm_sentiment.py (2500 prompts x
4 continuations, all 15k pairs labelled; 900 steps) and a longer PPO run with larger rollouts.

    rlhf-jax run --config configs/sentiment_full.py          (workdir: runs/sentiment_full)

A workdir that already holds a finished rm_minilm_sentiment run (feedback/ and reward_model/) is
reused for those stages: the configs are the same.
"""

from . import rm_minilm_sentiment, sentiment_quick


def get_config():
    config = rm_minilm_sentiment.get_config()
    # The reward model its README numbers were measured with (the earlier rm_minilm_sentiment): [CLS]
    # pooler, 4 continuations per prompt, one pair per row, 900 steps x 32 pairs.
    config.model.config = {"pooling": "cls"}
    config.feedback.prompts = 2500
    config.feedback.samples_per_prompt = 4
    config.train.update({"task": "reward_pairwise", "steps": 900, "batch_size": 32, "eval_batch_size": 64,
                         "warmup_steps": 60, "checkpoint_every": 150, "eval_every": 150})
    config.rl = sentiment_quick.get_config().rl
    config.rl.update({"iterations": 32, "rollout_prompts": 64, "epochs": 2, "minibatches": 4, "checkpoint_every": 8})
    return config
