"""The persistent compilation cache: compiled XLA programs kept on disk, so that the next run of the same
config (or any run that compiles the same program) loads them instead of compiling again.

JAX keys an entry on the program's HLO, its devices and shardings, the compile options and the jax,
jaxlib and XLA versions, and what it loads is the executable the compiler built: no number changes,
only the time to the first step. Programs that compile in under a second are not stored (JAX's
threshold; ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` moves it), and the least recently used entries
are deleted above ``MAX_BYTES``.

Where: ``$RLHF_JAX_COMPILE_CACHE``, else ``$RLHF_JAX_CACHE/xla`` (default ``~/.cache/rlhf_jax/xla``);
``RLHF_JAX_COMPILE_CACHE=off`` turns it off. The CLI turns it on for the commands that compile.
XLA:CPU compiles for the host's instruction set: give machines with different CPUs different
directories, not one shared over the network.
"""

from __future__ import annotations

import os
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
    jax.config.update("jax_compilation_cache_dir", str(where))
    if min_compile_seconds is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return where
