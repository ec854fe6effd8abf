"""DPO on the worked example's preferences (docs/data.md, docs/examples/movie_chat_preferences.jsonl): trl's
conversational rows rendered by SmolLM2-135M-Instruct's chat template (the response closes its own turn),
no reward model, evaluated as configs/chat_prefs_ppo.py is, on the file's held-out prompts.

    rlhf-jax run --config configs/chat_prefs_dpo.py          (workdir: runs/chat_prefs_dpo)
"""

from . import chat_prefs_ppo, dpo_quick


def get_config():
    config = dpo_quick.get_config()
    config.feedback.source = chat_prefs_ppo.get_config().feedback.source
    config.data.max_length = 112  # the templated prompt (up to 48 tokens) and the review with its turn's end
    config.train.steps = 48  # about 4 passes over the 189 training pairs
    config.train.warmup_steps = 5
    config.train.checkpoint_every = 48
    config.rl.update(dict(chat_prefs_ppo.get_config().rl))
    return config
