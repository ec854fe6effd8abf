"""The supervised loop: config -> data -> jitted steps -> metrics -> checkpoints, with exact resume.

``train(config, workdir)`` trains to ``config.train.steps`` (resuming from the latest checkpoint in
``workdir/checkpoints`` if there is one), evaluating on the validation split (at the start, every
``eval_every`` steps, at the end) and on the test split at the end. The batch stream is a pure
function of the step, the PRNG key lives in the state, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from rlhf_jax import assets, losses, preemption, sharding
from rlhf_jax.rl import preference
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.models.convert import CheckpointError
from rlhf_jax.config import ConfigError, DataConfig, ExperimentConfig, to_dict
from rlhf_jax.data import builders, formats
from rlhf_jax.data.pipeline import Batches, Split, eval_rows
from rlhf_jax.distributed import is_main_process, main_process_first
from rlhf_jax.feeding import Feed
from rlhf_jax.files import write_json
from rlhf_jax.metrics import MetricsWriter
from rlhf_jax.plots import plot_training
from rlhf_jax.steps import jit_steps, make_optimizer, train_state_shardings
from rlhf_jax.tasks import TASKS, eval_key
from rlhf_jax.train_state import TrainState
from rlhf_jax.trained import check_same_run, load_model, restore, trainable_parameters

log = logging.getLogger(__name__)
def data_root(data: DataConfig) -> str:
    return data.root or os.path.join(os.path.dirname(assets.cache_dir()), "datasets")


def load_examples(data: DataConfig, tokenizer=None) -> dict[str, list[dict]]:
    """Build (or reuse) the tfds dataset and read every split as decoded examples; conversations rendered
    for ``tokenizer`` (``formats.Renderer``, as ``data.chat_template`` says)."""
    source = data.source
    if isinstance(source, str) and source in assets.ASSETS:
        source = str(assets.asset_path(source))
    else:
        paths = [source] if isinstance(source, str) else list(source)
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ConfigError(f"config field 'data.source': {missing[0]!r} is neither an asset name "
                              f"({', '.join(sorted(assets.ASSETS))}) nor an existing file")
        source = paths[0] if isinstance(source, str) else paths
    renderer = formats.Renderer(tokenizer, data.chat_template)
    sources = main_process_first(lambda: builders.build(data.dataset, source, data_root(data), renderer), "dataset")
    splits = {}
    for split, rows in sources.items():
        examples = [builders.decode(rows[i]) for i in range(len(rows))]
        if data.labels is not None:
            examples = [e for e in examples if e[data.label_field] in data.labels]
        limit = data.max_train_examples if split == "train" else data.max_eval_examples
        splits[split] = examples[:limit] if limit else examples
    return splits


def tokenized_splits(exp: ExperimentConfig, tokenizer) -> dict[str, Split]:
    """Each split's examples (after the task's ``prepare``), tokenised on demand, row by row."""
    task = TASKS[exp.train.task]
    return {split: Split(task.prepare(examples) if task.prepare else examples, task.tokenize, tokenizer,
                         exp.data.max_length, exp.data)
            for split, examples in load_examples(exp.data, tokenizer).items()}


def evaluate(eval_step, params, split: Split, feed: Feed, seed: int, perplexity: bool = True) -> dict:
    """Summed metrics over the whole split (padding rows weigh 0), then means. Fixed eval PRNG: the
    same MLM masks at every evaluation. Each process tokenises and feeds its block of every batch."""
    sums = None
    key = eval_key(seed)
    for index, rows in enumerate(eval_rows(len(split), feed.rows)):
        out = eval_step(params, feed.put(split.arrays(rows[feed.local])), jax.random.fold_in(key, index))
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
    return losses.summarize(jax.device_get(sums), perplexity=perplexity)


def check_mesh(exp: ExperimentConfig, layout: sharding.Layout) -> None:
    parallel = layout.data_parallel_size()
    for name in ("batch_size", "eval_batch_size"):
        value = getattr(exp.train, name)
        if value % parallel:
            raise ConfigError(f"config field 'train.{name}': {value} is not divisible by the {parallel} "
                              f"data-parallel devices of mesh axes {layout.axes('batch')}")


@dataclasses.dataclass
class Setup:
    """Everything a run needs, built from the config: mesh, data, model, optimizer, compiled steps."""

    layout: sharding.Layout
    tokenizer: object
    vocab_size: int
    splits: dict
    graphdef: object
    state: TrainState
    state_sharding: TrainState
    train_step: object
    eval_step: object
    checkpoints: Checkpointer


def prepare(exp: ExperimentConfig, workdir: str, with_data: bool = True) -> Setup:
    t = exp.train
    layout = sharding.Layout.of(exp.mesh)
    check_mesh(exp, layout)
    model, tokenizer = load_model(exp.model, layout)  # born on the mesh
    splits = tokenized_splits(exp, tokenizer) if with_data else {}
    for split in ("train", "validation"):
        if with_data and split not in splits:
            raise ConfigError(f"config field 'data.source': the dataset has no '{split}' split")
    loss_fn = TASKS[t.task].make_loss(tokenizer, model.config.vocab_size, t)
    tx = make_optimizer(t)
    graphdef, params = nnx.split(model)

    trainable = trainable_parameters(exp.model)

    def create(params):
        return TrainState.create(params, tx, t.seed, trainable)

    state_sharding = train_state_shardings(jax.eval_shape(create, params), tx, layout, trainable)
    state = layout.create(create, state_sharding, params, donate=True)
    train_step, eval_step = jit_steps(graphdef, tx, loss_fn, state_sharding, layout, trainable)
    if TASKS[t.task].reference:  # the reference is the model the run starts from: before any restore
        for split in splits.values():
            preference.add_reference_logprobs(split, graphdef, state.params, layout, t.eval_batch_size,
                                       os.path.join(data_root(exp.data), "reference_logprobs"))
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), keep=t.keep_checkpoints, trainable=trainable)
    return Setup(layout, tokenizer, model.config.vocab_size, splits, graphdef, state, state_sharding, train_step,
                 eval_step, checkpoints)


def evaluate_split(run: Setup, exp: ExperimentConfig, params, split: str) -> dict:
    t, task = exp.train, TASKS[exp.train.task]
    metrics = evaluate(run.eval_step, params, run.splits[split], Feed.of(run.layout, t.eval_batch_size),
                       t.seed, perplexity=task.perplexity)
    if task.baseline is not None and is_main_process():  # a host-side metric over whole splits: process 0's
        metrics.update(task.baseline(run.splits["train"].all_arrays(), run.splits[split].all_arrays(), t,
                                     run.tokenizer, run.vocab_size))
    return metrics


def train(exp: ExperimentConfig, workdir: str, stop_at: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) to ``exp.train.steps`` (or stop early at ``stop_at``); returns the last metrics."""
    t, main = exp.train, is_main_process()
    os.makedirs(workdir, exist_ok=True)
    run = prepare(exp, workdir)
    state = run.state
    config_dict = to_dict(exp)
    resumed = run.checkpoints.restore_latest(state, run.state_sharding, lambda meta, step: check_meta(meta, step,
                                                                                                     config_dict))
    start, window, window_steps = None, None, 0
    if resumed is not None:
        start, state, saved = resumed
        window, window_steps = open_window(saved)
        log.info("resumed from step %d", start)
    if main:
        write_json(os.path.join(workdir, "config.json"), config_dict)
    writer = MetricsWriter(workdir, resume_step=start)
    train_split = run.splits["train"]
    batches, feed = Batches(len(train_split), t.batch_size, t.seed), Feed.of(run.layout, t.batch_size)

    def run_eval(step, split):
        metrics = evaluate_split(run, exp, state.params, split)
        writer.write(step, split, metrics)
        return metrics

    step = start or 0
    last_eval = {"validation": run_eval(0, "validation")} if step == 0 else {}
    end = t.steps if stop_at is None else min(stop_at, t.steps)
    bar = tqdm(total=end, initial=step, disable=not (progress and main), desc=f"train {t.task}", dynamic_ncols=True)
    tick = time.perf_counter()

    def meta(step):
        return {"data_position": step, "config": config_dict, "window": saved_window(window, window_steps)}

    while step < end:
        state, metrics = run.train_step(state, feed.put(train_split.arrays(batches(step)[feed.local])))
        # Sum metrics over the logging window on device: no host sync until the window is logged.
        window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
        step, window_steps = step + 1, window_steps + 1
        bar.update(1)
        if step % t.log_every == 0 or step == end:
            sums = jax.device_get(window)
            seconds = (time.perf_counter() - tick) / window_steps
            row = {"loss": sums["loss_sum"] / max(sums["count"], 1.0),
                   "accuracy": sums["correct_sum"] / max(sums["count"], 1.0),
                   "grad_norm": sums["grad_norm"] / window_steps, "seconds_per_step": seconds}
            writer.write(step, "train", row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            tick, window, window_steps = time.perf_counter(), None, 0
        if t.eval_every and step % t.eval_every == 0 and step != t.steps:
            last_eval = {"validation": run_eval(step, "validation")}
        if step % t.checkpoint_every == 0 or step == end:
            run.checkpoints.save(step, state, meta(step))
        if step < end:
            preemption.stop_here(lambda: stop(run, writer, bar, step, state, meta(step)),
                                 f"train {t.task}: stopped at step {step} of {t.steps}, saved in {run.checkpoints.directory}")
    bar.close()
    run.checkpoints.wait()
    if step == t.steps:
        last_eval = {split: run_eval(step, split) for split in ("validation", "test") if split in run.splits}
    run.checkpoints.close()
    writer.close()
    if main:
        plot_training(workdir)
    return {"step": step, "metrics": last_eval, "params": state.params, "graphdef": run.graphdef}


def check_meta(meta: dict, step: int, config_dict: dict) -> None:
    """A supervised checkpoint's metadata: this run's config (else ConfigError) and its data position."""
    if not isinstance(meta, dict) or "config" not in meta or "data_position" not in meta:
        raise CheckpointError("its metadata lacks the config or the data position")
    check_same_run(meta["config"], config_dict)
    if meta["data_position"] != step:
        raise CheckpointError(f"data position {meta['data_position']} does not match its step")


def saved_window(window, steps: int) -> dict | None:
    """The metric sums of a logging window still open at a checkpoint (JSON: values and dtypes), so that a run
    resumed there logs the window's row as an uninterrupted run does."""
    if window is None:
        return None
    return {"steps": steps, "sums": {name: [value.item(), str(value.dtype)] for name, value in
                                     jax.device_get(window).items()}}


def open_window(meta: dict):
    """(window sums, steps in it) saved by ``saved_window``: (None, 0) for a closed window."""
    saved = meta.get("window")
    if not saved:
        return None, 0
    return {name: jnp.asarray(value, dtype) for name, (value, dtype) in saved["sums"].items()}, saved["steps"]


def stop(run: Setup, writer: MetricsWriter, bar, step: int, state, meta: dict) -> None:
    """A preempted run's last acts: the step's checkpoint, final on disk; every file closed."""
    run.checkpoints.save_now(step, state, meta)
    run.checkpoints.close()
    writer.close()
    bar.close()


def evaluate_checkpoint(exp: ExperimentConfig, workdir: str) -> dict:
    """Validation and test metrics of the latest checkpoint in ``workdir`` (also appended to metrics.jsonl)."""
    run = prepare(exp, workdir)
    run.checkpoints.close()
    trained = restore(workdir, exp)
    params, step = trained.params, trained.step
    writer = MetricsWriter(workdir)
    results = {}
    for split in ("validation", "test"):
        if split in run.splits:
            results[split] = evaluate_split(run, exp, params, split)
            writer.write(step, split, results[split])
    writer.close()
    return {"step": step, "metrics": results}
