"""Language feedback as the reward, no reward model: SmolLM2-135M-Instruct continues movie-review
openings, a simulated human writes a short comment on each continuation ("Too negative.", "Great, more
like this!"), VADER scores the comment, and REINFORCE with a leave-one-out baseline (KL-penalised to
the frozen original) maximises that score. Evaluated like the main job, by the gold labeler.

    rlhf-jax run --config configs/language_reinforce.py          (workdir: runs/language_reinforce)
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.ppo.algorithm = "reinforce"
    config.ppo.reward = "language"
    config.ppo.epochs = 1
    config.ppo.minibatches = 2
    config.ppo.learning_rate = 5e-5
    return config
