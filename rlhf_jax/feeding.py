"""Batches and host work split between processes.

In a run of P processes every global batch of G rows is sharded along its leading axis over the
mesh's data-parallel axes; the devices of one process hold one contiguous block of those rows
(``Feed.local``). Each process reads, tokenises and places only that block
(``jax.make_array_from_process_local_data``), and reads back only that block of a batch-sharded
result (``Feed.take``). With one process the block is the whole batch.

Host work that is not a batch of the mesh (scoring held-out rows with the reward model or the gold
labeler) is split into P contiguous blocks (``process_block``) on process-local devices; the
per-row results come back to every process with ``gather_blocks``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rlhf_jax import sharding
from rlhf_jax.config.core import ConfigError


def _local_slice(placement: NamedSharding, rows: int) -> slice:
    """The rows of a [rows, ...] array that this process's devices hold, as one slice."""
    spans = sorted({(index[0].start or 0, rows if index[0].stop is None else index[0].stop)
                    for index in placement.addressable_devices_indices_map((rows,)).values()})
    start, stop = spans[0][0], spans[0][0]
    for begin, end in spans:
        if begin > stop:
            raise ConfigError(f"config field 'mesh.shape': the mesh gives process {jax.process_index()} the rows "
                              f"{spans} of each batch, not one block; order the devices by process")
        stop = max(stop, end)
    return slice(start, stop)


@dataclasses.dataclass(frozen=True)
class Feed:
    """Global batches of ``rows`` rows, sharded along the batch axis of a mesh; ``local`` is this process's
    block of every one of them."""

    placement: NamedSharding
    rows: int
    local: slice

    @classmethod
    def of(cls, layout: sharding.Layout, rows: int) -> Feed:
        placement = layout.batch
        return cls(placement, rows, _local_slice(placement, rows))

    @property
    def local_rows(self) -> int:
        return self.local.stop - self.local.start

    def put(self, local_arrays):
        """This process's block of a batch (any pytree of [local_rows, ...] host arrays) -> global arrays of
        ``rows`` rows, every process contributing its own block."""
        def place(local):
            local = np.asarray(local)
            if local.shape[0] != self.local_rows:
                raise ValueError(f"this process feeds {self.local_rows} rows of each batch, got {local.shape[0]}")
            if jax.process_count() == 1:
                return jax.device_put(local, self.placement)
            return jax.make_array_from_process_local_data(self.placement, local, (self.rows,) + local.shape[1:])

        return jax.tree.map(place, local_arrays)

    def take(self, global_arrays):
        """This process's block of the rows of global arrays (any pytree; batch-sharded or replicated), as
        host numpy arrays."""
        def block(array):
            if array.is_fully_addressable:
                return np.asarray(array)[self.local]
            out = np.empty((self.local_rows,) + array.shape[1:], array.dtype)
            for shard in array.addressable_shards:
                first, *rest = shard.index
                start, stop = first.start or 0, array.shape[0] if first.stop is None else first.stop
                low, high = max(start, self.local.start), min(stop, self.local.stop)
                if low < high:
                    out[(slice(low - self.local.start, high - self.local.start), *rest)] = \
                        np.asarray(shard.data)[low - start:high - start]
            return out

        return jax.tree.map(block, global_arrays)

    def gather(self, local_values) -> np.ndarray:
        """Per-row host values of this process's blocks of n batches (concatenated, [n * local_rows, ...]) ->
        the values of every row of the n batches, in order ([n * rows, ...]), on every process."""
        local_values = np.asarray(local_values)
        if jax.process_count() == 1:
            return local_values

        n = len(local_values) // self.local_rows
        blocks = local_values.reshape((n, self.local_rows) + local_values.shape[1:])
        return _assemble(blocks, self.local, self.rows).reshape((n * self.rows,) + local_values.shape[1:])

    def gather_texts(self, local_texts: list[str]) -> list[str]:
        """``gather`` for strings (sent as UTF-8 bytes, padded to the longest, with their lengths)."""
        if jax.process_count() == 1:
            return list(local_texts)
        from jax.experimental import multihost_utils

        encoded = [text.encode("utf-8") for text in local_texts]
        lengths = np.asarray([len(data) for data in encoded], np.int64)
        width = int(np.max(multihost_utils.process_allgather(np.asarray(lengths.max(initial=0)))))
        table = np.zeros((len(encoded), width), np.uint8)
        for row, data in enumerate(encoded):
            table[row, :len(data)] = np.frombuffer(data, np.uint8)
        return [bytes(row[:length]).decode("utf-8") for row, length in zip(self.gather(table), self.gather(lengths))]


def process_block(total: int) -> slice:
    """This process's share of ``total`` rows of host work: the p-th of P contiguous blocks of
    ceil(total / P) rows (the last ones shorter, or empty)."""
    per = math.ceil(total / jax.process_count())
    start = min(jax.process_index() * per, total)
    return slice(start, min(start + per, total))


def gather_blocks(local_values, total: int) -> np.ndarray:
    """Every process's ``process_block(total)`` of per-row values -> all ``total`` rows in row order, on
    every process."""
    local_values = np.asarray(local_values)
    if jax.process_count() == 1:
        return local_values
    padded = np.zeros((1, math.ceil(total / jax.process_count())) + local_values.shape[1:], local_values.dtype)
    padded[0, :len(local_values)] = local_values  # the same shape on every process
    return _assemble(padded, process_block(total), total)[0]


def _assemble(local_NxR, span: slice, rows: int) -> np.ndarray:
    """Each process's values [n, R, ...] for its ``span`` of the rows (R >= the span's length, padded to the
    same R on every process) -> the values of all ``rows`` rows, [n, rows, ...], on every process."""
    from jax.experimental import multihost_utils

    every = _allgather_exact(local_NxR)  # [P, n, R, ...]
    spans = np.asarray(multihost_utils.process_allgather(np.asarray([span.start, span.stop])))  # [P, 2]
    out = np.zeros((local_NxR.shape[0], rows) + local_NxR.shape[2:], local_NxR.dtype)
    for (start, stop), block in zip(spans, every):
        out[:, start:stop] = block[:, :stop - start]
    return out


def _allgather_exact(values: np.ndarray) -> np.ndarray:
    """Every process's ``values`` (the same shape on each), stacked: [P, ...]. Sent as raw bytes, so float64
    and int64 arrive bit for bit (JAX arrays would hold them as 32-bit without jax_enable_x64)."""
    from jax.experimental import multihost_utils

    values = np.ascontiguousarray(values)
    raw = values.reshape(values.shape + (1,)).view(np.uint8)  # [..., itemsize]
    every = np.asarray(multihost_utils.process_allgather(raw))
    return np.ascontiguousarray(every).view(values.dtype).reshape((len(every),) + values.shape)


def local_mesh(mesh: Mesh) -> Mesh:
    """A mesh over this process's devices only, for host work that needs no other process (scoring its own
    rows): ``mesh`` itself with one process; otherwise the same axes, the model axes ('tensor') as large as
    in ``mesh`` where the local devices allow, the rest on 'fsdp' (or the first axis)."""
    if jax.process_count() == 1:
        return mesh
    devices = jax.local_devices()
    sizes = dict.fromkeys(mesh.axis_names, 1)
    if "tensor" in sizes and len(devices) % mesh.shape["tensor"] == 0:
        sizes["tensor"] = mesh.shape["tensor"]
    rest = "fsdp" if "fsdp" in sizes else mesh.axis_names[0]
    sizes[rest] *= len(devices) // math.prod(sizes.values())
    return Mesh(np.asarray(devices).reshape([sizes[name] for name in mesh.axis_names]), mesh.axis_names)
