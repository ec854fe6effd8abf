"""The loop of online RL (any algorithm of rlhf_jax.rl.algorithms): prompts -> rollout -> reward model and gold scores -> update, with metrics, sample
logs, plots, orbax checkpoints and exact resume; and the held-out evaluation against the reference.

Prompt batches are a pure function of (seed, iteration), the PRNG key and the KL coefficient live in
the checkpointed state, so a run stopped after k iterations and resumed equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from rlhf_jax import preemption, sharding
from rlhf_jax.rl import maths, online
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.config import ConfigError, ExperimentConfig, RLConfig, check_same_run, to_dict
from rlhf_jax.data.pipeline import Batches
from rlhf_jax.distributed import is_main_process
from rlhf_jax.feeding import Feed
from rlhf_jax.files import write_json
from rlhf_jax.metrics import MetricsWriter, truncate_after
from rlhf_jax.models import from_pretrained, load_tokenizer, lora, pad_token_id
from rlhf_jax.models.convert import CheckpointError
from rlhf_jax.plots import plot_policy_training
from rlhf_jax.sampling import decode_responses, generate, left_pad

log = logging.getLogger(__name__)
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "log_samples", "eval_prompts", "eval_batch_size"}


def stage_dir(workdir: str) -> str:
    """WORKDIR/rl, the policy stage's directory (checkpoints, metrics, samples, evaluation, the policy); a
    workdir written while the stage was called ppo keeps its WORKDIR/ppo, so it resumes in place."""
    before = os.path.join(workdir, "ppo")
    if os.path.isdir(before) and not os.path.exists(os.path.join(workdir, "rl")):
        return before
    return os.path.join(workdir, "rl")


def encode_prompts(tokenizer, texts: Sequence[str], width: int) -> tuple[tuple[np.ndarray, np.ndarray], list[str]]:
    """Left-padded prompt (ids, mask) of a fixed width (longer prompts keep their first ``width`` tokens)
    and the prompt texts as the policy sees them."""
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"][:width] for text in texts]
    return left_pad(tokens, width, pad_token_id(tokenizer)), [tokenizer.decode(t) for t in tokens]


def prompt_rows(rows, cfg: RLConfig) -> np.ndarray:
    """A rollout's rows: each of the iteration's prompts k = samples_per_prompt times, groups contiguous."""
    return np.repeat(rows, cfg.samples_per_prompt)


@dataclasses.dataclass
class Track:
    """One seed's run on disk, as ``train`` keeps it and ``parallel_seeds`` keeps one per seed: its training
    prompts in their seeded order, metrics.jsonl, samples.jsonl, config.json, checkpoints and the plot."""

    exp: ExperimentConfig
    workdir: str
    prompts: Sequence[str]
    checkpoints: Checkpointer
    start: int | None  # the iteration resumed from, None for a fresh run

    def __post_init__(self):
        cfg = self.exp.rl
        self.batches = Batches(len(self.prompts), cfg.rollout_prompts, cfg.seed)
        self.writer = MetricsWriter(self.workdir, resume_step=self.start)
        self.samples_path = os.path.join(self.workdir, "samples.jsonl")
        if is_main_process():
            truncate_after(self.samples_path, self.start or 0)
            write_json(os.path.join(self.workdir, "config.json"), to_dict(self.exp))

    def prompt_texts(self, iteration: int, rows: slice = slice(None)) -> list[str]:
        """The rollout's prompt texts at ``iteration`` (each k = samples_per_prompt times), or its ``rows``."""
        return [self.prompts[i] for i in prompt_rows(self.batches(iteration), self.exp.rl)[rows]]

    def record(self, iteration: int, row: dict, prompts, responses, scores, gold_scores) -> None:
        """The iteration's metrics row; on process 0 its first samples too (the batch's first rows)."""
        self.writer.write(iteration, "train", row)
        if is_main_process():
            log_samples(self.samples_path, iteration, prompts, responses, scores, gold_scores, self.exp.rl.log_samples)

    def due(self, iteration: int, end: int) -> bool:
        """Whether ``iteration`` is checkpointed: every ``checkpoint_every`` iterations and at ``end``."""
        return iteration % self.exp.rl.checkpoint_every == 0 or iteration == end

    def meta(self, iteration: int) -> dict:
        return {"iteration": iteration, "config": to_dict(self.exp.rl)}

    def save(self, iteration: int, state, end: int) -> None:
        if self.due(iteration, end):
            self.checkpoints.save(iteration, state, self.meta(iteration))

    def stop(self, iteration: int, state) -> None:
        """A preempted run's last acts: this iteration's checkpoint, final on disk; every file closed."""
        self.checkpoints.save_now(iteration, state, self.meta(iteration))
        self.close()

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.writer.close()
        if is_main_process():
            plot_policy_training(self.workdir)

    def stopped(self, iteration: int) -> str:
        return (f"{self.exp.rl.algorithm}: stopped at iteration {iteration} of {self.exp.rl.iterations}, saved in "
                f"{self.checkpoints.directory}")


def log_samples(path: str, iteration: int, prompts, responses, scores, gold_scores, count: int) -> None:
    """Append the first ``count`` samples of an iteration to samples.jsonl, with their two scores."""
    with open(path, "a") as f:
        for prompt, response, score, gold in list(zip(prompts, responses, scores, gold_scores))[:count]:
            f.write(json.dumps({"step": iteration, "prompt": prompt, "response": response, "rm_score": float(score),
                                "gold_score": float(gold)}) + "\n")


def responses_of(run: PolicySetup, feed: Feed, generated) -> list[str]:
    """This process's rows of a batch of generated response tokens ([B, N] tokens and mask), decoded."""
    tokens_BxN, mask_BxN = feed.take(generated)
    return decode_responses(run.tokenizer, tokens_BxN, mask_BxN)


@dataclasses.dataclass
class PolicySetup:
    cfg: RLConfig
    layout: sharding.Layout
    tokenizer: object
    graphdef: object
    ref_graphdef: object
    ref_params: object
    state: online.PolicyState
    state_sharding: online.PolicyState
    functions: online.CompiledPrograms
    sampling: object
    checkpoints: Checkpointer | None


def load_actor_critic(cfg: RLConfig, layout: sharding.Layout | None = None):
    """(ActorCritic, frozen reference or None, tokenizer) from the policy's weights; with a layout, born on
    its mesh. With ``rl.lora`` the policy carries adapters and there is no reference model: the policy's
    base with the adapters off is the reference."""
    overrides = dict(cfg.model_config)  # compute dtype, remat
    policy = from_pretrained(cfg.policy, head="causal_lm", layout=layout, **overrides)
    adapters = cfg.adapters
    if adapters is not None:
        policy, reference = lora.apply(policy, adapters, seed=cfg.seed), None
    else:
        reference = from_pretrained(cfg.reference or cfg.policy, head="causal_lm", layout=layout, **overrides)
    value_model = (from_pretrained(cfg.policy, head="scalar", pooling="none", layout=layout, **overrides)
                   if cfg.value == "separate" else None)
    with nnx.use_eager_sharding(False):  # placed on the mesh later, by logical axes
        model = online.ActorCritic(policy, value_model, rngs=nnx.Rngs(cfg.seed))
    return model, reference, load_tokenizer(cfg.policy)


def prepare(exp: ExperimentConfig, workdir: str | None) -> PolicySetup:
    cfg = exp.rl
    if cfg is None:
        raise ConfigError("config field 'rl': RL of the policy needs an rl section")
    layout = sharding.Layout.of(exp.mesh)
    parallel = layout.data_parallel_size()
    for name, value in (("rollout_prompts", cfg.rollout_rows), ("eval_batch_size", cfg.eval_batch_size),
                        ("rollout_prompts / minibatches", cfg.rollout_rows // cfg.minibatches)):
        if value % parallel:
            raise ConfigError(f"config field 'rl.{name}': {value} is not divisible by the {parallel} data-parallel "
                              f"devices of mesh axes {layout.axes('batch')}")
    if cfg.eval_batch_size % cfg.minibatches:
        raise ConfigError(f"config field 'rl.eval_batch_size': {cfg.eval_batch_size} is not divisible by "
                          f"minibatches={cfg.minibatches}")
    model, reference, tokenizer = load_actor_critic(cfg, layout)
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, layout.shardings(params))  # the value head (the rest is placed already)
    ref_graphdef, ref_params = nnx.split(reference) if reference is not None else (None, nnx.State({}))
    tx = online.make_optimizer(cfg)
    trainable = online.trainable_parameters(cfg)

    def create(params):
        return online.PolicyState.create(params, tx, cfg, trainable)

    state_sharding = online.state_shardings(jax.eval_shape(create, params), tx, layout, trainable)
    state = layout.create(create, state_sharding, params, donate=True)
    eos = model.policy.config.eos_token_id if model.policy.config.eos_token_id is not None else tokenizer.eos_token_id
    sampling = online.sampling_config(cfg, eos, pad_token_id(tokenizer))
    functions = online.jit_functions(online.Programs(graphdef, ref_graphdef, cfg, sampling, trainable),
                                     state_sharding, layout.shardings(ref_params), layout)
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), keep=2, trainable=trainable) if workdir else None
    return PolicySetup(cfg, layout, tokenizer, graphdef, ref_graphdef, ref_params, state, state_sharding, functions,
                    sampling, checkpoints)


def to_mesh(arrays, run: PolicySetup):
    """Whole host arrays (any pytree) -> device arrays split along the batch axis of the run's mesh (one
    process; a multi-process run feeds each process's block through ``Feed.put``)."""
    return jax.device_put(arrays, run.layout.batch)


def check_policy_meta(cfg: RLConfig):
    """``check_meta`` of ``Checkpointer.restore_latest`` for a policy checkpoint of ``cfg``'s run."""
    def check(meta: dict, step: int) -> None:
        if not isinstance(meta, dict) or "config" not in meta or meta.get("iteration") != step:
            raise CheckpointError("its metadata lacks the rl section or names another iteration")
        check_resumable(meta["config"], to_dict(cfg))
    return check


def check_resumable(saved: dict, current: dict) -> None:
    """Refuse a checkpoint of another rl section (``saved``, ``current``: its JSON dicts), naming the field
    (``config.check_same_run``); the bookkeeping of ``RESUMABLE_CHANGES`` may change."""
    check_same_run({"rl": saved}, {"rl": current}, ("rl",), {f"rl.{f}" for f in RESUMABLE_CHANGES})


def train(exp: ExperimentConfig, workdir: str, reward_model, gold, prompts: Sequence[str],
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Train the policy to ``exp.rl.iterations`` (resuming from the latest checkpoint in ``workdir``).

    gold: a gold scorer (``score(prompts, responses)``), logged beside the reward model's view.
    prompts: the training prompt texts; iteration i uses batch i of a seeded shuffle of them.
    """
    cfg = exp.rl
    os.makedirs(workdir, exist_ok=True)
    run = prepare(exp, workdir)
    start, state = resume(run)
    feed = Feed.of(run.layout, cfg.rollout_rows)
    track = Track(exp, workdir, prompts, run.checkpoints, start)
    iteration = start or 0
    end = cfg.iterations if stop_at is None else min(stop_at, cfg.iterations)
    bar = tqdm(total=end, initial=iteration, disable=not (progress and is_main_process()), desc=cfg.algorithm,
               dynamic_ncols=True)
    row = {}
    while iteration < end:
        tick = time.perf_counter()
        # Each process encodes, decodes and scores only its block of the batch's rows.
        prompt_arrays, batch_prompts = encode_prompts(run.tokenizer, track.prompt_texts(iteration, feed.local),
                                                      cfg.prompt_tokens)
        experience = run.functions.rollout(state.params, run.ref_params, *feed.put(prompt_arrays),
                                           online.rollout_key(state.rng))
        responses = responses_of(run, feed, (experience.ids_BxT[:, cfg.prompt_tokens:], experience.response_mask_BxN))
        scores = reward_model.score(batch_prompts, responses)
        gold_scores = gold.score(batch_prompts, responses)
        state, metrics = run.functions.update(state, experience, feed.put(np.asarray(scores, np.float32)))
        iteration += 1
        row = {name: float(value) for name, value in jax.device_get(metrics).items()}
        row.update(gold_score=float(np.mean(feed.gather(gold_scores))), seconds_per_iteration=time.perf_counter() - tick)
        track.record(iteration, row, batch_prompts, responses, scores, gold_scores)
        bar.update(1)
        bar.set_postfix(rm=f"{row['score']:.2f}", gold=f"{row['gold_score']:.2f}", kl=f"{row['kl']:.2f}")
        track.save(iteration, state, end)
        if iteration < end:
            preemption.stop_here(lambda: (bar.close(), track.stop(iteration, state)), track.stopped(iteration))
    bar.close()
    track.close()
    return {"iteration": iteration, "metrics": row, "state": state, "setup": run}


def resume(run: PolicySetup):
    """(iteration, state) of the newest intact checkpoint of the run's rl section, or (None, its fresh state)."""
    resumed = run.checkpoints.restore_latest(run.state, run.state_sharding, check_policy_meta(run.cfg))
    if resumed is None:
        return None, run.state
    log.info("resumed %s from iteration %d", run.cfg.algorithm, resumed[0])
    return resumed[0], resumed[1]


def restore(exp: ExperimentConfig, workdir: str):
    """(setup, state) of the latest intact policy checkpoint in ``workdir``."""
    run = prepare(exp, workdir)
    step, state = resume(run)
    run.checkpoints.close()
    if step is None:
        raise ConfigError(f"--workdir {workdir}: no policy checkpoint")
    return run, state


def save_policy(run: PolicySetup, state: online.PolicyState, path: str) -> str:
    """The trained policy (without its value head) as a transformers directory, e.g. for the next round;
    with adapters, that is the merged model, and PEFT's adapters go beside it in ``<path>_adapters``."""
    from jax.experimental.multihost_utils import process_allgather

    from rlhf_jax.models import save_pretrained

    params = jax.device_get(state.params) if jax.process_count() == 1 else process_allgather(state.params)
    if not is_main_process():
        return path
    model: online.ActorCritic = nnx.merge(run.graphdef, params)
    if run.cfg.adapters is None:
        return save_pretrained(model.policy, path, run.tokenizer)
    from rlhf_jax.models.adapter_export import save_adapters
    from rlhf_jax.models.pretrained import resolve_source

    save_adapters(model.policy, run.cfg.adapters, path + "_adapters", resolve_source(run.cfg.policy))
    return save_pretrained(lora.merged(model.policy, run.cfg.adapters), path, run.tokenizer)


def intervals(policy, reference, prompts, z: float = 1.96) -> dict:
    """Normal 95% half-widths over the distinct prompts (a prompt asked several times counts once, at its
    mean): of the policy's and the reference's mean gold score, and of their paired difference (the gain;
    both answer the same prompts with the same keys)."""
    rows_of = {}
    for row, prompt in enumerate(prompts):
        rows_of.setdefault(prompt, []).append(row)

    def half_width(values):
        means = np.asarray([np.mean(values[rows]) for rows in rows_of.values()])
        return float(z * np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")

    return {"gold_score_ci95": half_width(policy), "reference_gold_score_ci95": half_width(reference),
            "gold_gain": float(np.mean(policy - reference)), "gold_gain_ci95": half_width(policy - reference),
            "distinct_prompts": float(len(rows_of))}


def evaluate(run: PolicySetup, state: online.PolicyState, reward_model, gold, prompts: Sequence[str],
             seed: int = 1234) -> dict:
    """The trained policy against the reference on held-out prompts: one continuation of each prompt from
    each (same PRNG keys), scored by the gold labeler and by the reward model (if not None).

    gold_win_rate: P(gold(policy) > gold(reference)), ties counted half. kl: mean over prompts of
    sum_t log pi(y_t) - log pi_ref(y_t) on the policy's own samples (an unbiased estimate of
    KL(pi || pi_ref) per sequence).
    """
    cfg = run.cfg
    feed = Feed.of(run.layout, cfg.eval_batch_size)
    reference = online.Programs(run.graphdef, run.ref_graphdef, cfg, run.sampling).reference(state.params,
                                                                                             run.ref_params)
    local = {"prompt": [], "policy": [], "reference": [], "kl": [], "real": []}  # this process's rows
    for start in range(0, len(prompts), cfg.eval_batch_size):
        rows = np.arange(start, start + cfg.eval_batch_size)[feed.local]
        arrays, texts = encode_prompts(run.tokenizer, [prompts[i % len(prompts)] for i in rows], cfg.prompt_tokens)
        ids, mask = feed.put(arrays)  # the last batch is padded by wrapping around
        key = jax.random.fold_in(jax.random.PRNGKey(seed), start)
        experience = run.functions.rollout(state.params, run.ref_params, ids, mask, key)
        reference_out = generate(reference, ids, mask, key, run.sampling)
        response_mask = experience.response_mask_BxN
        local["prompt"] += texts
        local["policy"] += responses_of(run, feed, (experience.ids_BxT[:, cfg.prompt_tokens:], response_mask))
        local["reference"] += responses_of(run, feed, (reference_out.tokens_BxN, reference_out.response_mask_BxN))
        local["kl"] += feed.take(maths.masked_sum(experience.logp_BxN - experience.ref_logp_BxN, response_mask,
                                               axis=1)).tolist()
        local["real"] += (rows < len(prompts)).tolist()

    def every_row(values):  # per-row values of this process's rows -> every real row's, on every process
        return feed.gather(np.asarray(values))[feed.gather(np.asarray(local["real"]))]

    scorers = (("gold", gold),) + ((("rm", reward_model),) if reward_model is not None else ())
    scored = {f"{scorer}_{side}": every_row(np.asarray(model.score(local["prompt"], local[side]), np.float64))
              for scorer, model in scorers for side in ("policy", "reference")}
    gold_policy, gold_reference = scored["gold_policy"], scored["gold_reference"]
    metrics = {"prompts": float(len(prompts))}
    for scorer, _ in scorers:  # win rate (ties half) and mean score of the policy and the reference
        policy, reference = scored[f"{scorer}_policy"], scored[f"{scorer}_reference"]
        metrics.update({f"{scorer}_win_rate": float(np.mean((policy > reference) + 0.5 * (policy == reference))),
                        f"{scorer}_score": float(policy.mean()), f"reference_{scorer}_score": float(reference.mean())})
    metrics["kl"] = float(np.mean(every_row(local["kl"])))
    real = feed.gather(np.asarray(local["real"]))
    texts = {name: [t for t, keep in zip(feed.gather_texts(local[name]), real) if keep]
             for name in ("prompt", "reference", "policy")}
    metrics.update(intervals(gold_policy, gold_reference, texts["prompt"]))
    samples = [{"prompt": p, "reference": r, "policy": q, "gold_reference": float(gr), "gold_policy": float(gp)}
               for p, r, q, gr, gp in zip(texts["prompt"], texts["reference"], texts["policy"], gold_reference,
                                          gold_policy)]
    return {"metrics": metrics, "samples": samples}
