"""Gold scorers and simulated humans: texts in, scores / preferences / ratings / comments out.

In the reproducible setting of Ziegler et al. (2019) and Gao et al. (2022) a *gold* scorer g stands
in for the truth, and a simulated human adds human-like noise on top of it:

    P(human prefers A over B) = sigmoid((g(A) - g(B)) / temperature)

Every random draw is keyed by (seed, the item's text), so a label does not depend on the order or
batch in which items are labelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class GoldScorer(Protocol):
    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """One float per (prompt, response): higher is better."""


class VaderScorer:
    """Compound VADER sentiment of the response, in [-1, 1] (the prompt is not scored)."""

    name = "vader"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts, responses):
        return np.asarray([self.analyzer.polarity_scores(r)["compound"] for r in responses], np.float64)


class ClassifierScorer:
    """A trained sentiment classifier as gold: 2 P(label 1) - 1 in [-1, 1] (e.g. P(fresh) of the MiniLM
    classifier of configs/cls_minilm_rt.py), restored from its training workdir's latest checkpoint."""

    name = "classifier"

    def __init__(self, config_path: str, workdir: str, batch_size: int = 64):
        from rlhf_jax.config import load_config
        from rlhf_jax.trained import restore

        self.exp = load_config(config_path)
        trained = restore(workdir, self.exp, local=True)  # each process scores its own rows
        self.graphdef, self.params, self.tokenizer = trained.graphdef, trained.params, trained.tokenizer
        self.step = trained.step
        self.batch_size = batch_size

    def score(self, prompts, responses):
        from rlhf_jax.scoring import score_texts

        p_positive = score_texts(self.graphdef, self.params, self.tokenizer, list(responses), self.exp.data.max_length,
                                 self.batch_size, positive_class=1)
        return 2.0 * p_positive.astype(np.float64) - 1.0


def _item_rng(seed: int, *texts: str) -> np.random.Generator:
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


COMMENTS = {  # rating bucket -> templates; {aspect} is filled from the response's sentiment
    "low": ["Too negative.", "This reads as a bad review; I wanted something warmer.", "Far too harsh."],
    "mid": ["Mixed; could be more enthusiastic.", "Neutral, a bit flat.", "Okay, but lukewarm."],
    "high": ["Great, more like this!", "Lovely and positive.", "Exactly the upbeat tone I wanted."],
}


@dataclasses.dataclass
class SimulatedHuman:
    """A noisy labeler over a gold scorer.

    temperature: preference noise (0: always the gold order). tie_margin: |g(A) - g(B)| below this is
    reported as a tie. rating_noise: std of Gaussian noise added to g before binning into 1..7
    between rating_low and rating_high.
    """

    gold: GoldScorer
    temperature: float = 0.1
    seed: int = 0
    tie_margin: float = 0.0
    rating_noise: float = 0.1
    rating_low: float = -1.0
    rating_high: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def preference_probability(self, gold_a: np.ndarray, gold_b: np.ndarray) -> np.ndarray:
        """P(A preferred over B) = sigmoid((g(A) - g(B)) / temperature); a step function at temperature 0."""
        diff = np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64)
        if self.temperature == 0:
            return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        return 1.0 / (1.0 + np.exp(-diff / self.temperature))

    def prefer(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> dict:
        """Labels 0 (A preferred), 1 (B preferred) or -1 (tie), with the gold scores behind them."""
        gold_a = self.gold.score(prompts, responses_a)
        gold_b = self.gold.score(prompts, responses_b)
        p_a = self.preference_probability(gold_a, gold_b)
        draws = np.asarray([_item_rng(self.seed, "prefer", p, a, b).random()
                            for p, a, b in zip(prompts, responses_a, responses_b)])
        labels = np.where(draws < p_a, 0, 1)
        labels = np.where(np.abs(gold_a - gold_b) < self.tie_margin, -1, labels)
        return {"labels": labels, "gold_a": gold_a, "gold_b": gold_b, "p_a": p_a}

    def rate(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """Integer ratings 1..7: the gold score plus noise, binned evenly over [rating_low, rating_high]."""
        gold = self.gold.score(prompts, responses)
        noise = np.asarray([_item_rng(self.seed, "rate", p, r).normal() for p, r in zip(prompts, responses)])
        unit = (gold + self.rating_noise * noise - self.rating_low) / (self.rating_high - self.rating_low)
        return {"ratings": np.clip(np.floor(unit * 7) + 1, 1, 7).astype(int), "gold": gold}

    def comment(self, prompts: Sequence[str], responses: Sequence[str]) -> dict:
        """A short templated free-text comment matching the (noisy) rating."""
        rated = self.rate(prompts, responses)
        comments = []
        for p, r, rating in zip(prompts, responses, rated["ratings"]):
            bucket = "low" if rating <= 3 else ("mid" if rating == 4 else "high")
            options = COMMENTS[bucket]
            comments.append(options[_item_rng(self.seed, "comment", p, r).integers(len(options))])
        return {"comments": comments, **rated}


SCORERS = {"vader": lambda fb: VaderScorer(),
           "classifier": lambda fb: ClassifierScorer(fb.classifier_config, fb.classifier_workdir)}


def make_scorer(name: str, fb):
    """The scorer called ``name`` ('vader' or 'classifier': the trained classifier of ``fb``)."""
    if name not in SCORERS:
        from rlhf_jax.config import ConfigError

        raise ConfigError(f"config field 'feedback.labeler': unknown scorer {name!r} (scorers: {sorted(SCORERS)})")
    return SCORERS[name](fb)


def gold_scorer(fb):
    """The gold labeler of a feedback config."""
    return make_scorer(fb.labeler, fb)


def simulated_human(fb) -> SimulatedHuman:
    """The simulated human of a feedback config: its gold scorer, temperature, seed and tie margin."""
    return SimulatedHuman(gold_scorer(fb), temperature=fb.temperature, seed=fb.seed, tie_margin=fb.tie_margin)
