"""The allocator setting the CLI applies: on glibc it takes effect, and an environment variable turns it off."""

import platform

from rlhf_jax.allocator import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("RLHF_JAX_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("RLHF_JAX_KEEP_FREED_MEMORY")
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
