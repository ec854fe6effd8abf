"""Does a reward-model ensemble hold off over-optimisation? PPO against one reward model and against a
pessimistic ensemble of three (mean - 1 std of the members' normalised scores; Coste et al. 2023), on the
main job's task (configs/sentiment_quick.py: the same preferences, the same member 0), two seeds each.

    rlhf-jax run --config configs/compare_ensemble.py          (workdir: runs/compare_ensemble)

Members 1 and 2 are trained here from model.seed + j and train.seed + j on the same feedback. The proxy of
each arm is the reward it optimised (the ensemble's, for the ensemble arm); frontier.png puts both arms'
gold and proxy gains against KL. Results: docs/comparison.md.
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.compare = {
        "seeds": 2,
        "parallel_seeds": True,
        "arms": (
            ("ppo", {}),
            ("ppo_ensemble", {"rl": {"reward_models": 3, "ensemble": "pessimistic", "ensemble_lambda": 1.0}}),
        ),
    }
    return config
