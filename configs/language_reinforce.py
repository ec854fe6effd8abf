"""Language feedback as the reward, no reward model: SmolLM2-135M-Instruct continues movie-review
openings, a simulated human writes a short comment on each continuation ("Too negative.", "Great, more
like this!"), VADER scores the comment, and REINFORCE with a leave-one-out baseline (KL-penalised to
the frozen original) maximises that score. Evaluated like the main job, by the gold labeler.

    rlhf-jax run --config configs/language_reinforce.py          (workdir: runs/language_reinforce)
"""

from . import sentiment_quick


def get_config():
    config = sentiment_quick.get_config()
    config.rl.algorithm = "reinforce"
    config.rl.reward = "language"
    config.rl.epochs = 1
    config.rl.minibatches = 2
    config.rl.learning_rate = 5e-5
    return config
