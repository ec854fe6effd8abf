"""Tiny random BERT with an MLM head on a slice of Rotten Tomatoes text: for tests."""

from . import tiny_cls


def get_config():
    config = tiny_cls.get_config()
    config.model.head = "masked_lm"
    config.train.task = "masked_lm"
    return config
