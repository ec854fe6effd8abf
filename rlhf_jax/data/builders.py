"""tensorflow-datasets builders, written as array_record and read with ``as_data_source()`` (no TensorFlow).

Each builder takes rows already validated by ``rlhf_jax.data.records`` (so a bad row stops the build
before anything is written) and keeps their deterministic splits. A dataset lives in
``DATA_ROOT/KIND-<sha256 of the source files>/``: a changed source file is a new dataset, never a
stale one. tfds writes into an ``incomplete.*`` directory and renames it only when every split is
written, so a reader never sees half a dataset; a file lock in it (``.lock``) lets one
process at a time write it, so runs sharing the cache at once (two configs, parallel tests) build it once.
"""

from __future__ import annotations

import logging
import os

import filelock
import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.data import formats, records

log = logging.getLogger(__name__)


def _text():
    return tfds.features.Text()


def _float():
    return tfds.features.Scalar(dtype=np.float32)


class _RowsBuilder(tfds.core.GeneratorBasedBuilder):
    """Writes the given rows, split by their ``split`` field."""

    VERSION = tfds.core.Version("1.0.0")
    FEATURES: dict = {}

    def __init__(self, *, rows: list[dict] | None = None, **kwargs):
        self._rows = rows or []
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {name: make() for name, make in self.FEATURES.items()}))

    def _split_generators(self, dl_manager):
        present = [s for s in records.SPLITS if any(row["split"] == s for row in self._rows)]
        return {split: self._generate_examples(split) for split in present}

    def _generate_examples(self, split):
        for index, row in enumerate(self._rows):
            if row["split"] == split:
                yield str(index), {name: row[name] for name in self.FEATURES}


class RottenTomatoes(_RowsBuilder):
    """Rotten Tomatoes snippets: text, label (0 rotten, 1 fresh); split by a hash of the text."""

    FEATURES = {"text": _text, "label": lambda: tfds.features.ClassLabel(names=["rotten", "fresh"])}


class TextCorpus(_RowsBuilder):
    """Plain text documents (one per line of local files), for causal-LM and MLM training."""

    FEATURES = {"text": _text}


class Preferences(_RowsBuilder):
    FEATURES = {"id": _text, "prompt": _text, "chosen": _text, "rejected": _text, "margin": _float,
                "annotator": _text, "source": _text, "gold_chosen": _float, "gold_rejected": _float}


class Ratings(_RowsBuilder):
    FEATURES = {"id": _text, "prompt": _text, "response": _text, "score": _float, "annotator": _text, "source": _text}


class LanguageFeedback(_RowsBuilder):
    FEATURES = {"id": _text, "prompt": _text, "response": _text, "feedback": _text, "annotator": _text,
                "source": _text}


class UnpairedPreferences(_RowsBuilder):
    """KTO's data: one response each, desirable (label True) or not."""

    FEATURES = {"id": _text, "prompt": _text, "response": _text, "label": lambda: tfds.features.Scalar(dtype=np.bool_),
                "annotator": _text, "source": _text}


class Completions(_RowsBuilder):
    """Supervised fine-tuning rows: a prompt (may be empty) and the completion to learn."""

    FEATURES = {"id": _text, "prompt": _text, "completion": _text, "source": _text}


class Prompts(_RowsBuilder):
    """Prompts alone, for online RL."""

    FEATURES = {"id": _text, "prompt": _text, "source": _text}


def _feedback(kind: str):
    return lambda paths, renderer: formats.read_feedback(paths, kind, renderer)


# dataset kind -> (builder, reader of its source files and a formats.Renderer for conversations)
DATASETS = {
    "rotten_tomatoes": (RottenTomatoes, lambda paths, renderer: records.read_rotten_tomatoes(paths)),
    "text_corpus": (TextCorpus, lambda paths, renderer: records.read_text_corpus(paths)),
    "preferences": (Preferences, _feedback("preference")),
    "unpaired_preferences": (UnpairedPreferences, _feedback("unpaired")),
    "ratings": (Ratings, _feedback("rating")),
    "language_feedback": (LanguageFeedback, _feedback("language")),
    "completions": (Completions, _feedback("completion")),
    "prompts": (Prompts, _feedback("prompt")),
}


def build(kind: str, source: str | list[str], data_root: str, renderer: formats.Renderer | None = None):
    """Validate the source, write the dataset if it is not there yet, return {split: data source}. A source
    holding conversations is rendered by ``renderer`` (its chat template names the dataset too)."""
    if kind not in DATASETS:
        raise records.DataError(f"unknown dataset {kind!r} (datasets: {sorted(DATASETS)})")
    builder_class, read = DATASETS[kind]
    renderer = renderer or formats.Renderer()
    rows = read(source, renderer)  # raises DataError naming file:line before anything is written
    rendering = f"-{renderer.identity}" if renderer.used else ""  # conversations: named by their rendering
    data_dir = os.path.join(data_root, f"{kind}-{records.file_digest(source)[:16]}{rendering}")
    tfds.disable_progress_bar()
    os.makedirs(data_dir, exist_ok=True)
    with filelock.FileLock(os.path.join(data_dir, ".lock")):  # the second process waits, then finds it written
        builder = builder_class(rows=rows, data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare()
    return builder.as_data_source()


def decode(example: dict) -> dict:
    """bytes -> str for text features; numpy scalars -> Python numbers."""
    return {k: v.decode("utf-8") if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
            for k, v in example.items()}
