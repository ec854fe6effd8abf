"""The label database's schema: numbered migrations (``PRAGMA user_version``) and the read-only check
of a database file before anything is written to it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse

from rlhf_jax.labeling.validation import LabelError

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version); never edit a released one.
# Statements are split at ";", so none may hold one, comments included.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        prompt TEXT NOT NULL,
        responses TEXT NOT NULL,            -- JSON list of >= 2 strings
        source TEXT NOT NULL DEFAULT '',
        added_at REAL NOT NULL
    );
    CREATE TABLE annotators (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE TABLE answers (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        item_id TEXT NOT NULL REFERENCES items(id),
        annotator TEXT NOT NULL REFERENCES annotators(name),
        verdict TEXT NOT NULL CHECK (verdict IN ('choice', 'tie', 'skip')),
        choice INTEGER,                     -- index of the better response when verdict = 'choice'
        ratings TEXT NOT NULL DEFAULT '[]', -- JSON list: a 1-7 rating or null per response
        comment TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        undone_at REAL                      -- set by undo (the row is kept for the audit trail)
    );
    CREATE UNIQUE INDEX one_live_answer ON answers(item_id, annotator) WHERE undone_at IS NULL;
    """,
    """
    CREATE TABLE leases (
        item_id TEXT NOT NULL REFERENCES items(id),
        annotator TEXT NOT NULL REFERENCES annotators(name),
        expires_at REAL NOT NULL,
        PRIMARY KEY (item_id, annotator)
    );
    CREATE INDEX answers_by_annotator ON answers(annotator, created_at);
    """,
    """
    CREATE TABLE undos (
        request_id TEXT PRIMARY KEY,
        annotator TEXT NOT NULL REFERENCES annotators(name),
        answer_id INTEGER REFERENCES answers(id),  -- the answer withdrawn, NULL when there was none
        created_at REAL NOT NULL
    );
    """,
    """
    CREATE INDEX live_votes_by_item ON answers(item_id, verdict) WHERE undone_at IS NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def check_database_file(path: str) -> None:
    """Refuse, without writing to it, a file that is not a healthy label database of this code's schema or
    older. A missing file is fine (it will be created)."""
    if not os.path.exists(path):
        return
    if not os.path.isfile(path):
        raise LabelError(f"{path}: not a file")
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LabelError(f"{path}: schema version {version} is newer than this code ({SCHEMA_VERSION}); "
                                 "use a newer rlhf_jax")
            if version == 0 and db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                raise LabelError(f"{path}: an SQLite database, but not a label database (it has tables and no "
                                 "label schema version)")
            problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as error:
        raise LabelError(f"{path}: not a readable label database ({error})") from None
    if problems != ["ok"]:
        raise LabelError(f"{path}: the database is damaged ({'; '.join(problems[:3])})")
