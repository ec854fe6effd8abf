"""Ratings and language feedback (REINFORCE, regression reward models) and the feedback rounds loop."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import CONFIGS
from conftest import tiny_rl as tiny
from flax import nnx

from rlhf_jax.config import ConfigError, load_config
from rlhf_jax.feedback import arithmetic
from rlhf_jax.feedback.labelers import SimulatedHuman, VaderScorer
from rlhf_jax.feedback.language import LanguageReward, comment_ratings
from rlhf_jax.metrics import read_metrics
from rlhf_jax.rl import online
from rlhf_jax.runs import policy_training, reward_training


def cli(*args):
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_comment_scores_follow_the_comment_not_the_response():
    scorer = VaderScorer()
    rows = [{"id": "a", "split": "train", "prompt": "p", "response": "awful", "feedback": "Great, more like this!"},
            {"id": "b", "split": "train", "prompt": "p", "response": "wonderful", "feedback": "Too negative."}]
    scores = [r["score"] for r in comment_ratings(rows, scorer)]
    assert scores[0] > 0.5 and scores[1] < -0.2


def test_language_reward_is_the_scored_comment_of_the_simulated_human():
    human = SimulatedHuman(VaderScorer(), temperature=0.1, seed=3)
    reward = LanguageReward(human, VaderScorer())
    prompts = ["The film"] * 4
    responses = ["is a joyous, wonderful delight.", "is awful and boring.", "is a film.", "is terrible, I hated it."]
    scores = reward.score(prompts, responses)
    expected = VaderScorer().score(prompts, human.comment(prompts, responses)["comments"])
    np.testing.assert_allclose(scores, expected.astype(np.float32))
    assert scores[0] > scores[1] and scores[0] > scores[3]  # the comments track the sentiment
    np.testing.assert_array_equal(scores, reward.score(prompts, responses))  # deterministic given the seed


def likelihood_change(tiny_policy, algorithm: str, scores_B, *overrides, k: int = 1):
    """One update of ``algorithm`` on 16 rollouts (16 / k prompts, k samples each) given these scores: how
    much each sampled sequence's log-likelihood moved, and the update's metrics."""
    exp = tiny(tiny_policy, f"--config.rl.algorithm={algorithm}", "--config.rl.epochs=1", "--config.rl.minibatches=1",
               "--config.rl.learning_rate=1e-3", "--config.mesh.shape={'data': 1, 'fsdp': 1, 'tensor': 1}",
               f"--config.rl.rollout_prompts={16 // k}", f"--config.rl.samples_per_prompt={k}", *overrides)
    from rlhf_jax.feedback.collect import sentiment_prompts
    from rlhf_jax.models import load_tokenizer

    prompts = list(np.repeat(sentiment_prompts(16 // k, 8, load_tokenizer(tiny_policy), split="train"), k))
    run = policy_training.prepare(exp, None)
    arrays, _ = policy_training.encode_prompts(run.tokenizer, prompts, exp.rl.prompt_tokens)
    ids, mask = policy_training.to_mesh(arrays, run)
    experience = run.functions.rollout(run.state.params, run.ref_params, ids, mask, online.rollout_key(run.state.rng))

    def sequence_logp(params):
        model = nnx.merge(run.graphdef, params)
        logp, _, _ = online.policy_outputs(model, experience.ids_BxT, experience.mask_BxT, exp.rl.prompt_tokens, 1.0)
        return np.asarray(jax.device_get((logp * experience.response_mask_BxN).sum(axis=1)))

    before = sequence_logp(run.state.params)
    state, metrics = run.functions.update(run.state, experience, policy_training.to_mesh(scores_B, run))
    return sequence_logp(state.params) - before, metrics


@pytest.mark.parametrize("algorithm", ["reinforce", "reinforce_pp"])
def test_reinforce_raises_the_likelihood_of_better_than_average_samples(tiny_policy, algorithm):
    scores_B = np.where(np.arange(16) < 8, 1.0, -1.0).astype(np.float32)
    change, metrics = likelihood_change(tiny_policy, algorithm, scores_B)
    assert change[:8].mean() > 0 > change[8:].mean()
    assert "value_loss" not in metrics and np.isfinite(float(metrics["policy_loss"]))


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "cispo"])
def test_group_algorithms_raise_the_likelihood_of_each_prompts_better_samples(tiny_policy, algorithm):
    """4 prompts x 4 samples. Each group's scores sit around its own level (+3, +1, -1, -3); within every
    group samples 0 and 2 score 0.5 above, 1 and 3 0.5 below. The group baselines see only the within-group
    differences: the better samples of even the worst prompt gain likelihood, the worse of the best lose."""
    level = np.repeat([3.0, 1.0, -1.0, -3.0], 4)
    better = np.tile([True, False, True, False], 4)
    scores_B = (level + np.where(better, 0.5, -0.5)).astype(np.float32)
    change, metrics = likelihood_change(tiny_policy, algorithm, scores_B, "--config.rl.kl_target=None", k=4)
    for group in range(4):
        rows = slice(4 * group, 4 * group + 4)
        assert change[rows][better[rows]].mean() > 0 > change[rows][~better[rows]].mean(), group
    assert "value_loss" not in metrics and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("algorithm,overrides,field", [
    ("rloo", ["--config.rl.samples_per_prompt=1"], "rl.samples_per_prompt"),
    ("rloo", ["--config.rl.samples_per_prompt=4", "--config.rl.epochs=2"], "rl.epochs"),
    ("grpo", ["--config.rl.samples_per_prompt=4"], "rl.kl_target"),
    ("grpo", ["--config.rl.samples_per_prompt=4", "--config.rl.kl_target=None",
              "--config.rl.loss_aggregation=tokens"], "rl.loss_aggregation"),
])
def test_group_algorithms_refuse_configs_they_do_not_suit(algorithm, overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_config(os.path.join(CONFIGS, "tiny_ppo.py"), [f"--config.rl.algorithm={algorithm}", *overrides])


def test_a_new_algorithm_is_one_registry_entry(tiny_policy, monkeypatch):
    """An algorithm defined only here runs through the unchanged update and trainer: imitate the samples
    scored above zero, push away from the others (advantage = sign of the score, no baseline)."""
    import jax.numpy as jnp

    from rlhf_jax.rl import algorithms, maths

    def sign_advantages(cfg, scores_B, kl_BxN, values_BxN, mask_BxN, kl_coef):
        return jnp.sign(scores_B), jnp.zeros_like(mask_BxN)

    def sign_loss(cfg, out, batch):
        loss = maths.reinforce_surrogate(out.logp_BxN, batch.advantages, batch.mask_BxN)
        ratio = maths.masked_mean(jnp.exp(out.logp_BxN - batch.old_logp_BxN), batch.mask_BxN)
        return loss, {"loss": loss, "ratio": ratio, "imitated": jnp.mean(batch.advantages > 0)}

    monkeypatch.setitem(algorithms.ALGORITHMS, "imitate_positive", algorithms.Algorithm(
        "imitate_positive", "imitation of positive samples", sign_advantages, sign_loss, uses_critic=False))
    scores_B = np.where(np.arange(16) % 4 == 0, 0.5, -0.5).astype(np.float32)
    change, metrics = likelihood_change(tiny_policy, "imitate_positive", scores_B)
    assert change[::4].mean() > 0 > np.delete(change, np.s_[::4]).mean()
    assert float(metrics["imitated"]) == 0.25 and "explained_variance" not in metrics


def test_reinforce_needs_one_epoch():
    with pytest.raises(ConfigError, match="rl.epochs"):
        load_config(os.path.join(CONFIGS, "tiny_ppo.py"), ["--config.rl.algorithm=reinforce", "--config.rl.epochs=2"])


def test_grpo_on_the_arithmetic_task_end_to_end(tmp_path, tiny_policy):
    """No feedback, no reward model: generated problems for prompts, the grader for reward and gold; the
    evaluation's accuracy of both policies, with intervals, on the held-out problems; the sampler / trainer
    mismatch watched every iteration and plotted."""
    held_out = [p.prompt for p in arithmetic.problems(10, "+-", "test")]
    cli("run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(tmp_path),
        f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
        "--config.rl.reward=arithmetic", "--config.rl.algorithm=dapo", "--config.rl.kl_target=None",
        "--config.rl.samples_per_prompt=2", "--config.rl.rollout_prompts=8", "--config.rl.prompt_tokens=24",
        "--config.rl.arithmetic_max_operand=10", "--config.rl.iterations=2", "--config.rl.dynamic_sampling=True",
        "--config.rl.mask_truncated=True",
        f"--config.rl.eval_prompts={2 * len(held_out)}")  # every held-out problem sampled twice
    assert not (tmp_path / "reward_model").exists() and not (tmp_path / "feedback").exists()
    train_rows = [r for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "train"]
    assert all(0 <= r["score"] <= 1 for r in train_rows)  # the share of the rollout answered right
    assert all(r["score"] == r["gold_score"] for r in train_rows)  # the grader is the reward and the gold
    assert all(0 <= r["mismatch_mean_abs_logp"] <= r["mismatch_max_abs_logp"] < 1e-3 for r in train_rows)
    assert all(0 <= r["informative_fraction"] <= 1 and 0 <= r["truncated_fraction"] <= 1 for r in train_rows)
    evaluation = json.loads((tmp_path / "rl" / "evaluation.json").read_text())
    metrics = evaluation["metrics"]
    assert metrics["prompts"] == 2 * len(held_out) and metrics["distinct_prompts"] == len(held_out)
    assert [s["prompt"] for s in evaluation["samples"]] == held_out * 2
    assert metrics["gold_score"] == metrics["rm_score"] and metrics["gold_score_ci95"] >= 0
    assert metrics["gold_gain"] == pytest.approx(metrics["gold_score"] - metrics["reference_gold_score"])
    assert "exact match" in (tmp_path / "report.md").read_text()


def test_ppo_against_a_reward_model_ensemble_end_to_end(tmp_path, tiny_policy):
    """rl.reward_models=2: a second reward model trained from the next seeds on the same feedback, and PPO's
    reward their pessimistic combination, which is at most their mean."""
    from rlhf_jax.runs import pipeline

    overrides = [f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
                 "--config.rl.reward_models=2", "--config.rl.ensemble=pessimistic", "--config.rl.iterations=2"]
    cli("run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(tmp_path), *overrides)
    for member in ("reward_model", "reward_model_1"):
        assert (tmp_path / member / "evaluation.json").exists(), member
    exp = load_config(os.path.join(CONFIGS, "tiny_ppo.py"), overrides)
    one = pipeline.load_reward_model(reward_training.with_feedback_data(exp, str(tmp_path)),
                                     str(tmp_path / "reward_model"),
                                     json.loads((tmp_path / "reward_model" / "evaluation.json").read_text())[
                                         "normalization"])
    ensemble = pipeline.reward_scorer(exp, str(tmp_path), {"normalization": {"gain": one.gain, "bias": one.bias}})
    prompts, responses = ["The film is"] * 4, [" good", " bad", " long and dull", " a joy"]
    members = np.stack([m.score(prompts, responses) for m in ensemble.members])
    assert not np.allclose(members[0], members[1])  # other seeds, another model
    np.testing.assert_allclose(ensemble.score(prompts, responses), members.mean(0) - members.std(0), rtol=1e-5)
    assert [r["step"] for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "train"] == [1, 2]


def test_reinforce_on_language_feedback_end_to_end(tmp_path, tiny_policy):
    cli("run", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(tmp_path),
        f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
        "--config.rl.algorithm=reinforce", "--config.rl.reward=language", "--config.rl.epochs=1",
        "--config.rl.iterations=2")
    assert not (tmp_path / "reward_model").exists()  # the comments are the reward: no reward model trained
    train_rows = [r for r in read_metrics(str(tmp_path / "rl")) if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(-1 <= r["score"] <= 1 for r in train_rows)  # VADER of a comment
    evaluation = json.loads((tmp_path / "rl" / "evaluation.json").read_text())["metrics"]
    assert 0 <= evaluation["gold_win_rate"] <= 1


@pytest.mark.parametrize("kind,file", [("language", "comment_scores.jsonl"), ("ratings", "ratings.jsonl")])
def test_regression_reward_model_on_its_feedback_kind(tmp_path, tiny_policy, kind, file):
    cli("run", "--config", os.path.join(CONFIGS, "tiny_rm.py"), "--workdir", str(tmp_path),
        f"--config.feedback.policy={tiny_policy}", f"--config.feedback.kind={kind}",
        "--config.train.task=reward_regression")
    rows = read_jsonl(tmp_path / "feedback" / file)
    if kind == "language":  # the comment's VADER score, not the response's
        language = read_jsonl(tmp_path / "feedback" / "language.jsonl")
        assert [r["response"] for r in rows] == [r["response"] for r in language]
        expected = VaderScorer().score(None, [r["feedback"] for r in language])
    else:  # tiny_rm's simulated human (seed 0) rating the response 1-7
        human = SimulatedHuman(VaderScorer(), temperature=0.28, seed=0)
        expected = human.rate([r["prompt"] for r in rows], [r["response"] for r in rows])["ratings"]
    np.testing.assert_allclose([r["score"] for r in rows], expected)
    pairs = read_jsonl(tmp_path / "feedback" / "preferences.jsonl")
    assert {r["chosen"] for r in pairs} | {r["rejected"] for r in pairs} <= {r["response"] for r in rows}
    splits = {}
    for row in pairs + rows:  # a prompt's pairs and per-sample rows share one split
        splits.setdefault(row["prompt"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    config = json.loads((tmp_path / "reward_model" / "config.json").read_text())
    assert config["data"]["dataset"] == "ratings" and config["data"]["source"].endswith(file)
    evaluation = json.loads((tmp_path / "reward_model" / "evaluation.json").read_text())
    assert evaluation["test"]["count"] > 0  # evaluated on the labelled pairs of the same samples


def test_two_round_loop_trains_round_two_on_both_rounds(tmp_path, tiny_policy):
    result = cli("loop", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(tmp_path), "--rounds", "2",
                 f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
                 "--config.rl.iterations=1")
    own = [read_jsonl(tmp_path / f"round_{r}" / "feedback" / "preferences.jsonl") for r in range(2)]
    assert own[0] and own[1] and not {r["id"] for r in own[0]} & {r["id"] for r in own[1]}
    # Round 1 samples from round 0's PPO policy, not the starting one.
    assert {r["source"] for r in own[1]} == {str(tmp_path / "round_0" / "rl" / "policy")}
    assert {r["prompt"] for r in own[0]} != {r["prompt"] for r in own[1]}
    both = read_jsonl(tmp_path / "round_1" / "all_feedback.jsonl")
    assert [r["id"] for r in both] == [r["id"] for r in own[0] + own[1]]
    config = json.loads((tmp_path / "round_1" / "reward_model" / "config.json").read_text())
    assert config["data"]["source"] == str(tmp_path / "round_1" / "all_feedback.jsonl")
    assert json.loads((tmp_path / "round_1" / "rl" / "config.json").read_text())["rl"]["policy"] == \
        str(tmp_path / "round_0" / "rl" / "policy")
    history = json.loads((tmp_path / "rounds.json").read_text())
    assert [h["round"] for h in history] == [0, 1]
    assert [h["feedback_rows"] for h in history] == [len(own[0]), len(own[0]) + len(own[1])]
    assert (tmp_path / "rounds.png").stat().st_size > 0 and (tmp_path / "round_1" / "report.md").exists()
    assert "round 1: gold win rate" in result.stdout


def test_loop_with_people_waits_for_their_labels(tmp_path, tiny_policy):
    """labels_from='app': the loop writes the round's queue and stops with the commands to run."""
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_jax.cli", "loop", "--config", os.path.join(CONFIGS, "tiny_ppo.py"),
         "--workdir", str(tmp_path), "--rounds", "1", f"--config.rl.policy={tiny_policy}",
         f"--config.feedback.policy={tiny_policy}", "--config.feedback.labels_from=app"],
        capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "rlhf-jax label serve" in result.stdout and "rlhf-jax label export" in result.stdout
    queue = read_jsonl(tmp_path / "round_0" / "queue.jsonl")
    assert queue and all(len(item["responses"]) >= 2 for item in queue)


def test_ppo_remat_changes_no_number_and_bfloat16_stays_close(tiny_policy):
    """rl.model_config switches the policy, reference and value model to activation checkpointing or
    bfloat16 compute (float32 parameters and Adam state) for the rollout and the update."""
    scores_B = np.linspace(-1.0, 1.0, 16).astype(np.float32)
    plain_change, plain = likelihood_change(tiny_policy, "ppo", scores_B)
    remat_change, remat = likelihood_change(tiny_policy, "ppo", scores_B, "--config.rl.model_config={'remat': 'full'}")
    # A sequence's log-likelihood is a float32 sum near -65 nats (6 tokens of a random 49k-vocabulary
    # model), whose spacing is 7.6e-6: its change may differ by that rounding, measured 1 ulp; allow 2.
    np.testing.assert_allclose(remat_change, plain_change, rtol=0, atol=2 * np.spacing(np.float32(65)))
    for name, value in plain.items():
        assert float(remat[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), name
    bf16_change, bf16 = likelihood_change(
        tiny_policy, "ppo", scores_B, "--config.rl.model_config={'dtype': 'bfloat16'}"
    )
    # Measured: the loss within 1e-6 relative, the likelihood changes within 1.3% of the largest; ~3x margin.
    assert float(bf16["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    assert np.abs(bf16_change - plain_change).max() < 0.04 * np.abs(plain_change).max()


@pytest.mark.parametrize("task,overrides", [("dpo", ()), ("ipo", ()), ("kto", ()), ("simpo", ()),
                                            ("dpo", ("--config.data.max_response_length=5",))])
def test_preference_optimisation_end_to_end(tmp_path, tiny_policy, task, overrides):
    """The tiny policy trained on the tiny feedback's pairs by DPO / IPO / KTO / SimPO, then evaluated as PPO
    is. Before the first step the policy is its own reference, so every pair's log-ratios are equal: the
    stored reference log-probs must be those of exactly these rows, and DPO's loss is then log 2 (IPO's
    1 / (2 beta)^2, KTO's 1/2), with zero margin. SimPO has no reference: its loss must only fall. With
    data.max_response_length (6 sampled tokens and EOS, cut to 5), the LM head at the responses alone: the same."""
    import math

    cli("run", "--config", os.path.join(CONFIGS, "tiny_dpo.py"), "--workdir", str(tmp_path),
        f"--config.model.source={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
        f"--config.rl.policy={tiny_policy}", f"--config.train.task={task}", *overrides)
    rows = read_metrics(str(tmp_path / "policy_training"))
    start = next(r for r in rows if r["split"] == "validation" and r["step"] == 0)
    expected = {"dpo": math.log(2), "ipo": (1 / (2 * 0.1)) ** 2, "kto": 0.5, "simpo": start["loss"]}[task]
    assert start["loss"] == pytest.approx(expected, rel=1e-6)
    assert task == "simpo" or start["margin"] == pytest.approx(0, abs=1e-6)
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["loss"] < expected  # the pairs' loss went down
    evaluation = json.loads((tmp_path / "policy_training" / "evaluation.json").read_text())["metrics"]
    assert evaluation["prompts"] == 24 and 0 <= evaluation["gold_win_rate"] <= 1 and "rm_score" not in evaluation
    assert (tmp_path / "policy_training" / "policy" / "config.json").exists()
    assert (tmp_path / "report.md").read_text().startswith(f"# {task.upper()} run report")


def test_reference_logprobs_are_kept_by_what_they_depend_on(tmp_path, tiny_policy):
    """The reference pass is stored under a key of its inputs: a second split of the same rows and
    parameters reads the file (proved by doctoring it), other parameters make a pass and file of their own."""
    from rlhf_jax import sharding
    from rlhf_jax.config import MeshConfig
    from rlhf_jax.data.pipeline import Split
    from rlhf_jax.models import from_pretrained, load_tokenizer
    from rlhf_jax.rl import preference

    tokenizer = load_tokenizer(tiny_policy)
    pairs = [{"prompt": f"Review {i}:", "chosen": " fine and warm", "rejected": " dull"} for i in range(12)]
    mesh_cfg = MeshConfig()
    layout = sharding.Layout.of(mesh_cfg)
    graphdef, params = nnx.split(from_pretrained(tiny_policy, head="causal_lm"))

    def columns(params):
        split = Split(pairs, preference.tokenize_preference_sequences, tokenizer, 16, None)
        preference.add_reference_logprobs(split, graphdef, params, layout, 8, str(tmp_path))
        return split.columns

    first = columns(params)
    [stored] = list(tmp_path.iterdir())
    np.savez(stored, **{name: column + 1.0 for name, column in first.items()})  # a pass would not give these
    assert all(np.array_equal(columns(params)[name], first[name] + 1.0) for name in first)
    shifted = columns(jax.tree.map(lambda x: x * 1.01, params))
    assert len(list(tmp_path.iterdir())) == 2 and not np.array_equal(shifted["ref_chosen"], first["ref_chosen"])


def test_best_of_n_picks_match_a_loop_and_the_analytic_kl():
    from rlhf_jax.runs import best_of_n

    rng = np.random.default_rng(5)
    reward, gold = rng.normal(size=(7, 8)), rng.normal(size=(7, 8))
    for row in best_of_n.choose(reward, gold, (1, 3, 8)):
        n, picked_gold, wins = row["n"], [], 0.0
        for p in range(7):
            best = max(range(n), key=lambda j: reward[p, j])
            picked_gold.append(gold[p, best])
            wins += 1.0 if gold[p, best] > gold[p, 0] else (0.5 if gold[p, best] == gold[p, 0] else 0.0)
        assert row["gold_score"] == pytest.approx(np.mean(picked_gold)) and row["gold_win_rate"] == pytest.approx(
            wins / 7
        )
        assert row["kl"] == pytest.approx(np.log(n) - (n - 1) / n)
    assert best_of_n.analytic_kl(1) == 0.0 and best_of_n.analytic_kl(2) == pytest.approx(0.19314718, abs=1e-8)


def test_best_of_n_end_to_end(tmp_path, tiny_policy):
    out = cli("best-of-n", "--config", os.path.join(CONFIGS, "tiny_ppo.py"), "--workdir", str(tmp_path), "--n", "4,1,2",
              f"--config.rl.policy={tiny_policy}", f"--config.feedback.policy={tiny_policy}").stdout
    results = json.loads((tmp_path / "best_of_n.json").read_text())["results"]
    assert [r["n"] for r in results] == [1, 2, 4] and "| 4 |" in out
    assert results[0]["gold_win_rate"] == 0.5 and results[0]["kl"] == 0.0  # n = 1 is the reference sample
    rm = [r["rm_score"] for r in results]
    assert rm[0] <= rm[1] <= rm[2]  # the best of more draws scores at least as high under the picking model


EXAMPLE = os.path.join(CONFIGS, "..", "docs", "examples", "movie_chat_preferences.jsonl")


def example_prompts(tokenizer_dir: str, split: str) -> set[str]:
    from rlhf_jax.data import formats
    from rlhf_jax.models import load_tokenizer

    rows = formats.read_feedback(EXAMPLE, "prompt", formats.Renderer(load_tokenizer(tokenizer_dir)))
    return {r["prompt"] for r in rows if r["split"] == split}


@pytest.mark.parametrize("config", ["tiny_ppo.py", "tiny_dpo.py"])
def test_the_worked_example_end_to_end(tmp_path, tiny_policy, config):
    """docs/data.md's worked example on the tiny models: trl's conversational preference file, no ids, trains
    the reward model (PPO) or the policy (DPO) with nothing collected; PPO's rollouts and both evaluations
    take the file's prompts in SmolLM2's chat template, the evaluation its held-out ones."""
    overrides = [f"--config.feedback.policy={tiny_policy}", f"--config.rl.policy={tiny_policy}",
                 f"--config.feedback.source={EXAMPLE}", f"--config.rl.prompts={EXAMPLE}",
                 "--config.rl.prompt_tokens=48", "--config.rl.eval_prompts=32"]
    if config == "tiny_dpo.py":
        overrides += [f"--config.model.source={tiny_policy}", "--config.data.max_length=112"]
    cli("run", "--config", os.path.join(CONFIGS, config), "--workdir", str(tmp_path), *overrides)
    assert not (tmp_path / "feedback").exists()  # nothing sampled or labelled
    stage = tmp_path / ("rl" if config == "tiny_ppo.py" else "policy_training")
    evaluation = json.loads((stage / "evaluation.json").read_text())
    held_out = example_prompts(tiny_policy, "test")
    assert len(held_out) == 24 and {s["prompt"] for s in evaluation["samples"]} == held_out  # all, cycled to 32
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in held_out)
    assert evaluation["metrics"]["prompts"] == 32 and 0 <= evaluation["metrics"]["gold_win_rate"] <= 1
    report = (tmp_path / "report.md").read_text()
    assert "movie_chat_preferences.jsonl" in report
    if config == "tiny_ppo.py":
        test = json.loads((tmp_path / "reward_model" / "evaluation.json").read_text())["test"]
        assert test["count"] == 24 and "gold_accuracy" not in test  # the file's 24 test pairs carry no gold
        trained_on = {json.loads(line)["prompt"] for line in (stage / "samples.jsonl").read_text().splitlines()}
        assert trained_on and trained_on <= example_prompts(tiny_policy, "train")
    else:
        start = next(r for r in read_metrics(str(stage)) if r["split"] == "validation" and r["step"] == 0)
        assert start["loss"] == pytest.approx(np.log(2), rel=1e-6)  # the policy is its own reference at step 0


def test_kto_on_an_unpaired_file_end_to_end(tmp_path, tiny_policy):
    """trl's unpaired form (prompt, completion, label), conversational, imbalanced: KTO reads it with no
    pairs. At step 0 the policy is its own reference, every log-ratio 0, so the loss is exactly 1/2."""
    rows = [json.loads(line) for line in open(EXAMPLE)]
    unpaired = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows]
    unpaired += [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows[::3]]
    path = tmp_path / "unpaired.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in unpaired))
    cli("run", "--config", os.path.join(CONFIGS, "tiny_dpo.py"), "--workdir", str(tmp_path / "run"),
        f"--config.model.source={tiny_policy}", f"--config.feedback.policy={tiny_policy}",
        f"--config.rl.policy={tiny_policy}", "--config.train.task=kto_unpaired", f"--config.feedback.source={path}",
        "--config.data.max_length=112", f"--config.rl.prompts={EXAMPLE}", "--config.rl.prompt_tokens=48",
        "--config.rl.eval_prompts=24")
    metrics = read_metrics(str(tmp_path / "run" / "policy_training"))
    start = next(r for r in metrics if r["split"] == "validation" and r["step"] == 0)
    assert start["loss"] == pytest.approx(0.5, rel=1e-6)
    assert [r for r in metrics if r["split"] == "train"][-1]["loss"] < 0.5
    evaluation = json.loads((tmp_path / "run" / "policy_training" / "evaluation.json").read_text())
    assert evaluation["metrics"]["prompts"] == 24 and not (tmp_path / "run" / "feedback").exists()


def test_kto_on_unpaired_rows_needs_a_file(tmp_path, tiny_policy):
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "run", "--config",
                             os.path.join(CONFIGS, "tiny_dpo.py"), "--workdir", str(tmp_path),
                             f"--config.model.source={tiny_policy}", f"--config.rl.policy={tiny_policy}",
                             "--config.train.task=kto_unpaired"], capture_output=True, text=True)
    assert result.returncode == 2 and "config field 'feedback.source': kto_unpaired learns" in result.stderr
    assert not os.listdir(tmp_path)
