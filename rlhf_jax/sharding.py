"""Device mesh and logical-axis sharding.

Parameters carry logical axis names ('vocab', 'embed', 'mlp', 'heads', ...) set where the modules
create them. One rules table (``MeshConfig.rules``) maps each logical name to mesh axes ('data',
'fsdp', 'tensor'), so switching between data parallel, FSDP and tensor parallel is a config change.
A dimension that a mesh axis does not divide, or a mesh axis already used by an earlier dimension
of the same array, stays replicated on that dimension.
"""

from __future__ import annotations

import dataclasses
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


def mesh_axes(rules: dict, logical: str | tuple | None, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that a logical axis maps to under the rules; for a tuple of logical names
    (one dimension split over several), their mesh axes in order, each once."""
    if isinstance(logical, tuple):
        return tuple(dict.fromkeys(axis for name in logical for axis in mesh_axes(rules, name, mesh)))
    targets = rules.get(logical) if logical is not None else None
    targets = () if targets is None else (targets if isinstance(targets, tuple) else (targets,))
    return tuple(axis for axis in targets if mesh.shape[axis] > 1)


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


def abstract(tree, shardings):
    """ShapeDtypeStructs of ``tree``'s leaves carrying ``shardings`` (a tree of the same structure): what
    orbax restores into, and what ``jit(...).lower`` compiles for, without arrays."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


_ACTIVATIONS = threading.local()  # the Layout while a step on a mesh is being traced


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Where a run's arrays live: the device mesh, and the rules that map logical axis names to its axes
    (``MeshConfig.rules``). One value of it goes wherever shardings are made."""

    mesh: Mesh
    rules: dict

    @classmethod
    def of(cls, cfg: MeshConfig, devices=None) -> Layout:
        return cls(make_mesh(cfg, devices), dict(cfg.rules))

    def axes(self, logical: str | None) -> tuple[str, ...]:
        """The mesh axes (of size > 1) that a logical axis maps to."""
        return mesh_axes(self.rules, logical, self.mesh)

    def data_parallel_size(self) -> int:
        """How many ways the batch axis is split."""
        return math.prod(self.mesh.shape[axis] for axis in self.axes("batch"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        """Batch arrays (any rank): the leading axis over the 'batch' rule's mesh axes, the rest replicated."""
        targets = self.axes("batch")
        return NamedSharding(self.mesh, PartitionSpec(None if not targets else
                                                      targets[0] if len(targets) == 1 else targets))

    def spec(self, logical: PartitionSpec | tuple, shape: tuple[int, ...]) -> PartitionSpec:
        """The PartitionSpec of one array from its dimensions' logical names (``mesh_spec``)."""
        return mesh_spec(logical, shape, self.mesh, self.rules)

    def shardings(self, state: nnx.State):
        """NamedShardings with the same tree structure as ``state`` (abstract or concrete), by the logical
        axes its parameters carry."""
        logical = nnx.get_partition_spec(state)
        return jax.tree.map(lambda spec, leaf: NamedSharding(self.mesh, self.spec(spec, leaf.shape)),
                            logical, state, is_leaf=lambda x: isinstance(x, PartitionSpec))

    def place(self, model: nnx.Module) -> nnx.Module:
        """Put the model's arrays on the mesh by the rules (in place; returns the model)."""
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, self.shardings(state)))
        return model

    def create(self, make, shardings, *args, donate: bool = False):
        """``make(*args)`` as one jitted program that writes its outputs with ``shardings``: a training state
        born on the mesh (its optimizer moments never whole on one device). ``donate``: the arguments, already
        placed, become outputs in place (parameters are passed through, not copied)."""
        donated = tuple(range(len(args))) if donate else ()
        return jax.jit(make, out_shardings=shardings, donate_argnums=donated)(*args)

    def traced(self, function):
        """``function`` traced with ``constrain`` pinning activations by the rules (wrap it before ``jax.jit``)."""
        @functools.wraps(function)
        def traced(*args, **kwargs):
            previous = getattr(_ACTIVATIONS, "value", None)
            _ACTIVATIONS.value = self
            try:
                return function(*args, **kwargs)
            finally:
                _ACTIVATIONS.value = previous

        return traced

    def jit(self, function, *, in_shardings, out_shardings, donate_argnums=(), vmap_axes=None):
        """The one way a program is compiled here: ``function`` traced with activations pinned by the rules
        (``traced``), vmapped over ``vmap_axes`` if given (a leading seed axis), jitted with explicit
        shardings and donated arguments."""
        traced = self.traced(function)
        if vmap_axes is not None:
            traced = jax.vmap(traced, in_axes=vmap_axes)
        return jax.jit(traced, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)


def constrain(x, logical: tuple):
    """An activation's sharding by its dimensions' logical names (e.g. ('batch', None, 'embed')) when a step
    is traced for a mesh, else ``x`` unchanged. Without it XLA's propagation may follow the parameters'
    FSDP split onto the activations and replicate the batch."""
    layout = getattr(_ACTIVATIONS, "value", None)
    if layout is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, layout.spec(logical, x.shape)))
