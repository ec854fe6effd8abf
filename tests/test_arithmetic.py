"""The task graded by a program (rlhf_jax.feedback.arithmetic) and reward-model ensembles
(scoring.combine_scores, EnsembleReward): the grader against hand-made cases, the hash split, the
combinations against plain loops, and the config's refusals."""

import numpy as np
import pytest

from rlhf_jax.config import ConfigError, RLConfig
from rlhf_jax.feedback import arithmetic
from rlhf_jax.scoring import EnsembleReward, combine_scores


def test_the_grader_reads_the_first_integer_of_the_answer():
    prompt = arithmetic.Problem(8, "-", 16).prompt
    assert prompt.endswith("\n8 - 16 =") and arithmetic.Problem(8, "-", 16).answer == -8
    responses = [" -8\n", " -8 is it", " 8", " -16", "", " minus eight", " -8,", "-8", " 1,000"]
    np.testing.assert_array_equal(arithmetic.Grader().score([prompt] * len(responses), responses),
                                  [1, 1, 0, 0, 0, 0, 1, 1, 0])
    assert arithmetic.parse_answer(" 1,000 and 2") == 1000


def test_a_prompt_that_asks_nothing_is_named():
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        arithmetic.Grader().score(["The movie was"], [" 3"])


def test_the_splits_are_disjoint_fixed_by_hash_and_cover_every_problem():
    train = arithmetic.problems(20, "+-", "train", seed=0)
    test = arithmetic.problems(20, "+-", "test", seed=0)
    assert len(train) + len(test) == 2 * 20 * 20 and not set(train) & set(test)
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    assert set(arithmetic.problems(20, "+-", "test", seed=5)) == set(test)  # the seed orders, never moves
    assert arithmetic.problems(20, "+-", "test", seed=5) != test
    assert all(arithmetic.split_of(p) == "test" for p in test)
    harder = arithmetic.problems(30, "+-*", "test")  # a problem keeps its split at every difficulty
    assert set(test) <= set(harder)


def test_a_bad_difficulty_is_refused():
    with pytest.raises(ConfigError, match="rl.arithmetic_operations"):
        RLConfig(reward="arithmetic", arithmetic_operations="+/")
    with pytest.raises(ConfigError, match="rl.arithmetic_max_operand"):
        RLConfig(reward="arithmetic", arithmetic_max_operand=1)


def test_the_ensemble_combinations_match_a_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 7))
    for b in range(7):
        members = [scores[k, b] for k in range(3)]
        mean = sum(members) / 3
        std = (sum((m - mean) ** 2 for m in members) / 3) ** 0.5
        assert combine_scores(scores, "mean")[b] == pytest.approx(mean)
        assert combine_scores(scores, "pessimistic", 0.5)[b] == pytest.approx(mean - 0.5 * std)
        assert combine_scores(scores, "min")[b] == pytest.approx(min(members))
    with pytest.raises(ValueError, match="unknown ensemble combination"):
        combine_scores(scores, "median")


class Fixed:
    def __init__(self, values):
        self.values = np.asarray(values, np.float32)

    def score(self, prompts, responses):
        return self.values[: len(responses)]


def test_an_ensemble_scores_as_its_combination_of_members():
    members = [Fixed([1.0, 0.0]), Fixed([3.0, 0.0]), Fixed([2.0, 3.0])]
    np.testing.assert_allclose(EnsembleReward(members, "mean").score(["a", "b"], ["x", "y"]), [2.0, 1.0])
    np.testing.assert_allclose(EnsembleReward(members, "min").score(["a", "b"], ["x", "y"]), [1.0, 0.0])
    pessimistic = EnsembleReward(members, "pessimistic", 1.0).score(["a", "b"], ["x", "y"])
    np.testing.assert_allclose(pessimistic, [2.0 - np.std([1, 3, 2]), 1.0 - np.std([0, 0, 3])], rtol=1e-6)


@pytest.mark.parametrize("fields,named", [
    (dict(reward_models=0), "rl.reward_models"),
    (dict(reward_models=3, reward="arithmetic"), "rl.reward_models"),
    (dict(reward_models=3, ensemble="median"), "rl.ensemble"),
    (dict(reward_models=3, ensemble_lambda=-1.0), "rl.ensemble_lambda"),
])
def test_a_bad_ensemble_is_refused(fields, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        RLConfig(**fields)
