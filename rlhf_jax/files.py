"""Files written atomically (a temporary file, flushed, then renamed over the target): a reader, or a
run resumed after a crash, never sees half a file."""

from __future__ import annotations

import json
import os


def write_atomic(path: str, text: str, mode: int = 0o644) -> str:
    """Write ``text`` to ``path`` (creating its folder), with permissions ``mode``; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: str, value, mode: int = 0o644) -> str:
    return write_atomic(path, json.dumps(value, indent=1), mode)


def write_jsonl(rows, path: str) -> str:
    """One JSON object per line."""
    return write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
