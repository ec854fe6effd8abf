"""The allocator setting the CLI applies: on glibc it takes effect, a worker thread's large blocks are reused
without page faults (XLA:CPU's temporaries are allocated by its worker threads), and an environment variable
turns it off. Applied only in child processes, never in the test process itself."""

import json
import platform
import subprocess
import sys

import pytest

from rlhf_jax.allocator import keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# In a fresh process (mallopt settings and a thread's arena last for the process): a worker thread
# allocates, fills and frees a block 3 times; the minor page faults of each round. The block, 2.5 GiB, is
# above both a per-thread arena's 64 MiB heap and the 2 GiB that a positive int trim threshold can say.
BLOCK_MIB = 2560
FAULTS_PER_ROUND = f"""
import json, resource, sys, threading
import numpy as np
from rlhf_jax.allocator import keep_freed_memory
applied = keep_freed_memory()
faults = []
def rounds():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.full({BLOCK_MIB} * 2**20 // 4, 1.0, np.float32)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def test_keep_freed_memory_can_be_turned_off(monkeypatch):
    # Only the refusal runs in this process: applied here, the settings would last for the rest of the suite
    # (and one arena slows XLA's multi-threaded compiles, which the suite is mostly made of).
    monkeypatch.setenv("RLHF_JAX_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False


def faults_per_round(keep: str) -> dict:
    env = {"RLHF_JAX_KEEP_FREED_MEMORY": keep, "PATH": ""}
    result = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND], capture_output=True, text=True, env=env,
                            check=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_a_worker_threads_freed_block_is_reused_without_page_faults():
    kept, default = faults_per_round("1"), faults_per_round("0")
    assert kept["applied"] is True and default["applied"] is False
    # glibc's default maps a fresh block every round: a fault per 2 MiB huge page at least (per 4 KiB page
    # where transparent huge pages are off).
    assert min(default["faults"]) >= BLOCK_MIB // 2, default
    # Kept: the first round maps the heap; later rounds reuse it (a handful for Python's own allocations).
    assert max(kept["faults"][1:]) <= 5, kept


# 200 MB of heap blocks (below glibc's mmap threshold) under one block allocated last, so that freeing them
# leaves the free pages in the middle of the heap, where glibc's own trimming of the heap's top cannot reach.
HELD_UNDER_A_PIN = """
import gc, json
from rlhf_jax.allocator import return_freed_memory
def rss_mb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024
blocks = [b"x" * 10000 for _ in range(20000)]
pin = b"y" * 10000
del blocks
gc.collect()
freed = rss_mb()
returned = return_freed_memory()
print(json.dumps({"freed": freed, "returned": returned, "trimmed": rss_mb()}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system():
    result = subprocess.run([sys.executable, "-c", HELD_UNDER_A_PIN], capture_output=True, text=True, check=True)
    memory = json.loads(result.stdout)
    assert memory["returned"] is True
    assert memory["freed"] - memory["trimmed"] >= 150, memory  # of the 200 MB freed
