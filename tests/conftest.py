"""Test set-up: 8 simulated CPU devices (before jax is imported), shared fixtures."""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # an installed libtpu (the tpu extra) is for compiling only
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every program compiled here or in the CLI runs the tests start goes into the compilation cache (below).
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# Every program the tests compile, and the CLI runs they start, goes into the persistent compilation cache
# (rlhf_jax/compile_cache.py: $RLHF_JAX_CACHE/xla, or RLHF_JAX_COMPILE_CACHE), however fast it compiled, where
# a researcher's run keeps only the slow ones: the tests build the same tiny models' steps again and again.
# What a hit loads is the executable the compiler built, so no result changes (tests/test_compile_cache.py
# checks the bits). The kill test gives its runs a cache of their own, filled by a first run.
from rlhf_jax import allocator, compile_cache  # noqa: E402

compile_cache.enable()  # at the threshold of 0 set above


@pytest.fixture(scope="module", autouse=True)
def _return_freed_memory():
    """After each module, what it freed goes back to the system (glibc keeps freed heap pages otherwise, and a
    worker of ``-n 2`` would carry every module's high-water mark beside the other's)."""
    yield
    gc.collect()
    allocator.return_freed_memory()


def pytest_collection_modifyitems(config, items):
    """The tests marked ``long`` first (the sort is stable): with ``-n 2`` each worker starts on its share of
    them, instead of one worker ending the run alone on a five-minute test that came last."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
ONE_DEVICE = ["--config.mesh.shape={'data': 1, 'fsdp': 1, 'tensor': 1}"]
EIGHT_DEVICES = ["--config.mesh.shape={'data': 2, 'fsdp': 2, 'tensor': 2}"]


def tiny_rl(policy: str, *overrides: str):
    """configs/tiny_ppo.py with ``policy`` as the policy and the feedback's sampler, and ``overrides``."""
    from rlhf_jax.config import load_config

    return load_config(os.path.join(CONFIGS, "tiny_ppo.py"),
                       [f"--config.rl.policy={policy}", f"--config.feedback.policy={policy}", *overrides])


def policy_iteration(exp, prompts, scores_B=None):
    """(setup, parameters before, rollout, scores, new state, metrics) of the first policy-gradient iteration of
    ``exp`` on ``prompts``, with ``scores_B`` (default: seeded normal scores) as the reward."""
    import jax
    import numpy as np

    from rlhf_jax.rl import online
    from rlhf_jax.runs import policy_training

    run = policy_training.prepare(exp, None)
    arrays, _ = policy_training.encode_prompts(run.tokenizer, prompts[:exp.rl.rollout_prompts], exp.rl.prompt_tokens)
    ids, mask = policy_training.to_mesh(arrays, run)
    before = jax.device_get(run.state.params)
    experience = run.functions.rollout(run.state.params, run.ref_params, ids, mask, online.rollout_key(run.state.rng))
    experience_host = jax.device_get(experience)
    if scores_B is None:
        scores_B = np.random.default_rng(0).normal(size=exp.rl.rollout_prompts).astype(np.float32)
    state, metrics = run.functions.update(run.state, experience, policy_training.to_mesh(scores_B, run))
    return run, before, experience_host, scores_B, jax.device_get(state), jax.device_get(metrics)


class LengthGold:
    """A deterministic stand-in gold scorer: longer responses are better."""

    def score(self, prompts, responses):
        import numpy as np

        return np.asarray([len(r) / 10.0 for r in responses])


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2 as the float32 transformers directory rlhf_jax makes from its GGUF asset."""
    from rlhf_jax.models.pretrained import resolve_source

    return resolve_source("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The SmolLM2 asset itself, a Q4_1 GGUF file."""
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


def write_tiny_policy(path: str, smollm2_dir: str) -> str:
    """A tiny random Llama (torch's initialisation, seed 0) with SmolLM2's tokenizer, as a Hugging Face directory."""
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=48, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, smollm2_dir):
    """The tiny policy; RLHF_JAX_TINY_POLICY names one written beforehand (a venv without torch uses it)."""
    prepared = os.environ.get("RLHF_JAX_TINY_POLICY")
    if prepared:
        return prepared
    return write_tiny_policy(str(tmp_path_factory.mktemp("policy")), smollm2_dir)


@pytest.fixture(scope="session")
def prompts(tiny_policy):
    """64 training openings of 8 tokens, as the tiny policy's tokenizer reads them."""
    from rlhf_jax.feedback.collect import sentiment_prompts
    from rlhf_jax.models import load_tokenizer

    return sentiment_prompts(64, 8, load_tokenizer(tiny_policy), split="train")


@pytest.fixture(scope="session")
def reward_model(tiny_policy):
    """tiny_ppo.py's reward model, untrained (random weights): a deterministic reward for RL tests."""
    from flax import nnx

    from rlhf_jax.scoring import RewardModel
    from rlhf_jax.trained import load_model

    exp = tiny_rl(tiny_policy)
    model, tokenizer = load_model(exp.model)
    graphdef, params = nnx.split(model)
    return RewardModel(graphdef, params, tokenizer, exp.data.max_length)


# Goldens: recorded numbers that a refactor must reproduce. XLA:CPU picks its kernels by the host's vector
# ISA, so float32 rounding repeats bit for bit only under the same jax release on the same class of CPU:
# a recording is kept per such environment, compared with ``==`` where one exists for this machine and,
# elsewhere, against the reference recording to |got - recorded| <= GOLDEN_ATOL + GOLDEN_RTOL |recorded|
# (float32 rounding of O(1-40) quantities and of differences of log-probabilities near 0; the deviations
# measured under another jax and on another CPU are in docs/versions.md).
GOLDEN_ATOL, GOLDEN_RTOL = 1e-6, 1e-5
GOLDEN_REFERENCE = "jax 0.10.2, AuthenticAMD, avx512"  # the first recording (an AMD EPYC, 2026-11)


def golden_environment() -> str:
    """'jax VERSION, CPU VENDOR, ISA': what decides whether float32 results repeat bit for bit."""
    vendor, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = "+".join(name for name, flag in (("avx512", "avx512f"), ("amx", "amx_tile")) if flag in flags)
    return f"jax {jax.__version__}, {vendor}, {isa or 'no avx512'}"


def check_golden(path: str, case: str, got, loose_skip=()) -> bool:
    """Compare ``got`` (JSON-like) with the recording of ``case`` in ``path``: bit for bit if one was made in
    this environment, else to the tolerance above against the reference (GOLDEN_REFERENCE where it holds the
    case, else the first environment by name that does; keys in ``loose_skip``, e.g. a
    digest, skipped there). With RLHF_JAX_RECORD_GOLDEN=1 this environment's recording is written first.
    Returns whether the comparison was exact."""
    import json

    recordings = json.load(open(path)) if os.path.exists(path) else {}
    here = golden_environment()
    if os.environ.get("RLHF_JAX_RECORD_GOLDEN"):
        recordings.setdefault(here, {})[case] = got
        with open(path, "w") as f:
            json.dump(recordings, f, indent=1, sort_keys=True)
    exact = case in recordings.get(here, {})
    holding = sorted(name for name, cases in recordings.items() if case in cases)  # cases added later: fewer
    reference = GOLDEN_REFERENCE if GOLDEN_REFERENCE in holding else holding[0]
    recorded = recordings[here if exact else reference][case]
    _assert_matches(got, recorded, exact, case, set(loose_skip))
    return exact


def _assert_matches(got, recorded, exact: bool, where: str, loose_skip: set):
    if isinstance(recorded, dict):
        assert sorted(got) == sorted(recorded), where
        for key in recorded:
            if exact or key not in loose_skip:
                _assert_matches(got[key], recorded[key], exact, f"{where}.{key}", loose_skip)
    elif isinstance(recorded, list):
        assert len(got) == len(recorded), where
        for i, (g, r) in enumerate(zip(got, recorded)):
            _assert_matches(g, r, exact, f"{where}[{i}]", loose_skip)
    elif exact or isinstance(recorded, str):
        assert got == recorded, (where, got, recorded)  # bit for bit, no tolerance
    else:
        assert abs(got - recorded) <= GOLDEN_ATOL + GOLDEN_RTOL * abs(recorded), \
            (golden_environment(), where, got, recorded)
