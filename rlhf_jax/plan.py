"""``rlhf-jax plan``: what one device holds when a config's steps run at a size this machine cannot run.

The model is built from abstract shapes (``jax.eval_shape``: no weights allocated), placed on a mesh of
simulated CPU devices by the config's logical-axis rules, and the train step (and, for a config with a
rl section, its policy-gradient update) is lowered and compiled for that mesh. Per device, in bytes:

    parameters, optimizer    sum over leaves of the shard a device holds (shape / mesh split x itemsize)
    batch                    the step's input batch (the update's experience)
    temporaries              the compiled program's scratch (``compiled.memory_analysis().temp_size_in_bytes``)
    total                    the compiled program's arguments + temporaries + outputs not written in place
                             (the state is donated: its outputs alias its inputs)

XLA's CPU compiler does not fuse or schedule like the TPU or GPU compilers, so the temporaries are an
estimate of the accelerator's (the state's bytes are exact).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from flax import nnx

from rlhf_jax import sharding
from rlhf_jax.config import ConfigError, ExperimentConfig, ModelConfig
from rlhf_jax.rl import online
from rlhf_jax.steps import jit_steps, make_optimizer, train_state_shardings
from rlhf_jax.tasks import TASKS
from rlhf_jax.train_state import TrainState

# Architectures by name, as in their config.json (so a plan needs no weights or files).
SHAPES = {
    "smollm2-135m": dict(family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                         num_kv_heads=3, intermediate_size=1536, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "smollm2-1.7b": dict(family="llama", vocab_size=49152, hidden_size=2048, num_layers=24, num_heads=32,
                         num_kv_heads=32, intermediate_size=8192, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "llama3-8b": dict(family="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                      num_kv_heads=8, intermediate_size=14336, max_position_embeddings=8192,
                      tie_word_embeddings=False),
}


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
    """'data=2,fsdp=4,tensor=1' -> (('data', 2), ('fsdp', 4), ('tensor', 1))."""
    shape = []
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not size.strip().isdigit() or int(size) < 1:
            raise ConfigError(f"--mesh {text!r}: write axis=size pairs such as data=2,fsdp=4,tensor=1")
        shape.append((name.strip(), int(size)))
    return tuple(shape)


def mesh_devices(shape: tuple[tuple[str, int], ...]) -> int:
    return math.prod(size for _, size in shape)


def use_simulated_cpu_devices(count: int) -> None:
    """Compile on ``count`` simulated CPU devices. XLA_FLAGS is read when JAX first initialises its backend,
    which is later; the platform goes through ``jax.config``, since JAX_PLATFORMS is read at jax's import."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    jax.config.update("jax_platforms", "cpu")


def model_config(exp: ExperimentConfig, shape: str | None) -> ModelConfig:
    """The config's model, or the named architecture (with the config's model.config overrides: dtype, remat)."""
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.trained import model_config as spec_config

    if shape is None:
        return spec_config(exp.model, load_tokenizer(exp.model.tokenizer or exp.model.source))
    if shape not in SHAPES:
        raise ConfigError(f"--shape {shape!r}: not one of {sorted(SHAPES)}")
    return ModelConfig(head=exp.model.head, **{**SHAPES[shape], **dict(exp.model.config)})


def per_device_bytes(abstract, shardings) -> int:
    """Bytes of the largest shard set one device holds of a tree of ShapeDtypeStructs under ``shardings``."""
    total = 0
    for leaf, placement in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += math.prod(placement.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def abstract_batch(exp: ExperimentConfig, rows: int) -> dict:
    """The task's batch of ``rows`` rows as ShapeDtypeStructs: one placeholder example, tokenised by the task."""
    from rlhf_jax.models import load_tokenizer

    d = exp.data
    example = {d.text_field: "plan", d.label_field: 0, "prompt": "plan", "chosen": "a", "rejected": "b",
               "response": "c", "score": 0.0, "margin": 0.0}
    task = TASKS[exp.train.task]
    examples = task.prepare([example]) if task.prepare else [example]
    arrays = task.tokenize(examples, load_tokenizer(exp.model.tokenizer or exp.model.source), d.max_length, d)
    return {name: jax.ShapeDtypeStruct((rows,) + a.shape[1:], a.dtype) for name, a in arrays.items()}


@dataclasses.dataclass
class StepPlan:
    """Per-device bytes of one compiled step."""

    step: str
    parameters: int
    optimizer: int
    batch: int
    temporaries: int
    total: int

    @classmethod
    def of(cls, step: str, parameters: int, optimizer: int, batch: int, compiled) -> StepPlan:
        memory = compiled.memory_analysis()
        total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                 - memory.alias_size_in_bytes)
        return cls(step, parameters, optimizer, batch, memory.temp_size_in_bytes, total)


def plan_train_step(exp: ExperimentConfig, cfg: ModelConfig, layout: sharding.Layout) -> StepPlan:
    from rlhf_jax.models import abstract_model

    graphdef, params = nnx.split(abstract_model(cfg))
    tx = make_optimizer(exp.train)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx, exp.train.seed), params)
    state_sharding = train_state_shardings(state, tx, layout)
    loss_fn = TASKS[exp.train.task].make_loss(_mask_tokenizer(exp), cfg.vocab_size, exp.train)
    train_step, _ = jit_steps(graphdef, tx, loss_fn, state_sharding, layout)
    batch = abstract_batch(exp, exp.train.batch_size)
    batch_sharding = jax.tree.map(lambda _: layout.batch, batch)
    compiled = train_step.lower(sharding.abstract(state, state_sharding),
                                sharding.abstract(batch, batch_sharding)).compile()
    return StepPlan.of("train step", per_device_bytes(state.params, state_sharding.params),
                       per_device_bytes(state.opt_state, state_sharding.opt_state),
                       per_device_bytes(batch, batch_sharding),
                       compiled)


def _mask_tokenizer(exp: ExperimentConfig):
    """The tokenizer, for the one loss that needs it (masked LM: its mask token); else None."""
    if exp.train.task != "masked_lm":
        return None
    from rlhf_jax.models import load_tokenizer

    return load_tokenizer(exp.model.tokenizer or exp.model.source)


def plan_ppo_update(exp: ExperimentConfig, cfg: ModelConfig, layout: sharding.Layout) -> StepPlan:
    """The policy-gradient update of an actor-critic (value head on the policy's trunk) of the model's architecture."""
    from rlhf_jax.models import abstract_model

    p = exp.rl
    policy_cfg = dataclasses.replace(cfg, head="causal_lm")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: online.ActorCritic(abstract_model(policy_cfg), None, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    ref_graphdef = nnx.graphdef(abstract_model(policy_cfg))
    tx = online.make_optimizer(p)
    state = jax.eval_shape(lambda q: online.PolicyState.create(q, tx, p), params)
    state_sharding = online.state_shardings(state, tx, layout)
    sampling = online.sampling_config(p, cfg.eos_token_id, cfg.pad_token_id or 0)
    programs = online.Programs(graphdef, ref_graphdef, p, sampling)
    functions = online.jit_functions(programs, state_sharding, layout.replicated, layout)
    b, t, n = p.rollout_rows, p.prompt_tokens + p.response_tokens, p.response_tokens
    f32, i32 = np.float32, np.int32
    rollout = online.Rollout(*(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
        ((b, t), i32), ((b, t), i32), ((b, n), f32), ((b, n), f32), ((b, n), f32), ((b, n), f32), ((b, n), f32))))
    batch = layout.batch
    rollout_sharding = jax.tree.map(lambda _: batch, rollout)
    scores = jax.ShapeDtypeStruct((b,), f32)
    compiled = functions.update.lower(sharding.abstract(state, state_sharding),
                                      sharding.abstract(rollout, rollout_sharding),
                                      sharding.abstract(scores, batch)).compile()
    return StepPlan.of("PPO update", per_device_bytes(state.params, state_sharding.params),
                       per_device_bytes(state.opt_state, state_sharding.opt_state),
                       per_device_bytes(rollout, rollout_sharding), compiled)


def plan(exp: ExperimentConfig, shape: str | None = None) -> tuple[ModelConfig, list[StepPlan]]:
    """(the model's config, per-device bytes of its train step and, with an rl section, its policy-gradient update)."""
    layout = sharding.Layout.of(exp.mesh)
    cfg = model_config(exp, shape)
    steps = [plan_train_step(exp, cfg, layout)]
    if exp.rl is not None and cfg.is_causal:
        steps.append(plan_ppo_update(exp, cfg, layout))
    return cfg, steps


def parameter_count(cfg: ModelConfig) -> int:
    from rlhf_jax.models import abstract_model

    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))


def table(steps: list[StepPlan], hbm_gib: float | None = None) -> str:
    gib = 1024 ** 3
    header = "| per device (GiB) | " + " | ".join(s.step for s in steps) + " |"
    lines = [header, "|---|" + "---|" * len(steps)]
    for name in ("parameters", "optimizer", "batch", "temporaries", "total"):
        lines.append(f"| {name} | " + " | ".join(f"{getattr(s, name) / gib:.3f}" for s in steps) + " |")
    if hbm_gib:
        lines.append(f"| fits {hbm_gib:g} GiB | " + " | ".join("yes" if s.total <= hbm_gib * gib else "no"
                                                             for s in steps) + " |")
    return "\n".join(lines)


def report(exp: ExperimentConfig, mesh_shape: tuple[tuple[str, int], ...], shape: str | None = None,
           hbm_gib: float | None = None) -> str:
    """What ``rlhf-jax plan`` prints: a line on the model, the table, and the figures as one JSON line."""
    import json
    import time

    exp = dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, shape=mesh_shape))
    tick = time.perf_counter()
    cfg, steps = plan(exp, shape)
    summary = {"shape": shape, "mesh": dict(mesh_shape), "seconds": round(time.perf_counter() - tick, 1),
               "steps": [dataclasses.asdict(s) for s in steps]}
    return "\n".join([
        f"{shape or exp.model.source or 'model'}: {parameter_count(cfg) / 1e9:.3f} B parameters ({cfg.param_dtype}, "
        f"compute {cfg.dtype}, remat {cfg.remat}); mesh {dict(mesh_shape)}; train batch {exp.train.batch_size} x "
        f"{exp.data.max_length} tokens", table(steps, hbm_gib), json.dumps(summary)])
