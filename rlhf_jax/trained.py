"""Models as an experiment config names them: built fresh for training (``load_model``), or trained and
restored from a workdir to score or export with (``restore``), the one way every caller does it.

``restore`` builds the model from abstract shapes (its config from the source's config.json, no
pretrained weights read) and reads only the parameters of the latest checkpoint (no optimiser state),
placed on the config's mesh by the logical-axis rules.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from flax import nnx

from rlhf_jax import sharding
from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    ModelSpec,
    experiment_from_dict,
    loading,
    to_dict,
)
from rlhf_jax.feeding import local_mesh
from rlhf_jax.models import abstract_model, build_model, from_pretrained, load_tokenizer, lora, pretrained_config

log = logging.getLogger(__name__)

# Train fields that may change between a run and its resumption (bookkeeping, not maths).
RESUMABLE_CHANGES = {"steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"}


def _random_model_overrides(spec: ModelSpec, tokenizer) -> dict:
    overrides = dict(spec.config)
    overrides.setdefault("vocab_size", len(tokenizer))
    overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
    overrides.setdefault("eos_token_id", tokenizer.eos_token_id)
    return overrides


def model_config(spec: ModelSpec, tokenizer) -> ModelConfig:
    """The ModelConfig of a spec: the pretrained source's with the overrides, or the spec's own."""
    if spec.source is not None:
        return pretrained_config(spec.source, head=spec.head, **dict(spec.config))
    return ModelConfig(head=spec.head, **_random_model_overrides(spec, tokenizer))


def _check_vocabulary(cfg: ModelConfig, tokenizer) -> None:
    if len(tokenizer) > cfg.vocab_size:
        raise ConfigError(f"config field 'model.config.vocab_size': the tokenizer has {len(tokenizer)} tokens, "
                          f"the model only {cfg.vocab_size}")


def load_model(spec: ModelSpec, layout=None):
    """(model, tokenizer) to train: pretrained weights, or a random model of the given config; with a
    ``sharding.Layout``, on its mesh (pretrained tensors placed shard by shard: ``from_pretrained``)."""
    tokenizer = load_tokenizer(spec.tokenizer or spec.source)
    if spec.source is not None:
        model = from_pretrained(spec.source, head=spec.head, seed=spec.seed, layout=layout, **dict(spec.config))
    else:
        model = build_model(ModelConfig(head=spec.head, **_random_model_overrides(spec, tokenizer)), seed=spec.seed)
        model = model if layout is None else layout.place(model)
    _check_vocabulary(model.config, tokenizer)
    if spec.adapters is not None:
        model = lora.apply(model, spec.adapters, seed=spec.seed)
    return model, tokenizer


def trainable_parameters(spec: ModelSpec) -> lora.Trainable | None:
    """With ``model.lora``: the adapters, and a classification / scalar head (new, so trained whole);
    None (every parameter) without."""
    if spec.adapters is None:
        return None
    return lora.Trainable(prefixes=(("head",),) if spec.head in ("classification", "scalar") else ())


def _same_files(a, b) -> bool:
    """Two data sources naming files with the same contents (e.g. a workdir that was moved)."""
    from rlhf_jax.data.records import file_digest

    def files(source):
        paths = [source] if isinstance(source, str) else list(source or [])
        return paths if paths and all(isinstance(p, str) and os.path.isfile(p) for p in paths) else None

    return files(a) is not None and files(b) is not None and file_digest(files(a)) == file_digest(files(b))


def check_same_run(saved: dict, current: dict) -> None:
    """Refuse a checkpoint made by another model, data or training config than ``current`` (JSON dicts),
    naming the first field that differs (``config.loading.check_same_run``): the bookkeeping of ``RESUMABLE_CHANGES``
    may change, and a data source may move to files of the same contents."""
    loading.check_same_run(saved, current, ("model", "data", "train"), {f"train.{f}" for f in RESUMABLE_CHANGES},
                          equal=lambda name, before, now: name == "data.source" and _same_files(before, now))


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained model: ``nnx.merge(graphdef, params)`` is it; ``config`` is the config that trained it."""

    graphdef: object
    params: object
    tokenizer: object
    config: ExperimentConfig
    step: int


def restore(workdir: str, expected: ExperimentConfig | None = None, local: bool = False) -> Trained:
    """The latest checkpoint of a supervised workdir; with ``expected``, refused unless that config made it
    (and placed on ``expected``'s mesh, else on the checkpoint config's). ``local``: on this process's
    devices only (``feeding.local_mesh``), to score rows of its own, with no other process."""
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        step = checkpoints.latest_step()
        if step is None:
            raise ConfigError(f"--workdir {workdir}: no checkpoint")
        saved = checkpoints.meta(step)["config"]
        if expected is not None:
            check_same_run(saved, to_dict(expected))
        exp = experiment_from_dict(saved)
        tokenizer = load_tokenizer(exp.model.tokenizer or exp.model.source)
        cfg = model_config(exp.model, tokenizer)
        _check_vocabulary(cfg, tokenizer)
        mesh_config = (expected or exp).mesh
        layout = sharding.Layout.of(mesh_config)
        if local:
            layout = sharding.Layout(local_mesh(layout.mesh), layout.rules)
        if exp.model.adapters is not None:  # the checkpoint holds the adapters (and head): the base is the source
            graphdef, params = nnx.split(load_model(exp.model, layout)[0])
            trained, frozen = lora.split(params, trainable_parameters(exp.model))
            params = lora.merge(checkpoints.restore_params(step, sharding.abstract(trained, layout.shardings(
                trained))), frozen)
        else:
            graphdef, shapes = nnx.split(abstract_model(cfg))
            params = checkpoints.restore_params(step, sharding.abstract(shapes, layout.shardings(shapes)))
    finally:
        checkpoints.close()
    return Trained(graphdef, params, tokenizer, exp, step)


def export(trained: Trained, out: str) -> list[str]:
    """Write a trained model as a transformers directory at ``out`` (with adapters: the merged model, and
    the adapters in PEFT's format at ``<out>_adapters`` when the architecture stores plain Linears)."""
    from rlhf_jax.models import save_pretrained
    from rlhf_jax.models.adapter_export import save_adapters
    from rlhf_jax.models.pretrained import resolve_source

    model = nnx.merge(trained.graphdef, trained.params)
    spec = trained.config.model
    if spec.adapters is None:
        return [save_pretrained(model, out, trained.tokenizer)]
    paths = [save_pretrained(lora.merged(model, spec.adapters), out, trained.tokenizer)]
    try:
        paths.append(save_adapters(model, spec.adapters, out + "_adapters", resolve_source(spec.source)))
    except ValueError as error:  # a head or family PEFT has no plain-Linear adapters for: the merged model only
        log.info("%s", error)
    return paths
