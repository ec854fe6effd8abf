"""Test set-up: 8 simulated CPU devices (before jax is imported), shared fixtures."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def smollm2_dir():
    from rlhf_jax import assets

    return str(assets.asset_path("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def minilm_dir():
    from rlhf_jax import assets

    return str(assets.asset_path("minilm-l6"))


@pytest.fixture(scope="session")
def review_sentences():
    """Real Rotten Tomatoes snippets of different lengths (so a batch needs padding)."""
    import bz2
    import csv

    from rlhf_jax import assets

    with bz2.open(assets.asset_path("rotten-tomatoes"), "rt", encoding="utf-8") as f:
        rows = [row["text"].strip() for row in csv.DictReader(f) if row["category"] in ("fresh", "rotten")]
    return [rows[0], rows[1][:60], rows[2], rows[3][:25]]
