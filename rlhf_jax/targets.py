"""Where ``rlhf-jax plan`` compiles: simulated CPU devices, or a real TPU slice's topology without its chips.

A TPU target is compiled by libtpu's compiler on this machine: ``jax.experimental.topologies.get_topology_desc``
describes the slice's chips as compile-only devices, a mesh is made of them as of any devices, and
``jit(...).lower(...).compile()`` runs the TPU compiler for that mesh (MaxText's ``train_compile.py`` route).
Nothing runs on them, and the JAX backend stays the CPU's. libtpu comes with the ``tpu`` extra
(``pip install -e '.[tpu]'``; Google Cloud's licence).

Slice names are Google Cloud's: ``v5e-N`` / ``v6e-N`` count chips, ``v4-N`` / ``v5p-N`` count TensorCores
(two per chip, run as one "megacore" device).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

from rlhf_jax.config import ConfigError

GIB = 1024 ** 3

# Chip grids by chip count; hosts hold 2x2 chips (v5e / v6e: 2x4 on a one-host slice of 8).
_GRIDS_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_GRIDS_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
             256: (4, 8, 8), 512: (8, 8, 8)}


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: its name in libtpu's topology strings, chip config, HBM per chip (GiB), whether
    slice names count TensorCores (two per chip)."""

    topology_prefix: str
    chip_config: str
    hbm_gib: float
    counts_cores: bool

    def grid(self, chips: int) -> tuple[int, ...] | None:
        return (_GRIDS_3D if self.topology_prefix in ("v4", "v5") else _GRIDS_2D).get(chips)


GENERATIONS = {
    "v4": Generation("v4", "megacore", 32.0, counts_cores=True),
    "v5e": Generation("v5e", "default", 16.0, counts_cores=False),
    "v5p": Generation("v5", "megacore", 95.0, counts_cores=True),
    "v6e": Generation("v6e", "default", 32.0, counts_cores=False),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice to compile for: ``tpu-v5e-16`` is 16 v5e chips on a 4x4 grid, four hosts of 2x2."""

    name: str
    generation: str
    chips: int
    topology: str  # libtpu's name, e.g. 'v5e:4x4'
    hbm_gib: float  # per chip, Google Cloud's figure; the compiler's own limit is a little under it

    @property
    def chips_per_host(self) -> tuple[int, int, int]:
        if self.chips == 8 and len(self.grid) == 2:
            return (2, 4, 1)  # the one-host slice of 8
        return (min(2, self.grid[0]), min(2, self.grid[1]), 1)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.topology.split(":")[1].split("x"))

    def devices(self) -> list:
        """The slice's chips as compile-only devices (libtpu's compiler; nothing is allocated)."""
        require_libtpu()
        # Without these, loading libtpu on a machine that is not a TPU VM prints warnings about its metadata.
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{self.generation}-{self.chips}")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        # Compile-only: no chip is opened, so another process's libtpu (a second plan, a test) is no conflict.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=self.topology, chip_config_name=GENERATIONS[self.generation].chip_config,
            chips_per_host_bounds=self.chips_per_host, num_slices=1)
        return list(topology.devices)


def require_libtpu() -> None:
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError("--target tpu-*: the TPU compiler (libtpu) is not installed; install the 'tpu' extra: "
                          "pip install -e '.[tpu]' -c constraints/tested.txt")


def target(name: str) -> Target:
    """'tpu-v5e-16' -> its Target; a name that is not a slice says which names are."""
    generation, _, count = name.removeprefix("tpu-").rpartition("-")
    spec = GENERATIONS.get(generation) if name.startswith("tpu-") else None
    chips = int(count) // (2 if spec is not None and spec.counts_cores else 1) if count.isdigit() else 0
    grid = spec.grid(chips) if spec is not None else None
    if grid is None:
        examples = ", ".join(f"tpu-{g}-{8 if GENERATIONS[g].counts_cores else 4}..." for g in GENERATIONS)
        raise ConfigError(f"--target {name!r}: not a TPU slice this knows ('cpu', or {examples}: e.g. tpu-v5e-16, "
                          f"tpu-v5p-64, tpu-v6e-8)")
    return Target(name, generation, chips, f"{spec.topology_prefix}:{'x'.join(map(str, grid))}", spec.hbm_gib)
