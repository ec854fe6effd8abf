"""PPO, RLOO, GRPO, DAPO, GSPO, CISPO, PPO against a reward-model ensemble, DPO, IPO and best-of-n head to
head on the main job's task: one start
(SmolLM2-135M-Instruct), one reward model and one set of simulated preferences (configs/sentiment_quick.py's),
two seeds each, evaluated alike on held-out openings by the gold labeler.

    rlhf-jax run --config configs/compare_sentiment.py          (workdir: runs/compare_sentiment)

Budget: every trained arm takes 80 Adam steps. The online arms draw the same 640 policy samples
(20 iterations x 32: PPO 32 openings x 1, RLOO and GRPO 8 openings x 4); the offline arms take 80 steps of
16 pairs (two thirds of one pass over the preferences, which were drawn once from the reference, as the
reward model's). Writes compare.md, compare.json and frontier.png (gold and proxy score against sqrt(KL),
with Gao et al. 2022's forms fitted). Its results and wall time: docs/comparison.md. Label
smoothing (conservative DPO) has its own comparison, configs/compare_label_smoothing.py.
"""

from . import dpo_quick, grpo_quick, sentiment_quick


def offline_arm(task: str, **train) -> dict:
    """dpo_quick's policy, data and trainer, with train.task = task and the given train fields."""
    dpo = dpo_quick.get_config()
    return {"model": dict(dpo.model), "data": {"max_length": dpo.data.max_length},
            "train": {**dict(dpo.train), "task": task, **train}}


# the online arms' 80 Adam steps, so every arm takes the same number
MATCHED_STEPS = {"steps": 80, "warmup_steps": 8, "checkpoint_every": 80}


def get_config():
    config = sentiment_quick.get_config()
    grpo = dict(grpo_quick.get_config().rl)
    config.compare = {
        "seeds": 2,
        "best_of_n": (1, 2, 4, 8, 16),
        "parallel_seeds": True,  # an online arm's seeds as one vmapped program
        "arms": (  # (name, changes to this config): a sequence, so the report keeps this order
            ("ppo", {}),
            ("rloo", {"rl": {"algorithm": "rloo", "rollout_prompts": 8, "samples_per_prompt": 4, "epochs": 1,
                              "minibatches": 4}}),
            ("grpo", {"rl": grpo}),
            # added with issue 29 (see docs/comparison.md for which arms were measured when)
            ("dapo", {"rl": {**grpo, "algorithm": "dapo", "clip_ratio_high": 0.28, "dynamic_sampling": True}}),
            ("gspo", {"rl": {**grpo, "algorithm": "gspo", "clip_ratio": 3e-3, "clip_ratio_high": 4e-3}}),
            ("cispo", {"rl": {**grpo, "algorithm": "cispo", "clip_ratio": 1.0, "clip_ratio_high": 0.28}}),
            ("ppo_ensemble", {"rl": {"reward_models": 3, "ensemble": "pessimistic", "ensemble_lambda": 1.0}}),
            ("dpo", offline_arm("dpo", **MATCHED_STEPS)),
            # IPO's target margin 1 / (2 beta) is in nats of the summed log-ratio: dpo_quick's beta 0.05 would ask for
            # 10 (its validation loss starts at 100 and the gradients are clipped from ~3,000); 0.5 asks for 1
            ("ipo", offline_arm("ipo", beta=0.5, **MATCHED_STEPS)),
            ("best_of_n", {}),
        ),
    }
    return config
