"""Runs that span processes: the hosts of a TPU pod slice or a GPU cluster, one process each, each seeing
only its local devices; on one machine, processes with simulated CPU devices stand in for them.

``initialize`` must run before anything touches a JAX backend: ``rlhf-jax`` calls it first, from
``--coordinator HOST:PORT --num-processes N --process-id I`` (or the RLHF_JAX_* variables of the same
names), or ``--auto-distributed``, which lets JAX read the cluster itself (TPU VMs, SLURM). On the CPU the
processes' collectives go through gloo.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys

ENVIRONMENT = {"coordinator": "RLHF_JAX_COORDINATOR", "num_processes": "RLHF_JAX_NUM_PROCESSES",
               "process_id": "RLHF_JAX_PROCESS_ID"}
HEARTBEAT_SECONDS = 20  # a process that stops answering for this long ends the others' run with an error


class DistributedError(RuntimeError):
    """The process set-up is incomplete or inconsistent; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
    """Where this process stands: one of ``num_processes`` (None: a single process), joined through
    ``coordinator``; ``auto``: JAX detects the cluster."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    @classmethod
    def from_flags(cls, coordinator=None, num_processes=None, process_id=None, auto=False,
                   environ=os.environ) -> ProcessSetup:
        """Flags first, then the RLHF_JAX_* variables; refuses a partial set-up, naming what is missing."""
        values = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
        for name, variable in ENVIRONMENT.items():
            if values[name] is None and environ.get(variable):
                values[name] = environ[variable] if name == "coordinator" else _integer(variable, environ[variable])
        setup = cls(**values, auto=auto)
        given = [name for name, value in values.items() if value is not None]
        if auto and given:
            raise DistributedError(f"--auto-distributed takes no --{given[0].replace('_', '-')}")
        if given and len(given) < 3:
            missing = sorted(set(values) - set(given))
            raise DistributedError(f"a multi-process run needs --coordinator, --num-processes and --process-id; "
                                   f"missing --{missing[0].replace('_', '-')}")
        if given and not 0 <= setup.process_id < setup.num_processes:
            raise DistributedError(f"--process-id {setup.process_id}: must be in [0, {setup.num_processes})")
        return setup

    @property
    def multi_process(self) -> bool:
        return self.auto or self.num_processes is not None


def _integer(variable: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{variable}={text!r}: not an integer") from None


def initialize(setup: ProcessSetup) -> None:
    """Join the other processes (a no-op for a single process). Call before any JAX computation."""
    if not setup.multi_process:
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only the CPU backend reads it
    if setup.auto:
        jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
        return
    jax.distributed.initialize(coordinator_address=setup.coordinator, num_processes=setup.num_processes,
                               process_id=setup.process_id, initialization_timeout=120,
                               heartbeat_timeout_seconds=HEARTBEAT_SECONDS)


def run_or_exit(function, args, clear_errors: tuple[type, ...] = ()):
    """``function(args)`` in a multi-process run. If it raises, this process reports the error (one line
    for ``clear_errors``, else the traceback) and exits at once (status 2, else 1), skipping JAX's
    exit-time barrier, which would wait minutes for peers that are still running: the launcher, or the
    peers' heartbeat, then ends the run. A run preempted at a step every process agreed on (its checkpoint
    is final on every process) exits with ``preemption.EXIT_STATUS``."""
    import traceback

    from rlhf_jax import preemption

    try:
        return function(args)
    except preemption.Preempted as stopped:
        if is_main_process():
            print(f"rlhf-jax: preempted: {stopped}; the same command resumes", file=sys.stderr)
        barrier("preempted", timeout_seconds=120)  # all have saved: none exits while a peer still needs it
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(preemption.EXIT_STATUS)
    except BaseException as error:
        clear = isinstance(error, clear_errors)
        if clear:
            print(f"rlhf-jax: error: {error}", file=sys.stderr)
        else:
            traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2 if clear else 1)


def is_main_process() -> bool:
    """Whether this process writes the run's outputs (metrics, plots, reports, progress bars): process 0."""
    import jax

    return jax.process_index() == 0


def describe_devices() -> dict:
    """This process's view of the run, and a check that the processes compute together: a jitted sum of
    an array whose rows each process supplies (process p gives rows of value p + 1)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    local_rows = np.full((jax.local_device_count(), 1), jax.process_index() + 1, np.float32)
    rows = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")), local_rows)
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(rows)
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count(),
            "backend": jax.default_backend(), "sum_of_rows": float(total),
            "expected_sum": float(sum((p + 1) * (jax.device_count() // jax.process_count())
                                      for p in range(jax.process_count())))}


_BARRIERS = itertools.count()


def barrier(name: str, timeout_seconds: float = 24 * 3600) -> None:
    """Wait until every process has arrived here. Through JAX's coordination service, not a device
    collective, so waiting long for process 0's host work (collecting feedback) times out nothing; a
    dead peer still ends the wait through the heartbeat."""
    import jax

    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the client that jax.distributed.initialize made

    jax_distributed.global_state.client.wait_at_barrier(f"rlhf_jax/{name}/{next(_BARRIERS)}",
                                                        int(timeout_seconds * 1000))


def main_process_first(make, name: str):
    """``make()`` on process 0, then (after every process reached this point) on the others: for work
    that writes a shared file the others then read, such as a dataset built into the cache, or feedback
    collected once, by process 0 alone, which the others then find complete."""
    if not is_main_process():
        barrier(name)
        return make()
    result = make()
    barrier(name)
    return result
