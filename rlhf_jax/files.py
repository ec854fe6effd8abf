"""Files written atomically (a temporary file, flushed, then renamed over the target): a reader, or a
run resumed after a crash, never sees half a file; and the stamp that tells a file rewritten in place."""

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


def stamp(path: str) -> tuple:
    """(name, size, mtime) of a file, or of each file in a directory: the key of something parsed from
    ``path`` once per process, which changes when the files are rewritten in place."""
    names = sorted(os.listdir(path)) if os.path.isdir(path) else [""]
    stats = ((name, os.stat(os.path.join(path, name) if name else path)) for name in names)
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)
