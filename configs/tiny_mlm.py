"""Tiny random BERT with an MLM head on a slice of Rotten Tomatoes text: for tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import tiny_cls  # noqa: E402


def get_config():
    config = tiny_cls.get_config()
    config.model.head = "masked_lm"
    config.train.task = "masked_lm"
    return config
