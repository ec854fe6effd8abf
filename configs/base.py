"""The root of every experiment config: one empty section each for model, data, train and mesh. Every
default lives once, in rlhf_jax.config's dataclasses; a config sets only what differs from them."""

import ml_collections

SECTIONS = ("model", "data", "train", "mesh")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    for section in SECTIONS:
        config[section] = ml_collections.ConfigDict()
    return config
