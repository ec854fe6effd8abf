"""Seeds in parallel: S seeds of one online-RL config trained as one program, the seed a leading vmapped
axis of the state and of every batch (PureJaxRL-style; ``online.jit_seed_functions``); the frozen reference
is shared. Each seed keeps its own workdir with the files of a run alone (checkpoints, metrics.jsonl,
samples.jsonl, config.json, training.png), so its evaluation, a resume alone, or a comparison reads it as if it
had run alone: seed s computes what the run of seed s alone computes, to float32 rounding
(tests/test_ppo.py). The program holds S copies of the parameters and Adam state: use it where
they fit (``compare.parallel_seeds``), else run the seeds one after another.

One process. A resume starts from the latest iteration every seed has a checkpoint of. Each seed's
``seconds_per_iteration`` is its share, 1/S, of the iteration's wall time.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rlhf_jax import preemption
from rlhf_jax.rl import online
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.config import ConfigError, ExperimentConfig, to_dict
from rlhf_jax.runs.policy_training import Track, check_resumable, encode_prompts, prepare
from rlhf_jax.sampling import decode_responses


def _check_same_but_seed(exps: Sequence[ExperimentConfig]) -> None:
    unseeded = [to_dict(dataclasses.replace(e, rl=dataclasses.replace(e.rl, seed=0))) for e in exps]
    if any(u != unseeded[0] for u in unseeded):
        raise ConfigError("seeds in parallel: the configs may differ in rl.seed only")
    if len({e.rl.seed for e in exps}) != len(exps):
        raise ConfigError(f"seeds in parallel: repeated seeds {[e.rl.seed for e in exps]}")
    if exps[0].rl.adapters is not None:
        raise ConfigError("config field 'rl.lora': seeds in parallel would stack a copy of the frozen base per "
                          "seed; run LoRA seeds one after another (compare.parallel_seeds False)")


def _restore(checkpoints: list[Checkpointer], exps, template, state_sharding):
    """Every seed's state at the latest iteration that all of them have a checkpoint of (one seed's save
    may have failed, e.g. on a full disk), or the fresh states when there is none."""
    common = set.intersection(*(set(c.steps()) for c in checkpoints))
    if not common:
        if any(c.steps() for c in checkpoints):
            raise ConfigError(f"seeds in parallel: the seeds have no checkpoint of one iteration in common "
                              f"({[c.steps() for c in checkpoints]}); run them one by one "
                              "(compare.parallel_seeds=False) or in a new workdir")
        tx = online.make_optimizer(exps[0].rl)  # the initial parameters do not depend on the seed (zero value head)
        return [jax.device_put(online.PolicyState.create(template.params, tx, e.rl), state_sharding) for e in exps], None
    step, states = max(common), []
    for checkpoint, exp in zip(checkpoints, exps):
        for later in [s for s in checkpoint.steps() if s > step]:  # redone from ``step``, as the other seeds
            checkpoint.delete(later)
        state, meta = checkpoint.restore(step, template, state_sharding)
        check_resumable(meta["config"], to_dict(exp.rl))
        states.append(state)
    return states, step


def seed_state(state, s: int, shardings):
    """Seed s's state alone, on the single-seed shardings: a checkpoint as of a run alone."""
    return jax.device_put(jax.tree.map(lambda x: x[s], state), shardings)


def train_seeds(exps: Sequence[ExperimentConfig], workdirs: Sequence[str], reward_model, gold,
                prompts: Sequence[Sequence[str]], progress: bool = True) -> None:
    """Train ``exps`` (one config at S seeds) to ``rl.iterations`` as one vmapped program, seed s in
    ``workdirs[s]`` on the training prompts ``prompts[s]``; the reward model and gold scorer as
    ``policy_training.train`` takes them."""
    if jax.process_count() > 1:
        raise ConfigError("seeds in parallel run as one process")
    _check_same_but_seed(exps)
    cfg, seeds = exps[0].rl, len(exps)
    run = prepare(exps[0], None)
    checkpoints = [Checkpointer(os.path.join(w, "checkpoints"), keep=2) for w in workdirs]
    states, start = _restore(checkpoints, exps, run.state, run.state_sharding)
    state = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), online.with_seed_axis(run.state_sharding))
    ref_sharding = run.layout.shardings(run.ref_params)
    functions = online.jit_seed_functions(online.Programs(run.graphdef, run.ref_graphdef, cfg, run.sampling),
                                       run.state_sharding, ref_sharding, run.layout)
    tracks = [Track(e, w, p, c, start) for e, w, p, c in zip(exps, workdirs, prompts, checkpoints)]
    iteration = start or 0
    bar = tqdm(total=cfg.iterations, initial=iteration, disable=not progress, desc=f"{cfg.algorithm} x {seeds} seeds",
               dynamic_ncols=True)
    while iteration < cfg.iterations:
        tick = time.perf_counter()
        encoded = [encode_prompts(run.tokenizer, track.prompt_texts(iteration), cfg.prompt_tokens) for track in tracks]
        ids_SxBxP, mask_SxBxP = (np.stack([arrays[k] for arrays, _ in encoded]) for k in (0, 1))
        experience = functions.rollout(state.params, run.ref_params, ids_SxBxP, mask_SxBxP,
                                       jax.vmap(online.rollout_key)(state.rng))
        tokens_SxBxN = np.asarray(experience.ids_BxT[:, :, cfg.prompt_tokens:])
        response_mask_SxBxN = np.asarray(experience.response_mask_BxN)
        responses = [decode_responses(run.tokenizer, tokens_SxBxN[s], response_mask_SxBxN[s]) for s in range(seeds)]
        texts = [batch_prompts for _, batch_prompts in encoded]
        scores_SxB = np.asarray([reward_model.score(texts[s], responses[s]) for s in range(seeds)], np.float32)
        gold_SxB = np.asarray([gold.score(texts[s], responses[s]) for s in range(seeds)], np.float64)
        state, metrics = functions.update(state, experience, scores_SxB)
        metrics = jax.device_get(metrics)
        iteration += 1
        seconds = (time.perf_counter() - tick) / seeds
        for s, track in enumerate(tracks):
            row = {name: float(value[s]) for name, value in metrics.items()}
            track.record(iteration, {**row, "gold_score": float(gold_SxB[s].mean()), "seconds_per_iteration": seconds},
                         texts[s], responses[s], scores_SxB[s], gold_SxB[s])
            if track.due(iteration, cfg.iterations):
                track.save(iteration, seed_state(state, s, run.state_sharding), cfg.iterations)
        bar.update(1)
        if iteration < cfg.iterations:
            preemption.stop_here(lambda: [track.stop(iteration, seed_state(state, s, run.state_sharding)) for s, track in enumerate(tracks)],
                                 f"{tracks[0].stopped(iteration)} (and the other seeds' beside it)")
    bar.close()
    for track in tracks:
        track.close()
