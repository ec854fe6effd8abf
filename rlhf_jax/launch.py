"""``rlhf-jax launch``: several processes of one rlhf-jax command on this machine, each with its own simulated
CPU devices, joined into one run (what the hosts of a pod do, one machine standing in for them).

Process 0's output is streamed as it is; the others' error output is streamed with a ``[process i]``
prefix. When one process fails or dies, the others are stopped (SIGTERM, then SIGKILL after a grace
period) and the launcher exits with its status, so a dead peer never leaves the rest hanging.

A SIGTERM or SIGINT to the launcher is passed to every process as SIGTERM, a preemption notice: they save
at one step and exit with ``preemption.EXIT_STATUS``, which the launcher then exits with, as it does when
any process was preempted on its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from rlhf_jax.preemption import EXIT_STATUS as PREEMPTED

GRACE_SECONDS = 10.0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_command(command: list[str], processes: int, index: int, port: int) -> list[str]:
    return [sys.executable, "-m", "rlhf_jax.cli", "--coordinator", f"127.0.0.1:{port}", "--num-processes",
            str(processes), "--process-id", str(index), *command]


def process_environment(devices_per_process: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.buffer.write(prefix.encode() + line)
        sys.stderr.flush()


def _stop(running: list[subprocess.Popen]) -> None:
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(command: list[str], processes: int, devices_per_process: int, port: int | None = None,
           poll_seconds: float = 0.2) -> int:
    """Run ``rlhf-jax COMMAND`` as ``processes`` joined processes; returns the run's exit status."""
    if processes < 1 or devices_per_process < 1:
        raise ValueError(f"--processes and --devices-per-process must be >= 1, got {processes}, {devices_per_process}")
    if not command:
        raise ValueError("give the rlhf-jax command to run after --, e.g. launch --processes 2 -- train --config ...")
    port = port or free_port()
    env = process_environment(devices_per_process)
    running = []
    for index in range(processes):
        stderr = None if index == 0 else subprocess.PIPE
        stdout = None if index == 0 else subprocess.DEVNULL
        running.append(subprocess.Popen(process_command(command, processes, index, port), env=env, stdout=stdout,
                                        stderr=stderr))
        if index:
            threading.Thread(target=_relay, args=(running[-1].stderr, f"[process {index}] "), daemon=True).start()
    def notify(signum, frame):  # a preemption notice for the whole run
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    handlers = {signum: signal.signal(signum, notify) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [process.poll() for process in running]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0, PREEMPTED)]
            if failed:
                index, code = failed[0]
                why = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                print(f"rlhf-jax launch: process {index} {why}; stopping the other {processes - 1}", file=sys.stderr,
                      flush=True)
                _stop(running)
                return code if code > 0 else 128 - code
            if all(code is not None for code in codes):
                return PREEMPTED if PREEMPTED in codes else 0
            time.sleep(poll_seconds)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
