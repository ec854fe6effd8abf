"""transformers without torch: the tokenizers and configs rlhf_jax uses, without the import of torch that
transformers makes wherever torch is installed."""

import os
import sys


def transformers_without_torch() -> None:
    """Have transformers decide, once, that torch is absent, unless this process has imported torch already.

    rlhf_jax's models are JAX: transformers serves the tokenizers and configs alone. Where torch is installed
    beside it (the test extra, a researcher's environment), transformers imports torch with the first
    tokenizer, and every command pays that import's seconds and memory. ``is_torch_available`` is cached, so it
    is asked once while ``import torch`` is blocked (a ``None`` in ``sys.modules``), with the advisory "not
    found" notice muted; then the block is lifted, and code of the user's can still import torch."""
    if "torch" in sys.modules:
        return
    advisory = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    sys.modules["torch"] = None
    try:
        from transformers.utils import import_utils

        import_utils.is_torch_available()
    finally:
        del sys.modules["torch"]
        if advisory is None:
            del os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"]
        else:
            os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = advisory
