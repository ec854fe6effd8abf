"""Preemption: SIGTERM (a spot VM's or SLURM's notice) or SIGINT ends a run at a step boundary.

The trainer finishes its current step, writes a checkpoint of it and exits with ``EXIT_STATUS`` (75,
sysexits' EX_TEMPFAIL: run the same command again). The rerun resumes from that checkpoint.

- One process: the signal sets a flag, and ``stop_requested`` reads it at every step boundary.
- Several processes (the hosts of a pod): JAX's preemption service owns SIGTERM. A notice on any one host
  reaches them all. ``multihost_utils.reached_preemption_sync_point(c)`` turns True on every process at
  the same call c: one more than the largest count of calls any process had made when the notice came.
  So every process saves the same step and none waits on a peer that has left. SIGINT is handed to that
  service as a SIGTERM to this process. The call count runs over the whole process, so a notice that
  comes between two stages stops the next one's first step.
- A second signal while a checkpoint is being written is logged, and the write completes. Outside a
  write, it stops the process at once (``KeyboardInterrupt``). Every file is written atomically and orbax
  finalises a step only when it is complete, so nothing half-written is left behind either way.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal

log = logging.getLogger(__name__)
EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """A trainer stopped on a signal, after saving a checkpoint at the step boundary it names."""


class _State:
    received: list[str] = []  # the names of the signals received, in order
    saving = False
    multi_process = False
    calls = itertools.count(1)


def install(multi_process: bool = False) -> None:
    """Take SIGTERM and SIGINT for this process (call after ``distributed.initialize``). ``multi_process``:
    SIGTERM stays with JAX's preemption service, and SIGINT is passed on to it."""
    _State.multi_process = multi_process
    if multi_process:
        signal.signal(signal.SIGINT, _forward_to_service)
        return
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def uninstall() -> None:
    """Python's default handlers again (tests, and callers that embed a run)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reset()


def reset() -> None:
    """Forget the signals received (a process that runs several jobs in turn, and tests)."""
    _State.received = []
    _State.calls = itertools.count(1)


def _on_signal(signum, frame) -> None:
    name = signal.Signals(signum).name
    _State.received.append(name)
    if len(_State.received) == 1:
        log.warning("%s: finishing this step, then saving a checkpoint and exiting with status %d (the same "
                    "command resumes); a second signal stops at once", name, EXIT_STATUS)
    elif _State.saving:
        log.warning("%s again: a checkpoint is being written; it completes first", name)
    else:
        raise KeyboardInterrupt(f"{name} received twice")


def _forward_to_service(signum, frame) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # caught by JAX's preemption notifier, which tells every process


def stop_requested() -> bool:
    """Whether to save and stop at this step boundary. Every process must call it at every boundary (they
    then agree); one process answers from its own signals."""
    call = next(_State.calls)
    if _State.multi_process:
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(call)
    return bool(_State.received)


@contextlib.contextmanager
def saving():
    """A checkpoint write that a second signal does not interrupt."""
    _State.saving = True
    try:
        yield
    finally:
        _State.saving = False


def stop_here(save, where: str) -> None:
    """At a step boundary: if a stop is requested, ``save()`` (a checkpoint of this step, waited for until
    it is final) runs undisturbed, then ``Preempted(where)`` is raised."""
    if not stop_requested():
        return
    with saving():
        save()
    raise Preempted(where)


def between_stages(done: str) -> None:
    """A stage boundary of a driver: the stage ``done`` is on disk, so a requested stop stops here."""
    stop_here(lambda: None, f"stopped after {done}, which is saved")
