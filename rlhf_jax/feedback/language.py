"""Language feedback as a reward: a free-text comment ("too negative", "great, more like this") -> a scalar.

A comment scorer reads the comment, not the response: VADER's compound sentiment of the comment, or
the MiniLM sentiment classifier (2 P(positive) - 1), both in [-1, 1]. The scalars can

* train a reward model by regression (``comment_ratings`` turns language rows into rating rows), or
* be the reward itself (``LanguageReward``): a simulated human comments on each policy sample and
  the comment's score is what a policy-gradient update (REINFORCE with a baseline, or PPO) maximises.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rlhf_jax.config import FeedbackConfig
from rlhf_jax.feedback.labelers import make_scorer, simulated_human


def comment_scorer(fb: FeedbackConfig):
    """``fb.comment_scorer`` as a scorer whose ``score(prompts, comments)`` maps each comment to [-1, 1]."""
    return make_scorer(fb.comment_scorer, fb)


def comment_ratings(language_rows: Sequence[dict], scorer) -> list[dict]:
    """Rating rows (the ``score`` a regression reward model fits) from language rows: score = scorer(feedback)."""
    scores = scorer.score([r["prompt"] for r in language_rows], [r["feedback"] for r in language_rows])
    return [{"id": r["id"], "split": r["split"], "prompt": r["prompt"], "response": r["response"], "score": float(s),
             "annotator": r.get("annotator", ""), "source": "comment-score"} for r, s in zip(language_rows, scores)]


@dataclasses.dataclass
class LanguageReward:
    """reward(prompt, response) = scorer(the simulated human's comment on the response)."""

    human: object  # SimulatedHuman
    scorer: object

    @classmethod
    def from_config(cls, fb: FeedbackConfig) -> LanguageReward:
        return cls(simulated_human(fb), comment_scorer(fb))

    def comments(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        return self.human.comment(list(prompts), list(responses))["comments"]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.asarray(self.scorer.score(list(prompts), self.comments(prompts, responses)), np.float32)
