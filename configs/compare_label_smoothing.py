"""Does label smoothing (conservative DPO, Mitchell 2023) help when the simulated labels disagree with the
gold order about 21% of the time? DPO against cDPO at eps = 0.2, both exactly configs/dpo_quick.py
otherwise (120 steps of 16 pairs, beta 0.05), two seeds each, on the main job's preferences; evaluated
as every comparison is (compare.md, compare.json, frontier.png).

    rlhf-jax run --config configs/compare_label_smoothing.py          (workdir: runs/compare_label_smoothing)
"""

from . import compare_sentiment


def get_config():
    config = compare_sentiment.get_config()
    config.compare.arms = (
        ("dpo", compare_sentiment.offline_arm("dpo")),
        ("cdpo", compare_sentiment.offline_arm("dpo", label_smoothing=0.2)),
    )
    return config
