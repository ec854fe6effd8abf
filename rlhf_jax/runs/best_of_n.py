"""Best-of-n as a policy (Nakano et al. 2021; Gao et al. 2022): sample n continuations of each held-out
opening from the reference, keep the one the reward model scores highest. No training; its KL to the
reference has a closed form (for distinct samples, Stiennon et al. 2020, appendix):

    KL(best-of-n || reference) = log n - (n - 1) / n

so n traces a gold-reward-against-KL curve to set beside the RL policies'. Draw 0 of every opening uses
the key of the reference sample in ``policy_training.evaluate``: the win rates are against the same
reference samples as PPO's.

    rlhf-jax best-of-n --config configs/sentiment_quick.py --workdir runs/sentiment_quick [--n 1,2,4,8,16]
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from rlhf_jax import preemption
from rlhf_jax.config import ConfigError, ExperimentConfig
from rlhf_jax.distributed import is_main_process
from rlhf_jax.feeding import Feed
from rlhf_jax.files import write_json
from rlhf_jax.runs import pipeline, policy_training, reward_training
from rlhf_jax.sampling import generate


def sample_counts(text: str) -> list[int]:
    """``--n 1,2,4``: the sample counts, sorted, each >= 1."""
    try:
        ns = sorted({int(n) for n in text.split(",")})
    except ValueError:
        raise ConfigError(f"--n {text!r}: write sample counts such as 1,2,4,8,16") from None
    if ns[0] < 1:
        raise ConfigError(f"--n {text!r}: every n must be >= 1")
    return ns


def analytic_kl(n: int) -> float:
    """KL(best-of-n || reference) in nats: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def choose(reward_PxN: np.ndarray, gold_PxN: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """Per n: the gold and reward scores of the reward model's pick among the first n draws of each
    prompt, its gold win rate (ties half) against draw 0 (the reference sample), and the analytic KL."""
    rows = np.arange(len(reward_PxN))
    out = []
    for n in ns:
        pick = np.argmax(reward_PxN[:, :n], axis=1)
        gold, reference = gold_PxN[rows, pick], gold_PxN[:, 0]
        out.append({"n": n, "kl": analytic_kl(n), "gold_score": float(gold.mean()),
                    "gold_win_rate": float(np.mean((gold > reference) + 0.5 * (gold == reference))),
                    "rm_score": float(reward_PxN[rows, pick].mean())})
    return out


def evaluate(exp: ExperimentConfig, reward_model, gold, prompts: Sequence[str], ns: Sequence[int] = (1, 2, 4, 8, 16),
             seed: int = 1234) -> list[dict]:
    run = policy_training.prepare(exp, None)
    cfg = run.cfg
    feed = Feed.of(run.layout, cfg.eval_batch_size)
    reference = nnx.merge(run.ref_graphdef, run.ref_params)
    draws = max(ns)
    local = {"prompt": [], "real": [], "responses": [[] for _ in range(draws)]}  # this process's rows
    starts = range(0, len(prompts), cfg.eval_batch_size)
    for start in tqdm(starts, desc=f"best-of-{draws}", disable=not is_main_process(), dynamic_ncols=True):
        rows = np.arange(start, start + cfg.eval_batch_size)[feed.local]
        arrays, texts = policy_training.encode_prompts(run.tokenizer, [prompts[i % len(prompts)] for i in rows],
                                                       cfg.prompt_tokens)
        ids, mask = feed.put(arrays)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), start)  # policy_training.evaluate's reference key
        for draw in range(draws):
            out = generate(reference, ids, mask, key if draw == 0 else jax.random.fold_in(key, draw), run.sampling)
            local["responses"][draw] += policy_training.responses_of(run, feed, (out.tokens_BxN, out.response_mask_BxN))
        local["prompt"] += texts
        local["real"] += (rows < len(prompts)).tolist()
    real = feed.gather(np.asarray(local["real"]))

    def scores(scorer) -> np.ndarray:  # [prompts, draws]
        local_PxN = np.stack([np.asarray(scorer.score(local["prompt"], r), np.float64) for r in local["responses"]], 1)
        return feed.gather(local_PxN)[real]

    return choose(scores(reward_model), scores(gold), ns)


def run(exp: ExperimentConfig, workdir: str, ns: Sequence[int]) -> list[dict]:
    """Best-of-n with the reward model trained in ``workdir`` (its stages are run or reused first)."""
    rm_results = reward_training.run(exp, workdir)
    reward_model = pipeline.reward_scorer(exp, workdir, rm_results)  # an ensemble with rl.reward_models > 1
    preemption.between_stages("the reward model")
    prompts = pipeline.held_out_prompts(exp)
    results = evaluate(exp, reward_model, pipeline.gold_of(exp), prompts, ns)
    if is_main_process():
        write_json(os.path.join(workdir, "best_of_n.json"), {"prompts": len(prompts), "results": results})
    return results


def table(results: list[dict]) -> str:
    lines = ["| n | KL (analytic) | gold score | gold win rate vs reference | reward-model score |", "|---|---|---|---|---|"]
    return "\n".join(lines + [f"| {r['n']} | {r['kl']:.3f} | {r['gold_score']:.3f} | {r['gold_win_rate']:.3f} | "
                               f"{r['rm_score']:.3f} |" for r in results])
