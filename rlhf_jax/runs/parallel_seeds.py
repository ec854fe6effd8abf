"""Seeds in parallel: S seeds of one online-RL config trained as one program, the seed a leading vmapped
axis of the state and of every batch (PureJaxRL-style; ``ppo.jit_seed_functions``); the frozen reference
is shared. Each seed keeps its own workdir with the files of a run alone (checkpoints, metrics.jsonl,
samples.jsonl, config.json, ppo.png), so its evaluation, a resume alone, or a comparison reads it as if it
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

from rlhf_jax import ppo, sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.config import ConfigError, ExperimentConfig, to_dict
from rlhf_jax.data.pipeline import Batches
from rlhf_jax.files import write_json
from rlhf_jax.metrics import MetricsWriter, truncate_after
from rlhf_jax.plots import plot_ppo
from rlhf_jax.runs.policy_training import check_resumable, encode_prompts, log_samples, prepare, prompt_rows
from rlhf_jax.sampling import decode_responses


def _check_same_but_seed(exps: Sequence[ExperimentConfig]) -> None:
    unseeded = [to_dict(dataclasses.replace(e, ppo=dataclasses.replace(e.ppo, seed=0))) for e in exps]
    if any(u != unseeded[0] for u in unseeded):
        raise ConfigError("seeds in parallel: the configs may differ in ppo.seed only")
    if len({e.ppo.seed for e in exps}) != len(exps):
        raise ConfigError(f"seeds in parallel: repeated seeds {[e.ppo.seed for e in exps]}")


def _restore(checkpoints: list[Checkpointer], exps, template, state_sharding):
    """Every seed's state at the latest iteration that all of them have a checkpoint of (one seed's save
    may have failed, e.g. on a full disk), or the fresh states when there is none."""
    common = set.intersection(*(set(c.steps()) for c in checkpoints))
    if not common:
        if any(c.steps() for c in checkpoints):
            raise ConfigError(f"seeds in parallel: the seeds have no checkpoint of one iteration in common "
                              f"({[c.steps() for c in checkpoints]}); run them one by one "
                              "(compare.parallel_seeds=False) or in a new workdir")
        tx = ppo.make_optimizer(exps[0].ppo)  # the initial parameters do not depend on the seed (zero value head)
        return [jax.device_put(ppo.PPOState.create(template.params, tx, e.ppo), state_sharding) for e in exps], None
    step, states = max(common), []
    for checkpoint, exp in zip(checkpoints, exps):
        for later in [s for s in checkpoint.steps() if s > step]:  # redone from ``step``, as the other seeds
            checkpoint.delete(later)
        state, meta = checkpoint.restore(step, template, state_sharding)
        check_resumable(meta["config"], to_dict(exp.ppo))
        states.append(state)
    return states, step


def train_seeds(exps: Sequence[ExperimentConfig], workdirs: Sequence[str], reward_model, gold,
                prompts: Sequence[Sequence[str]], progress: bool = True) -> None:
    """Train ``exps`` (one config at S seeds) to ``ppo.iterations`` as one vmapped program, seed s in
    ``workdirs[s]`` on the training prompts ``prompts[s]``; the reward model and gold scorer as
    ``policy_training.train`` takes them."""
    if jax.process_count() > 1:
        raise ConfigError("seeds in parallel run as one process")
    _check_same_but_seed(exps)
    cfg, seeds = exps[0].ppo, len(exps)
    run = prepare(exps[0], None)
    checkpoints = [Checkpointer(os.path.join(w, "checkpoints"), keep=2) for w in workdirs]
    states, start = _restore(checkpoints, exps, run.state, run.state_sharding)
    state = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), ppo.with_seed_axis(run.state_sharding))
    ref_sharding = sharding.state_shardings(run.ref_params, run.mesh, run.rules)
    functions = ppo.jit_seed_functions(ppo.Programs(run.graphdef, run.ref_graphdef, cfg, run.sampling),
                                       run.state_sharding, ref_sharding, run.mesh, run.rules)
    batches = [Batches(len(p), cfg.rollout_prompts, e.ppo.seed) for p, e in zip(prompts, exps)]
    writers = [MetricsWriter(w, resume_step=start) for w in workdirs]
    for exp, workdir in zip(exps, workdirs):
        truncate_after(os.path.join(workdir, "samples.jsonl"), start or 0)
        write_json(os.path.join(workdir, "config.json"), to_dict(exp))
    iteration = start or 0
    bar = tqdm(total=cfg.iterations, initial=iteration, disable=not progress, desc=f"{cfg.algorithm} x {seeds} seeds",
               dynamic_ncols=True)
    while iteration < cfg.iterations:
        tick = time.perf_counter()
        encoded = [encode_prompts(run.tokenizer, [p[i] for i in prompt_rows(b(iteration), cfg)], cfg.prompt_tokens)
                   for p, b in zip(prompts, batches)]
        ids_SxBxP, mask_SxBxP = (np.stack([arrays[k] for arrays, _ in encoded]) for k in (0, 1))
        experience = functions.rollout(state.params, run.ref_params, ids_SxBxP, mask_SxBxP,
                                       jax.vmap(ppo.rollout_key)(state.rng))
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
        for s, (writer, workdir) in enumerate(zip(writers, workdirs)):
            row = {name: float(value[s]) for name, value in metrics.items()}
            writer.write(iteration, "train", {**row, "gold_score": float(gold_SxB[s].mean()),
                                              "seconds_per_iteration": seconds})
            log_samples(os.path.join(workdir, "samples.jsonl"), iteration, texts[s], responses[s], scores_SxB[s],
                        gold_SxB[s], cfg.log_samples)
        bar.update(1)
        if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
            for s, (checkpoint, exp) in enumerate(zip(checkpoints, exps)):
                alone = jax.device_put(jax.tree.map(lambda x: x[s], state), run.state_sharding)
                checkpoint.save(iteration, alone, {"iteration": iteration, "config": to_dict(exp.ppo)})
    bar.close()
    for checkpoint, writer, workdir in zip(checkpoints, writers, workdirs):
        checkpoint.wait()
        checkpoint.close()
        writer.close()
        plot_ppo(workdir)
