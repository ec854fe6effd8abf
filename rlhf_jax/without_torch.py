"""transformers and tensorboardX without torch: the tokenizers, configs and event files rlhf_jax uses, without
the import of torch that both make wherever torch is installed."""

import os
import sys


def libraries_without_torch() -> None:
    """Have transformers and tensorboardX decide, once, that torch is absent, unless this process has imported
    torch already.

    rlhf_jax's models are JAX: transformers serves the tokenizers and configs alone, tensorboardX the event
    files. Where torch is installed beside them (the test extra, a researcher's environment), transformers
    imports torch with the first tokenizer and tensorboardX with its writer, and every command pays that
    import's seconds and memory. transformers' ``is_torch_available`` is cached and tensorboardX asks at its
    import, so both are asked once while ``import torch`` is blocked (a ``None`` in ``sys.modules``), with
    transformers' advisory "not found" notice muted; then the block is lifted, and code of the user's can
    still import torch."""
    if "torch" in sys.modules:
        return
    advisory = os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS")
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    sys.modules["torch"] = None
    try:
        import tensorboardX.writer  # noqa: F401  (its import is what asks)
        from transformers.utils import import_utils

        import_utils.is_torch_available()
    finally:
        del sys.modules["torch"]
        if advisory is None:
            del os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"]
        else:
            os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = advisory
