"""Keep freed host memory in the process for reuse, so XLA:CPU's per-step buffers stop page-faulting.

Every call of a jitted step allocates its temporaries (activations, gradients, the matmul kernels'
packing buffers) and frees them at the end. glibc gives blocks above its mmap threshold fresh ``mmap``ed
pages and returns them to the kernel on ``free``, so each step touches its big buffers for the first time
again: a page fault and a zero-filled page per 4 KiB. Three settings stop that:

- no ``mmap`` for large blocks (``M_MMAP_MAX`` 0) and no trimming of the heap's top (``M_TRIM_THRESHOLD``
  SIZE_MAX): freed blocks stay in the heap and the next step reuses pages already mapped. The largest
  positive int, 2 GiB, is not enough: an SFT step of SmolLM2 frees more than that at its end, and glibc
  gave 2.6 GB back to the kernel every step;
- one arena (``M_ARENA_MAX`` 1): XLA:CPU's worker threads otherwise allocate from per-thread arenas, whose
  heaps hold at most 64 MiB and which serve larger blocks with ``mmap`` whatever ``M_MMAP_MAX`` says.

What each setting saved on the reward and SFT steps, found with ``perf`` and ``strace``, is in
docs/performance.md (``experiments/profile_step.py``). Results are unchanged (only where memory comes
from changes). The costs: the process's resident memory does not shrink after its peak, and threads
that allocate at once share one lock (XLA:CPU's pool has a thread per core). That lock slows compiles,
which allocate from many threads at once (LLVM's parallel codegen). Worth it for runs made of many steps,
not for a process that mostly compiles (docs/performance.md has both).

Applied by the CLI and the benches before their first large allocation (threads that already have an
arena keep it). ``RLHF_JAX_KEEP_FREED_MEMORY=0`` leaves the allocator as it is; where the C library is not
glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = -1  # mallopt takes an int and glibc stores it as a size_t: -1 becomes SIZE_MAX, no top ever trimmed
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM), (M_ARENA_MAX, 1))
# The same settings as glibc tunables, for a process that cannot call mallopt first (``GLIBC_TUNABLES``,
# read at its start: a bench's peer in a venv of its own).
TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={2**64 - 1}:glibc.malloc.arena_max=1"


def keep_freed_memory() -> bool:
    """Apply ``SETTINGS`` (no mmap, no trimming, one arena) to glibc's malloc; True if all took effect."""
    if os.environ.get("RLHF_JAX_KEEP_FREED_MEMORY", "1") == "0":
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:  # not glibc (macOS, musl without mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = [bool(mallopt(parameter, value)) for parameter, value in SETTINGS]  # every one, even after a failure
    return all(applied)


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel (glibc's ``malloc_trim(0)``), where the settings above are
    not applied: a process that runs one phase after another, such as the test suite between modules, keeps
    otherwise every phase's high-water mark. True if glibc returned any memory."""
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False


def _glibc(function: str):
    """glibc's ``function``, or None where the C library has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None
