"""Device mesh and logical-axis sharding.

Parameters carry logical axis names ('vocab', 'embed', 'mlp', 'heads', ...) set where the modules
create them. One rules table (``MeshConfig.rules``) maps each logical name to mesh axes ('data',
'fsdp', 'tensor'), so switching between data parallel, FSDP and tensor parallel is a config change.
A dimension that a mesh axis does not divide, or a mesh axis already used by an earlier dimension
of the same array, stays replicated on that dimension.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax.config.core import ConfigError
from rlhf_jax.config.model import MeshConfig


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with the configured axis sizes; -1 takes the rest.
    Fixed sizes whose product is below the device count use the first devices only."""
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(name for name, _ in cfg.shape)
    sizes = [size for _, size in cfg.shape]
    known = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ConfigError(f"config field 'mesh.shape': {len(devices)} devices do not divide into {cfg.shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if -1 not in [size for _, size in cfg.shape] and math.prod(sizes) < len(devices):
        if jax.process_count() > 1:
            raise ConfigError(f"config field 'mesh.shape': {dict(zip(names, sizes))} uses {math.prod(sizes)} of the "
                              f"{len(devices)} devices; a run of {jax.process_count()} processes needs them all")
        devices = devices[:math.prod(sizes)]  # a smaller mesh than the machine: the first devices
    if math.prod(sizes) != len(devices):
        raise ConfigError(f"config field 'mesh.shape': {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                          f"there are {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), names)


def mesh_axes(rules: dict, logical: str | None, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that a logical axis maps to under the rules."""
    targets = rules.get(logical) if logical is not None else None
    targets = () if targets is None else (targets if isinstance(targets, tuple) else (targets,))
    return tuple(axis for axis in targets if mesh.shape[axis] > 1)


def data_parallel_size(mesh: Mesh, rules: dict) -> int:
    """How many ways the batch axis is split."""
    return math.prod(mesh.shape[axis] for axis in mesh_axes(rules, "batch", mesh))


def mesh_spec(logical: PartitionSpec | tuple, shape: tuple[int, ...], mesh: Mesh, rules: dict) -> PartitionSpec:
    """Logical names of one array's dimensions -> a PartitionSpec over the mesh's axes."""
    used: set[str] = set()
    out = []
    logical = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
    for name, size in zip(logical, shape):
        targets = tuple(axis for axis in mesh_axes(rules, name, mesh) if axis not in used)
        if not targets or size % math.prod(mesh.shape[axis] for axis in targets):
            out.append(None)
            continue
        used.update(targets)
        out.append(targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


def state_shardings(state: nnx.State, mesh: Mesh, rules: dict):
    """NamedShardings with the same tree structure as ``state`` (abstract or concrete)."""
    logical = nnx.get_partition_spec(state)
    return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, mesh_spec(spec, leaf.shape, mesh, rules)),
                        logical, state, is_leaf=lambda x: isinstance(x, PartitionSpec))


def abstract(tree, shardings):
    """ShapeDtypeStructs of ``tree``'s leaves carrying ``shardings`` (a tree of the same structure): what
    orbax restores into, and what ``jit(...).lower`` compiles for, without arrays."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def shard_model(model: nnx.Module, mesh: Mesh, rules: dict) -> nnx.Module:
    """Place the model's arrays on the mesh according to the rules (in place; returns the model)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    return model


def batch_sharding(mesh: Mesh, rules: dict) -> NamedSharding:
    """Batch arrays (any rank): the leading axis over the 'batch' rule's mesh axes, the rest replicated."""
    targets = mesh_axes(rules, "batch", mesh)
    lead = None if not targets else (targets[0] if len(targets) == 1 else targets)
    return NamedSharding(mesh, PartitionSpec(lead))


_ACTIVATIONS = threading.local()  # (mesh, rules) while a step on a mesh is being traced


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: dict):
    """While tracing a step inside this context, ``constrain`` pins activations to the mesh by the rules."""
    previous = getattr(_ACTIVATIONS, "value", None)
    _ACTIVATIONS.value = (mesh, rules)
    try:
        yield
    finally:
        _ACTIVATIONS.value = previous


def with_activation_sharding(function, mesh: Mesh, rules: dict):
    """``function`` traced inside ``activation_sharding(mesh, rules)`` (wrap it before ``jax.jit``)."""
    @functools.wraps(function)
    def traced(*args, **kwargs):
        with activation_sharding(mesh, rules):
            return function(*args, **kwargs)

    return traced


def constrain(x, logical: tuple):
    """An activation's sharding by its dimensions' logical names (e.g. ('batch', None, 'embed')) when a step
    is traced for a mesh, else ``x`` unchanged. Without it XLA's propagation may follow the parameters'
    FSDP split onto the activations and replicate the batch."""
    context = getattr(_ACTIVATIONS, "value", None)
    if context is None:
        return x
    mesh, rules = context
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, mesh_spec(logical, x.shape, mesh, rules)))
