"""Tiny comparison for tests: PPO, GRPO, DPO and best-of-n on the tiny pipeline, two seeds each (the online
arms' seeds in parallel).
feedback.policy and rl.policy must be set to a local causal-LM directory (tests make a tiny random one);
the DPO arm's model.source follows rl.policy."""

from . import tiny_dpo, tiny_ppo


def get_config():
    config = tiny_ppo.get_config()
    config.rl.iterations = 2
    dpo = tiny_dpo.get_config()
    config.compare = {
        "seeds": 2,
        "best_of_n": (1, 2, 4),
        "parallel_seeds": True,  # the online arms' two seeds as one vmapped program
        "arms": (
            ("ppo", {}),
            ("grpo", {"rl": {"algorithm": "grpo", "rollout_prompts": 4, "samples_per_prompt": 4, "kl_target": None}}),
            ("dpo", {"model": {"source": "", "tokenizer": None, "head": "causal_lm", "config": {}},
                     "data": {"max_length": dpo.data.max_length},
                     "train": {"task": "dpo", "learning_rate": dpo.train.learning_rate}}),
            ("best_of_n", {}),
        ),
    }
    return config
