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
import time

import jax
import numpy as np
from flax import nnx

from rlhf_jax import sharding, targets
from rlhf_jax.config import ConfigError, ExperimentConfig, ModelConfig
from rlhf_jax.models import lora
from rlhf_jax.rl import online
from rlhf_jax.rl.algorithms import ALGORITHMS
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


# What a named architecture keeps of a config's model overrides: how it runs, not what it is.
RUN_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers")


def model_config(exp: ExperimentConfig, shape: str | None) -> ModelConfig:
    """The config's model, or the named architecture with the config's model.config run fields (dtype, remat)."""
    from rlhf_jax.models import load_tokenizer
    from rlhf_jax.trained import model_config as spec_config

    if shape is None:
        return spec_config(exp.model, load_tokenizer(exp.model.tokenizer or exp.model.source))
    return named_config(shape, exp.model.head, dict(exp.model.config))


def named_config(shape: str, head: str, overrides: dict) -> ModelConfig:
    if shape not in SHAPES:
        raise ConfigError(f"--shape {shape!r}: not one of {sorted(SHAPES)}")
    return ModelConfig(head=head, **SHAPES[shape], **{k: v for k, v in overrides.items() if k in RUN_FIELDS})


def policy_config(exp: ExperimentConfig, shape: str | None) -> ModelConfig:
    """The rl section's policy (a causal LM, with rl.model_config's overrides), or the named architecture."""
    overrides = dict(exp.rl.model_config)
    if shape is None:
        from rlhf_jax.models import pretrained_config

        return pretrained_config(exp.rl.policy, head="causal_lm", **overrides)
    return named_config(shape, "causal_lm", overrides)


def per_device_bytes(abstract, shardings) -> int:
    """Bytes of the largest shard set one device holds of a tree of ShapeDtypeStructs under ``shardings``."""
    total = 0
    for leaf, placement in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += math.prod(placement.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def host_read_bytes(abstract, shardings) -> dict[int, int]:
    """Bytes of the checkpoint each host (process index) reads to give its devices their parameter shards
    when the state is born sharded: the distinct regions its devices hold, replicas read once, counted in the
    parameters' dtype. ``convert.assign_tensors`` reads exactly these regions."""
    from rlhf_jax.models.convert import region_bounds

    hosts: dict[int, int] = {}
    for leaf, placement in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        regions: dict[int, set] = {}
        for device, index in placement.devices_indices_map(tuple(leaf.shape)).items():
            regions.setdefault(device.process_index, set()).add(region_bounds(index, leaf.shape))
        for host, distinct in regions.items():
            hosts[host] = hosts.get(host, 0) + sum(
                math.prod(stop - start for start, stop in region) * np.dtype(leaf.dtype).itemsize
                for region in distinct)
    return hosts


@dataclasses.dataclass
class LoadPlan:
    """Set-up of the first model a plan compiles (the trained model, else the policy), born sharded: the
    checkpoint's bytes, the most any one host reads of it, and what each chip receives."""

    model_bytes: int
    hosts: int
    host_reads: int  # the largest per-host read
    per_chip: int

    def line(self) -> str:
        gib = 1024 ** 3
        return (f"load (born sharded): each of {self.hosts} hosts reads at most {self.host_reads / gib:.3f} GiB of "
                f"the {self.model_bytes / gib:.3f} GiB of parameters (its chips' shards, in the parameters' dtype); "
                f"each chip receives {self.per_chip / gib:.3f} GiB")


def plan_load(cfg: ModelConfig, layout: sharding.Layout) -> LoadPlan:
    from rlhf_jax.models import abstract_model

    params = nnx.state(abstract_model(cfg), nnx.Param)
    shardings = layout.shardings(params)
    reads = host_read_bytes(params, shardings)
    whole = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(params))
    return LoadPlan(whole, len(reads), max(reads.values()), per_device_bytes(params, shardings))


def abstract_batch(exp: ExperimentConfig, rows: int) -> dict:
    """The task's batch of ``rows`` rows as ShapeDtypeStructs: one placeholder example, tokenised by the task."""
    from rlhf_jax.models import load_tokenizer

    d = exp.data
    example = {d.text_field: "plan", d.label_field: 0, "prompt": "plan", "chosen": "a", "rejected": "b",
               "response": "c", "score": 0.0, "margin": 0.0}
    task = TASKS[exp.train.task]
    examples = task.prepare([example]) if task.prepare else [example]
    arrays = task.tokenize(examples, load_tokenizer(exp.model.tokenizer or exp.model.source), d.max_length, d)
    if task.reference:  # the frozen reference's log-probs, stored with the data before training
        arrays.update(ref_chosen=np.zeros(1, np.float32), ref_rejected=np.zeros(1, np.float32))
    return {name: jax.ShapeDtypeStruct((rows,) + a.shape[1:], a.dtype) for name, a in arrays.items()}


@dataclasses.dataclass
class StepPlan:
    """Per-device bytes of one compiled step: the state and batch from their shapes and shardings, the rest
    from the compiler's buffer assignment (``memory_analysis``). ``refused``: the compiler's own message
    when it would not compile the program (over HBM), and then only the first three figures are known."""

    step: str
    parameters: int  # every model the step reads: trained, frozen reference, value model
    optimizer: int
    batch: int
    arguments: int = 0
    temporaries: int = 0
    output: int = 0
    total: int = 0  # arguments + temporaries + outputs not written in place (the state is donated)
    generated_code: int = 0
    compile_seconds: float = 0.0
    refused: str | None = None


def compile_plan(step: str, parameters: int, optimizer: int, batch: int, lowered) -> StepPlan:
    """Compile ``lowered`` and read its buffer assignment; an over-memory refusal is a result, not an error."""
    tick = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as error:  # jaxlib's error class moves between versions
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        message = " ".join(line.strip() for line in str(error).splitlines()[:4] if line.strip())
        return StepPlan(step, parameters, optimizer, batch, compile_seconds=round(time.perf_counter() - tick, 1),
                        refused=message[:600])
    seconds = round(time.perf_counter() - tick, 1)
    memory = compiled.memory_analysis()
    total = (memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes)
    return StepPlan(step, parameters, optimizer, batch, memory.argument_size_in_bytes, memory.temp_size_in_bytes,
                    memory.output_size_in_bytes, total, memory.generated_code_size_in_bytes, seconds)


def plan_train_step(exp: ExperimentConfig, cfg: ModelConfig, layout: sharding.Layout) -> StepPlan:
    from rlhf_jax.trained import trainable_parameters

    graphdef, params = nnx.split(lora.abstract_adapted(cfg, exp.model.adapters))
    tx = make_optimizer(exp.train)
    trainable = trainable_parameters(exp.model)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx, exp.train.seed, trainable), params)
    state_sharding = train_state_shardings(state, tx, layout, trainable)
    loss_fn = TASKS[exp.train.task].make_loss(_mask_tokenizer(exp), cfg.vocab_size, exp.train)
    train_step, _ = jit_steps(graphdef, tx, loss_fn, state_sharding, layout, trainable)
    batch = abstract_batch(exp, exp.train.batch_size)
    batch_sharding = jax.tree.map(lambda _: layout.batch, batch)
    lowered = train_step.lower(sharding.abstract(state, state_sharding), sharding.abstract(batch, batch_sharding))
    return compile_plan(f"{exp.train.task} step", per_device_bytes(state.params, state_sharding.params),
                        per_device_bytes(state.opt_state, state_sharding.opt_state),
                        per_device_bytes(batch, batch_sharding), lowered)


def _mask_tokenizer(exp: ExperimentConfig):
    """The tokenizer, for the one loss that needs it (masked LM: its mask token); else None."""
    if exp.train.task != "masked_lm":
        return None
    from rlhf_jax.models import load_tokenizer

    return load_tokenizer(exp.model.tokenizer or exp.model.source)


def plan_policy_programs(exp: ExperimentConfig, shape: str | None, layout: sharding.Layout,
                         kinds: tuple[str, ...] = ("rollout", "update")) -> list[StepPlan]:
    """The rl section's rollout (sampling, then the policy's, values' and reference's log-probs) and update
    (its algorithm's loss: PPO with a value head on the policy's trunk or a separate value model, GRPO, ...)
    for the rl section's policy, or the named architecture."""
    from rlhf_jax.models import abstract_model

    p = exp.rl
    policy_cfg = policy_config(exp, shape)
    value_cfg = dataclasses.replace(policy_cfg, head="scalar", pooling="none") if p.value == "separate" else None
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: online.ActorCritic(
            lora.abstract_adapted(policy_cfg, p.adapters), abstract_model(value_cfg) if value_cfg else None,
            rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    # With adapters the reference is the policy's own base (no arrays of its own)
    ref_graphdef, ref_params = nnx.split(abstract_model(policy_cfg)) if p.adapters is None else (None, nnx.State({}))
    ref_sharding = layout.shardings(ref_params)
    tx = online.make_optimizer(p)
    trainable = online.trainable_parameters(p)
    state = jax.eval_shape(lambda q: online.PolicyState.create(q, tx, p, trainable), params)
    state_sharding = online.state_shardings(state, tx, layout, trainable)
    sampling = online.sampling_config(p, policy_cfg.eos_token_id, policy_cfg.pad_token_id or 0)
    programs = online.Programs(graphdef, ref_graphdef, p, sampling, trainable)
    functions = online.jit_functions(programs, state_sharding, ref_sharding, layout)
    b, t, n = p.rollout_rows, p.prompt_tokens + p.response_tokens, p.response_tokens
    f32, i32 = np.float32, np.int32
    prompts = jax.ShapeDtypeStruct((b, p.prompt_tokens), i32, sharding=layout.batch)
    key = jax.ShapeDtypeStruct((2,), np.uint32, sharding=layout.replicated)
    policy_bytes = per_device_bytes(state.params, state_sharding.params)
    reference_bytes = per_device_bytes(ref_params, ref_sharding)
    rollout = online.Rollout(*(jax.ShapeDtypeStruct(shape, dtype, sharding=layout.batch) for shape, dtype in (
        ((b, t), i32), ((b, t), i32), *(((b, n), f32),) * 6)))
    scores = jax.ShapeDtypeStruct((b,), f32, sharding=layout.batch)
    name = ALGORITHMS[p.algorithm].title
    plans = []
    if "rollout" in kinds:
        plans.append(compile_plan(
            f"{name} rollout", policy_bytes + reference_bytes, 0, 2 * per_device_bytes(prompts, layout.batch),
            functions.rollout.lower(sharding.abstract(state.params, state_sharding.params),
                                    sharding.abstract(ref_params, ref_sharding), prompts, prompts, key)))
    if "update" in kinds:
        plans.append(compile_plan(
            f"{name} update", policy_bytes, per_device_bytes(state.opt_state, state_sharding.opt_state),
            per_device_bytes(rollout, jax.tree.map(lambda _: layout.batch, rollout)),
            functions.update.lower(sharding.abstract(state, state_sharding), rollout, scores)))
    return plans


STEPS = ("train", "rollout", "update")


def plan(exp: ExperimentConfig, shape: str | None = None, devices=None,
         steps: tuple[str, ...] = STEPS) -> tuple[ModelConfig, list[StepPlan]]:
    """(the model's config, per-device bytes of its train step and, with an rl section, its policy-gradient
    rollout and update), compiled for ``devices`` (default: this process's)."""
    layout = sharding.Layout.of(exp.mesh, devices)
    cfg = model_config(exp, shape)
    plans = [plan_train_step(exp, cfg, layout)] if "train" in steps else []
    if exp.rl is not None:
        kinds = tuple(kind for kind in ("rollout", "update") if kind in steps)
        plans += plan_policy_programs(exp, shape, layout, kinds)
    return cfg, plans


def loaded_model_config(exp: ExperimentConfig, shape: str | None, steps: tuple[str, ...]) -> ModelConfig:
    """The first model a plan compiles: the trained one, else the rl section's policy."""
    return model_config(exp, shape) if "train" in steps or exp.rl is None else policy_config(exp, shape)


def parameter_count(cfg: ModelConfig) -> int:
    from rlhf_jax.models import abstract_model

    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(abstract_model(cfg), nnx.Param)))


ROWS = ("parameters", "optimizer", "batch", "arguments", "temporaries", "output", "total", "generated_code")


def table(steps: list[StepPlan], hbm_gib: float | None = None) -> str:
    gib = 1024 ** 3
    lines = ["| per device (GiB) | " + " | ".join(s.step for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name in ROWS:
        cells = ["refused" if s.refused and name not in ("parameters", "optimizer", "batch")
                 else f"{getattr(s, name) / gib:.3f}" for s in steps]
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines.append("| compile seconds | " + " | ".join(f"{s.compile_seconds:g}" for s in steps) + " |")
    if hbm_gib:
        lines.append(f"| fits {hbm_gib:g} GiB | " + " | ".join(
            "no (the compiler refused)" if s.refused else "yes" if s.total <= hbm_gib * gib else "no"
            for s in steps) + " |")
    return "\n".join(lines)


def report(exp: ExperimentConfig, mesh_shape: tuple[tuple[str, int], ...] | None, shape: str | None = None,
           hbm_gib: float | None = None, target: str = "cpu", steps: tuple[str, ...] = STEPS) -> str:
    """What ``rlhf-jax plan`` prints: a line on the model and where it compiled, the table, the compiler's
    refusals, and the figures as one JSON line."""
    import json

    devices, where = None, "simulated CPU devices (XLA's CPU compiler: its temporaries are not an accelerator's)"
    if target != "cpu":
        slice_ = targets.target(target)
        devices, hbm_gib = slice_.devices(), hbm_gib or slice_.hbm_gib
        mesh_shape = mesh_shape or (("data", 1), ("fsdp", slice_.chips), ("tensor", 1))
        where = (f"{slice_.name}: {slice_.chips} chips, topology {slice_.topology}, libtpu's TPU compiler (its "
                 f"buffer assignment per chip, not a measured runtime HBM)")
    if mesh_shape is None:
        raise ConfigError("--mesh: say the mesh to plan for (data=D,fsdp=F,tensor=T); only --target tpu-* has a "
                          "default (FSDP over every chip)")
    exp = dataclasses.replace(exp, mesh=dataclasses.replace(exp.mesh, shape=mesh_shape))
    tick = time.perf_counter()
    cfg, plans = plan(exp, shape, devices, steps)
    load = plan_load(loaded_model_config(exp, shape, steps), sharding.Layout.of(exp.mesh, devices))
    summary = {"shape": shape, "target": target, "mesh": dict(mesh_shape), "hbm_gib": hbm_gib,
               "seconds": round(time.perf_counter() - tick, 1), "steps": [dataclasses.asdict(s) for s in plans],
               "load": dataclasses.asdict(load)}
    refusals = [f"{s.step}: {s.refused}" for s in plans if s.refused]
    models = []
    if "train" in steps:
        models.append(f"{shape or exp.model.source or 'model'} ({exp.model.head}): {describe(cfg)}; train batch "
                      f"{exp.train.batch_size} x {exp.data.max_length} tokens")
    if exp.rl is not None and {"rollout", "update"} & set(steps):
        p = exp.rl
        models.append(f"policy {shape or p.policy}: {describe(policy_config(exp, shape))}; {p.rollout_rows} rollouts "
                      f"of {p.prompt_tokens} + {p.response_tokens} tokens in {p.minibatches} minibatches")
    return "\n".join([*models, f"mesh {dict(mesh_shape)} on {where}", table(plans, hbm_gib), load.line(),
                      *refusals, json.dumps(summary)])


def describe(cfg: ModelConfig) -> str:
    return (f"{parameter_count(cfg) / 1e9:.3f} B parameters ({cfg.param_dtype}, compute {cfg.dtype}, "
            f"remat {cfg.remat})")
