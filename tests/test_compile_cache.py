"""The persistent compilation cache: where it lives, that a second process loads what the first compiled
instead of compiling, with the same result to the bit, and that it can be turned off."""

import json
import os
import subprocess
import sys

import pytest

from rlhf_jax import compile_cache

PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from rlhf_jax import compile_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **_: hits.append(name) if name.endswith("cache_hits") else None)
where = compile_cache.enable(sys.argv[1], min_compile_seconds=0.0)
x = jnp.linspace(-3.0, 3.0, 4096).reshape(64, 64)
y = jax.jit(lambda a: jnp.tanh(a @ a.T) @ a + jnp.sin(a).sum())(x)
print(json.dumps({"where": str(where), "hits": len(hits), "sum": float(y.sum()), "bits": y.tobytes().hex()}))
"""


def run(path):
    out = subprocess.run([sys.executable, "-c", PROGRAM, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_first_ones_program_with_the_same_result(tmp_path):
    first = run(tmp_path / "xla")
    assert first["hits"] == 0 and first["where"] == str(tmp_path / "xla")
    assert any(p.is_file() and not p.name.startswith(".") for p in (tmp_path / "xla").iterdir())
    second = run(tmp_path / "xla")
    assert second["hits"] >= 1
    assert second["bits"] == first["bits"]


def test_where_it_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("RLHF_JAX_CACHE", str(tmp_path / "cache"))
    assert compile_cache.directory() == tmp_path / "cache" / "xla"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "elsewhere"))
    assert compile_cache.directory() == tmp_path / "elsewhere"
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.directory() is None and compile_cache.enable() is None


def test_the_cli_turns_it_on_for_commands_that_compile_and_only_those(tmp_path):
    env = {**os.environ, compile_cache.ENV: str(tmp_path / "xla"), "JAX_PLATFORMS": "cpu"}
    listing = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "assets", "list"], env=env, capture_output=True,
                            text=True)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert not (tmp_path / "xla").exists()  # a command that compiles nothing leaves no cache (nor imports jax)
    devices = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "devices"], env=env, capture_output=True, text=True)
    assert devices.returncode == 0, devices.stderr[-2000:]
    assert (tmp_path / "xla").is_dir()


def test_the_cli_keeps_the_programs_jax_s_threshold_lets_through(tmp_path):
    """``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` moves the CLI's threshold: 0 keeps every program
    ``rlhf-jax devices`` compiles, an hour keeps none."""
    def entries(threshold):
        where = tmp_path / threshold
        env = {**os.environ, compile_cache.ENV: str(where), "JAX_PLATFORMS": "cpu",
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": threshold}
        devices = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "devices"], env=env, capture_output=True,
                                 text=True)
        assert devices.returncode == 0, devices.stderr[-2000:]
        return [p for p in where.iterdir() if p.name.endswith("-cache")]

    assert entries("0") and not entries("3600")


KILLED_IN_A_WRITE = """
import os, signal, sys
from jax._src import path
paths = type(path.Path(sys.argv[1]))  # the class JAX's cache writes its files with
write_bytes = paths.write_bytes
def half_then_killed(file, data):  # the moment a SIGKILL can land: half an entry on disk
    if file.name.endswith("-cache"):
        write_bytes(file, data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return write_bytes(file, data)
paths.write_bytes = half_then_killed
""" + PROGRAM


def test_an_entry_a_kill_cut_short_is_dropped_and_written_whole_again(tmp_path):
    """JAX never replaces an entry it finds on disk, so a run killed mid-write would leave every later run
    warning and compiling again; ``enable`` drops the cut entry, and the next run writes it whole."""
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_A_WRITE, str(tmp_path / "xla")], capture_output=True)
    assert killed.returncode == -9
    assert [p.stat().st_size > 0 for p in (tmp_path / "xla").glob("*-cache")] == [True]  # the half entry
    after = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path / "xla")], capture_output=True, text=True,
                           check=True)
    assert "dropped 1 entry a killed run left cut short" in after.stderr
    assert "Error reading persistent compilation cache entry" not in after.stderr, after.stderr[-2000:]
    again = run(tmp_path / "xla")
    assert again["hits"] >= 1 and again["bits"] == json.loads(after.stdout.strip().splitlines()[-1])["bits"]
    # an entry without its -atime file that is whole (a JAX without a size limit writes none) is kept
    entries = sorted(p.name for p in (tmp_path / "xla").glob("*-cache"))
    for stamp in (tmp_path / "xla").glob("*-atime"):
        stamp.unlink()
    assert compile_cache.drop_cut_entries(tmp_path / "xla") == []
    assert sorted(p.name for p in (tmp_path / "xla").glob("*-cache")) == entries


ONE_OF_TWO_PROCESSES = """
import json, sys
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from rlhf_jax import compile_cache, distributed
where, coordinator, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
hits = []
jax.monitoring.register_event_listener(lambda name, **_: hits.append(name) if name.endswith("cache_hits") else None)
compile_cache.enable(where, min_compile_seconds=0.0)
distributed.initialize(distributed.ProcessSetup(coordinator, 2, index))
mesh = Mesh(jax.devices(), ("data",))
rows = NamedSharding(mesh, PartitionSpec("data"))
x = jax.make_array_from_callback((64, 64), rows, lambda at: jnp.linspace(-3.0, 3.0, 4096).reshape(64, 64)[at])
step = jax.jit(lambda a: jnp.tanh(a @ a.T).sum() + jnp.sin(a).sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))
before = len(hits)
y = step(x)
print(json.dumps({"hits": len(hits) - before, "bits": jax.device_get(y).tobytes().hex()}))
"""


def test_every_process_of_a_multi_process_run_loads_what_process_0_wrote(tmp_path):
    """Only process 0 writes entries. On CPU, JAX's key held each process's own topology, so process 1 missed
    every entry, in every run; ``key_cpu_programs_by_host`` gives both the same key for the same program."""
    from rlhf_jax.launch import free_port

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}

    def both():
        coordinator = f"127.0.0.1:{free_port()}"
        children = [subprocess.Popen([sys.executable, "-c", ONE_OF_TWO_PROCESSES, str(tmp_path / "xla"), coordinator,
                                      str(index)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for index in (0, 1)]
        outs = [child.communicate(timeout=300) for child in children]
        assert [child.returncode for child in children] == [0, 0], [err[-2000:] for _, err in outs]
        return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]

    first = both()
    assert first[0]["hits"] == 0
    second = both()
    assert [view["hits"] for view in second] == [1, 1]  # the sharded step, loaded in both processes
    assert len({view["bits"] for view in first + second}) == 1


def test_the_key_of_a_multi_process_cpu_program_holds_the_host_cpu():
    """What replaces the topology in the key must tell hosts with other CPUs apart: /proc/cpuinfo's model and
    flags, where Linux gives them."""
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo here")
    parts = [part for part in compile_cache.host_cpu().split(" | ") if part]
    assert parts and all(part in cpuinfo.read_text() for part in parts)
    assert any(len(part.split()) > 10 for part in parts)  # the instruction-set flags, not only a model name
