"""The persistent compilation cache: compiled XLA programs kept on disk, so that the next run of the same
config (or any run that compiles the same program) loads them instead of compiling again.

JAX keys an entry on the program's HLO, its devices and shardings, the compile options and the jax,
jaxlib and XLA versions, and what it loads is the executable the compiler built: no number changes,
only the time to the first step. Programs that compile in under a second are not stored (JAX's
threshold; ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` moves it), and the least recently used entries
are deleted above ``MAX_BYTES``.

A run killed while JAX writes an entry leaves it cut short, and JAX never replaces an entry it finds on disk:
every later run would warn that it cannot read it and compile again. ``enable`` first drops such entries
(``drop_cut_entries``), and the next compile writes them whole.

Only process 0 of a multi-process run writes entries; the others are meant to load them. On CPU they
never could: JAX keys an entry on the fingerprint of the process's own topology, which names that
process's devices, so every other process missed every entry and compiled every program in every run.
``enable`` keys CPU programs on the host's CPU instead while more than one process runs
(``key_cpu_programs_by_host``).

Where: ``$RLHF_JAX_COMPILE_CACHE``, else ``$RLHF_JAX_CACHE/xla`` (default ``~/.cache/rlhf_jax/xla``);
``RLHF_JAX_COMPILE_CACHE=off`` turns it off. The CLI turns it on for the commands that compile.
XLA:CPU compiles for the host's instruction set: give machines with different CPUs different
directories, not one shared over the network.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

from rlhf_jax.assets import cache_dir

ENV = "RLHF_JAX_COMPILE_CACHE"
MAX_BYTES = 8 * 2**30


def directory() -> Path | None:
    """Where the cache lives, or None where ``RLHF_JAX_COMPILE_CACHE`` is ``off``."""
    chosen = os.environ.get(ENV, "")
    if chosen.lower() in ("off", "0", "none", "false"):
        return None
    if chosen:
        return Path(chosen).expanduser()
    return cache_dir().parent / "xla"


def enable(path: str | os.PathLike | None = None, min_compile_seconds: float | None = None) -> Path | None:
    """Turn the cache on at ``path`` (default: ``directory()``) before the first compile, keeping programs that
    compiled in at least ``min_compile_seconds`` (None: JAX's setting); returns where it is, or None where it
    is off."""
    import jax

    where = Path(path) if path is not None else directory()
    if where is None:
        return None
    where.mkdir(parents=True, exist_ok=True)
    drop_cut_entries(where)
    key_cpu_programs_by_host()
    jax.config.update("jax_compilation_cache_dir", str(where))
    if min_compile_seconds is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return where


def drop_cut_entries(where: Path, lock_seconds: float = 10.0) -> list[str]:
    """Delete the entries of the cache at ``where`` that a killed run left cut short; returns their names.

    With a size limit (``enable`` sets one) JAX writes an entry's ``-cache`` file, then its ``-atime`` file,
    both under ``.lockfile``. So under that lock, an entry without ``-atime`` was cut short or was written by a
    JAX without a limit: it is kept if it decompresses whole. Nothing is dropped where this JAX names its
    files otherwise, or where another process holds the lock for ``lock_seconds``."""
    import sys

    import filelock

    try:
        from jax._src import compilation_cache, lru_cache
    except ImportError:
        return []
    entry, stamp = getattr(lru_cache, "_CACHE_SUFFIX", None), getattr(lru_cache, "_ATIME_SUFFIX", None)
    if not entry or not stamp:
        return []

    def whole(path: Path) -> bool:
        try:
            compilation_cache.decompress_executable(path.read_bytes())
            return True
        except FileNotFoundError:
            return True  # gone meanwhile: nothing to drop
        except Exception:  # each decompressor raises its own error on a stream cut short
            return False

    try:
        with filelock.FileLock(where / ".lockfile", timeout=lock_seconds):
            cut = [p for p in where.glob(f"*{entry}")
                   if not p.with_name(p.name[:-len(entry)] + stamp).exists() and not whole(p)]
            for path in cut:
                path.unlink(missing_ok=True)
    except filelock.Timeout:
        return []
    if cut:
        print(f"rlhf-jax: compilation cache {where}: dropped {len(cut)} "
              f"entr{'y' if len(cut) == 1 else 'ies'} a killed run left cut short", file=sys.stderr)
    return [p.name for p in cut]


@functools.cache
def key_cpu_programs_by_host() -> bool:
    """Make the processes of one multi-process CPU run compute the same key for the same program, so that
    what process 0 writes the others load; returns whether it could (not where JAX keys otherwise).

    JAX hashes the fingerprint of ``get_topology_for_devices``: on CPU that is the calling process's own
    topology, whatever devices the program spans, and it differs from process to process. While more than one
    process runs, a CPU program's key takes instead its devices' kind (JAX's own fallback) and the host's
    CPU model and instruction-set flags (XLA:CPU compiles for them). The rest of the key (the program, its
    device assignment, the compile options, the versions) is JAX's. One process, and other platforms,
    keep JAX's key untouched."""
    try:
        import jax
        from jax._src import cache_key
    except ImportError:
        return False
    jax_hash = getattr(cache_key, "_hash_accelerator_config", None)
    hash_devices, hash_string = getattr(cache_key, "_hash_devices", None), getattr(cache_key, "_hash_string", None)
    if jax_hash is None or hash_devices is None or hash_string is None:
        return False

    def hash_accelerator_config(hash_obj, accelerators):
        if jax.process_count() > 1 and all(device.platform == "cpu" for device in accelerators.flat):
            hash_devices(hash_obj, accelerators)
            hash_string(hash_obj, host_cpu())
        else:
            jax_hash(hash_obj, accelerators)

    cache_key._hash_accelerator_config = hash_accelerator_config
    return True


@functools.cache
def host_cpu() -> str:
    """The host CPU's model and instruction-set flags, as Linux's /proc/cpuinfo gives them; elsewhere what
    ``platform`` knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    fields = {name.strip(): value for name, value in (line.split(":", 1) for line in lines if ":" in line)}
    # the last processor's fields, as all match; the names are padded with tabs ("model name\t: ...")
    return " | ".join(fields.get(name, "").strip() for name in ("model name", "flags", "Features", "CPU part"))
