"""Keep freed host memory in the process for reuse, so XLA:CPU's per-step buffers stop page-faulting.

Every call of a jitted step allocates its temporaries (activations, gradients) and frees them at the
end. glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh ``mmap``ed pages and
returns them to the kernel on ``free``, so each step touches its big buffers for the first time again:
a page fault and a zero-filled page per 4 KiB. In a profile of the MiniLM reward step
(``experiments/profile_step.py reward``), zeroing the 47 MB embedding gradient alone took 14 ms of a
680 ms step. With ``mmap`` off and trimming off, glibc keeps freed blocks in its heap and the next step
reuses pages already mapped. Results are unchanged (only where memory comes from changes); the cost is
that the process's resident memory does not shrink after its peak.

Applied by the CLI and the benches before their first large allocation. ``RLHF_JAX_KEEP_FREED_MEMORY=0``
leaves the allocator as it is; where the C library is not glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the largest one, so the heap's top is never given back


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large blocks and its heap trimming; True if both took effect."""
    if os.environ.get("RLHF_JAX_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
