"""Labeling queues: JSONL items of a prompt and two or more responses to compare.

A queue file holds either ``queue`` rows (id, prompt, responses), as ``rlhf-jax collect --unlabelled``
writes them, or the ``preference`` rows that ``rlhf-jax collect`` writes (the simulated label is
dropped: people label them afresh). The order in which the responses of a preference row are shown
is a hash of its id, so the chosen response is not always on the left.
"""

from __future__ import annotations

import hashlib
import json
import os

from rlhf_jax.data import formats, records


def _first_row_kind(path: str) -> str:
    if not os.path.isfile(path):
        raise records.DataError(f"{path}: no such file")
    for _, line in records.read_lines(path):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return "queue"  # read_feedback reports the line
            return "preference" if isinstance(row, dict) and "chosen" in row else "queue"
    return "queue"


def read_queue(path: str) -> list[dict]:
    """Items (id, prompt, responses, source) of a queue or preference file; DataError names a bad line."""
    kind = _first_row_kind(path)
    rows = formats.read_feedback(path, kind)
    if kind == "queue":
        return [{"id": r["id"], "prompt": r["prompt"], "responses": list(r["responses"]), "source": r.get("source", "")}
                for r in rows]
    items = []
    for r in rows:
        swap = int(hashlib.sha256(r["id"].encode()).hexdigest(), 16) % 2 == 1
        pair = [r["rejected"], r["chosen"]] if swap else [r["chosen"], r["rejected"]]
        items.append({"id": r["id"], "prompt": r["prompt"], "responses": pair, "source": r.get("source", "")})
    return items


def queue_rows(prompts: list[str], samples: list[list[str]], source: str, id_prefix: str) -> list[dict]:
    """Queue rows for ``samples[k]``, the continuations of ``prompts[k]`` (empty continuations dropped;
    a prompt with fewer than two left is skipped)."""
    rows = []
    for k, (prompt, group) in enumerate(zip(prompts, samples)):
        responses = [r for r in group if r.strip()]
        if len(responses) >= 2:
            rows.append({"id": f"{id_prefix}{k}", "split": records.hash_split(f"{id_prefix}{k}"), "prompt": prompt,
                         "responses": responses, "source": source})
    return rows
