"""Simulated humans: the disagreement rate their temperature implies, determinism, ties, ratings."""

import numpy as np
import pytest

from rlhf_jax.feedback.labelers import SimulatedHuman, VaderScorer


class TableScorer:
    """Gold score = the number written in the response ("0.25")."""

    name = "table"

    def score(self, prompts, responses):
        return np.asarray([float(r) for r in responses])


def random_pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    return [f"p{i}" for i in range(n)], [f"{x:.6f}" for x in a], [f"{x:.6f}" for x in b]


@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_disagreement_rate_matches_the_temperature(temperature):
    n = 4000
    prompts, a, b = random_pairs(n)
    human = SimulatedHuman(TableScorer(), temperature=temperature, seed=7)
    out = human.prefer(prompts, a, b)
    gold_prefers_a = out["gold_a"] > out["gold_b"]
    disagrees = (out["labels"] == 0) != gold_prefers_a
    p_disagree = 1 / (1 + np.exp(np.abs(out["gold_a"] - out["gold_b"]) / temperature))
    expected = p_disagree.mean()
    # independent Bernoulli(p_i): the std of the observed mean is sqrt(sum p(1-p)) / n
    tolerance = 4 * np.sqrt((p_disagree * (1 - p_disagree)).sum()) / n
    assert abs(disagrees.mean() - expected) < tolerance, (disagrees.mean(), expected, tolerance)
    assert 0.02 < expected < 0.3


def test_labels_are_deterministic_and_order_independent():
    prompts, a, b = random_pairs(200)
    human = SimulatedHuman(TableScorer(), temperature=0.3, seed=3)
    labels = human.prefer(prompts, a, b)["labels"]
    np.testing.assert_array_equal(
        labels, SimulatedHuman(TableScorer(), temperature=0.3, seed=3).prefer(prompts, a, b)["labels"]
    )
    order = np.random.default_rng(1).permutation(200)
    shuffled = human.prefer([prompts[i] for i in order], [a[i] for i in order], [b[i] for i in order])["labels"]
    np.testing.assert_array_equal(shuffled, labels[order])
    other_seed = SimulatedHuman(TableScorer(), temperature=0.3, seed=4).prefer(prompts, a, b)["labels"]
    assert (other_seed != labels).any()


def test_zero_temperature_follows_gold_and_ties_below_margin():
    human = SimulatedHuman(TableScorer(), temperature=0.0, tie_margin=0.05)
    out = human.prefer(["p"] * 3, ["0.5", "0.1", "0.30"], ["0.2", "0.4", "0.32"])
    assert out["labels"].tolist() == [0, 1, -1]


def test_ratings_and_comments():
    human = SimulatedHuman(TableScorer(), rating_noise=0.0)
    rated = human.rate(["p"] * 4, ["-1.0", "-0.2", "0.05", "0.99"])
    assert rated["ratings"].tolist() == [1, 3, 4, 7]
    comments = human.comment(["p"] * 2, ["-0.9", "0.9"])["comments"]
    assert comments[0] in ("Too negative.", "This reads as a bad review; I wanted something warmer.", "Far too harsh.")
    assert comments[1] in ("Great, more like this!", "Lovely and positive.", "Exactly the upbeat tone I wanted.")


def test_vader_scores_sentiment():
    scores = VaderScorer().score(["", ""], ["a wonderful, moving film", "a dull and terrible mess"])
    assert scores[0] > 0.5 and scores[1] < -0.5


def test_classifier_scorer_reads_the_trained_checkpoint(tmp_path):
    import os

    import jax
    from flax import nnx

    from rlhf_jax.config import load_config
    from rlhf_jax.feedback.labelers import ClassifierScorer
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.runs.supervised import train

    config_path = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_cls.py")
    result = train(load_config(config_path), str(tmp_path / "cls"), progress=False)
    texts = ["a wonderful film", "a dreadful bore", "plain"]
    scores = ClassifierScorer(config_path, str(tmp_path / "cls")).score([""] * 3, texts)
    enc = load_tokenizer("minilm-l6")(texts, max_length=32, truncation=True, padding="max_length", return_tensors="np")
    logits = nnx.merge(result["graphdef"], result["params"])(enc["input_ids"], enc["attention_mask"])
    expected = 2 * np.asarray(jax.nn.softmax(logits)[:, 1]) - 1
    assert np.abs(scores - expected).max() < 1e-5 and (np.abs(scores) <= 1).all()
