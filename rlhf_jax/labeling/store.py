"""The label store: SQLite in WAL mode, one schema, numbered migrations.

Guarantees the labeling app relies on:

* an answer is committed (``synchronous=FULL``) before the request that carries it is acknowledged,
  so a crash (even ``kill -9``) loses nothing acknowledged;
* every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent annotators are serialised by
  SQLite's write lock, never interleaved;
* a submission carries a client ``request_id`` (unique): a retried request returns the answer it
  already made instead of counting twice, and one annotator holds at most one live answer per item
  (a partial unique index);
* an item is offered to at most ``k`` annotators at a time: live answers plus unexpired leases of
  others stay below ``k``.

Tokens are stored as SHA-256 digests and compared in constant time; all SQL is parameterised.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import time
from typing import Iterator, Sequence

# Each entry moves the schema from version i to i + 1 (PRAGMA user_version); never edit a released one.
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
)
SCHEMA_VERSION = len(MIGRATIONS)
VERDICTS = ("choice", "tie", "skip")
MAX_COMMENT_CHARS = 2000
RATING_RANGE = (1, 7)
LEASE_SECONDS = 600.0  # how long an item shown to an annotator stays reserved for them


class LabelError(ValueError):
    """A submission the store refuses; ``status`` is the HTTP status the app answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LabelStore:
    """All reads and writes of one database file. Safe to share between threads: each call opens its own
    connection (cheap for SQLite), so no connection crosses a thread."""

    def __init__(self, path: str):
        self.path = path
        with self._read() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once on the file
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit; we BEGIN ourselves
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start (no upgrade deadlocks)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    def _migrate(self) -> None:
        """Apply the missing migrations, each in its own write transaction; the version is read under the
        write lock, so two processes opening a new file never apply a migration twice."""
        for target in range(1, SCHEMA_VERSION + 1):
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LabelError(f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})")
                if version >= target:
                    continue
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")  # PRAGMA takes no parameters; target is an int

    def schema_version(self) -> int:
        with self._read() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    # -- annotators and items ---------------------------------------------------------------------------
    def add_annotator(self, name: str, token: str | None = None) -> str:
        """Register ``name`` (or give it a new token); returns the token, which is stored only as a digest."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise LabelError(f"annotator name {name!r}: use 1-64 letters, digits, '-' or '_'")
        token = token or secrets.token_urlsafe(24)
        with self._write() as db:
            db.execute("INSERT INTO annotators(name, token_sha256, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                       (name, token_digest(token), time.time()))
        return token

    def authenticate(self, token: str | None) -> str | None:
        """The annotator whose token this is, else None. Every stored digest is compared in constant time."""
        if not token or len(token) > 256:
            return None
        digest = token_digest(token)
        with self._read() as db:
            rows = db.execute("SELECT name, token_sha256 FROM annotators").fetchall()
        name = None
        for row in rows:
            if hmac.compare_digest(row["token_sha256"], digest):
                name = row["name"]
        return name

    def add_items(self, items: Sequence[dict]) -> int:
        """Insert queue items (id, prompt, responses, source); ids already present are left as they are.
        Returns how many were new."""
        with self._write() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), -1) FROM items").fetchone()[0]
            added = 0
            for item in items:
                if db.execute("SELECT 1 FROM items WHERE id = ?", (item["id"],)).fetchone():
                    continue
                seq += 1
                db.execute("INSERT INTO items(id, seq, prompt, responses, source, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (item["id"], seq, item["prompt"], json.dumps(item["responses"]), item.get("source", ""),
                            time.time()))
                added += 1
        return added

    def item(self, item_id: str) -> dict | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    # -- labeling ---------------------------------------------------------------------------------------
    def next_item(self, annotator: str, k: int, lease_seconds: float = LEASE_SECONDS,
                  prefer: str | None = None) -> dict | None:
        """The item this annotator should label next, leased to them: ``prefer`` if they hold its lease
        (an undone item), else the one they already hold, else the first (in queue order) they have not
        answered whose live answers + others' leases are below k."""
        now = time.time()
        unanswered = ("NOT EXISTS (SELECT 1 FROM answers a WHERE a.item_id = items.id AND a.annotator = ? "
                      "AND a.undone_at IS NULL)")
        with self._write() as db:
            db.execute("DELETE FROM leases WHERE expires_at < ?", (now,))
            row = db.execute(
                f"SELECT items.* FROM leases JOIN items ON items.id = leases.item_id WHERE leases.annotator = ? "
                f"AND {unanswered} ORDER BY items.id = ? DESC, items.seq LIMIT 1",
                (annotator, annotator, prefer)).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT items.* FROM items WHERE {unanswered} AND "
                    "(SELECT COUNT(*) FROM answers a WHERE a.item_id = items.id AND a.undone_at IS NULL) + "
                    "(SELECT COUNT(*) FROM leases l WHERE l.item_id = items.id AND l.annotator != ?) < ? "
                    "ORDER BY items.seq LIMIT 1", (annotator, annotator, k)).fetchone()
            if row is None:
                return None
            _lease(db, row["id"], annotator, now + lease_seconds)
        return _item(row)

    def submit(self, annotator: str, request_id: str, item_id: str, verdict: str, choice: int | None = None,
               ratings: Sequence[int | None] = (), comment: str = "", k: int | None = None) -> tuple[int, bool]:
        """Record one answer; returns (answer id, whether it is new). A request_id seen before returns its
        answer unchanged (a retry), whatever the rest of the call says."""
        if not request_id or len(request_id) > 128:
            raise LabelError("request_id: a non-empty string of at most 128 characters is required")
        with self._write() as db:
            old = db.execute("SELECT id, annotator FROM answers WHERE request_id = ?", (request_id,)).fetchone()
            if old is not None:
                if old["annotator"] != annotator:
                    raise LabelError(f"request_id {request_id!r} belongs to another annotator", 409)
                return old["id"], False
            row = db.execute("SELECT responses FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise LabelError(f"item {item_id!r} does not exist", 404)
            n = len(json.loads(row["responses"]))
            verdict, choice, ratings, comment = validate_answer(verdict, choice, ratings, comment, n)
            if db.execute("SELECT 1 FROM answers WHERE item_id = ? AND annotator = ? AND undone_at IS NULL",
                          (item_id, annotator)).fetchone():
                raise LabelError(f"item {item_id!r} is already answered by {annotator}; undo it first", 409)
            if k is not None:
                live = db.execute("SELECT COUNT(*) FROM answers WHERE item_id = ? AND undone_at IS NULL",
                                  (item_id,)).fetchone()[0]
                if live >= k:
                    raise LabelError(f"item {item_id!r} already has its {k} answers", 409)
            cursor = db.execute(
                "INSERT INTO answers(request_id, item_id, annotator, verdict, choice, ratings, comment, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, item_id, annotator, verdict, choice, json.dumps(ratings), comment, time.time()))
            db.execute("DELETE FROM leases WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            return cursor.lastrowid, True

    def undo_last(self, annotator: str) -> str | None:
        """Withdraw this annotator's latest live answer (kept, marked undone); returns its item id, leased
        back to them so it is shown next."""
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT id, item_id FROM answers WHERE annotator = ? AND undone_at IS NULL "
                             "ORDER BY id DESC LIMIT 1", (annotator,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE answers SET undone_at = ? WHERE id = ?", (now, row["id"]))
            _lease(db, row["item_id"], annotator, now + LEASE_SECONDS)
            return row["item_id"]

    # -- reading ----------------------------------------------------------------------------------------
    def answers(self, include_undone: bool = False) -> list[dict]:
        """Live answers (with their item) in the order they were given."""
        where = "" if include_undone else "WHERE a.undone_at IS NULL"
        with self._read() as db:
            rows = db.execute(f"SELECT a.*, i.prompt, i.responses FROM answers a JOIN items i ON i.id = a.item_id "
                              f"{where} ORDER BY a.id").fetchall()
        return [{**dict(row), "responses": json.loads(row["responses"]), "ratings": json.loads(row["ratings"])}
                for row in rows]

    def progress(self, annotator: str, k: int) -> dict:
        with self._read() as db:
            total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            complete = db.execute("SELECT COUNT(*) FROM (SELECT item_id FROM answers WHERE undone_at IS NULL "
                                  "GROUP BY item_id HAVING COUNT(*) >= ?)", (k,)).fetchone()[0]
            mine = db.execute("SELECT COUNT(*) FROM answers WHERE annotator = ? AND undone_at IS NULL",
                              (annotator,)).fetchone()[0]
            # My non-skip votes against other annotators' on the same items: same verdict and same choice.
            compared, agreed = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(o.verdict = m.verdict AND (m.verdict = 'tie' OR o.choice = m.choice)), 0) "
                "FROM answers m JOIN answers o ON o.item_id = m.item_id AND o.annotator != m.annotator "
                "WHERE m.annotator = ? AND m.undone_at IS NULL AND o.undone_at IS NULL "
                "AND m.verdict != 'skip' AND o.verdict != 'skip'", (annotator,)).fetchone()
        return {"total": total, "complete": complete, "mine": mine, "compared": compared,
                "agreement": agreed / compared if compared else None}


def validate_answer(verdict: str, choice, ratings, comment, n_responses: int):
    """The answer in canonical form, or LabelError naming the bad field."""
    if verdict not in VERDICTS:
        raise LabelError(f"verdict: {verdict!r} is not one of {VERDICTS}")
    if verdict == "choice":
        if not isinstance(choice, int) or isinstance(choice, bool) or not 0 <= choice < n_responses:
            raise LabelError(f"choice: must be a response index in [0, {n_responses}), got {choice!r}")
    else:
        choice = None
    ratings = list(ratings or [])
    if len(ratings) not in (0, n_responses):
        raise LabelError(f"ratings: give none or one per response ({n_responses}), got {len(ratings)}")
    lo, hi = RATING_RANGE
    for rating in ratings:
        if rating is not None and (not isinstance(rating, int) or isinstance(rating, bool) or not lo <= rating <= hi):
            raise LabelError(f"ratings: each must be an integer {lo}-{hi} or null, got {rating!r}")
    if not isinstance(comment, str):
        raise LabelError("comment: must be a string")
    if len(comment) > MAX_COMMENT_CHARS:
        raise LabelError(f"comment: {len(comment)} characters, at most {MAX_COMMENT_CHARS} allowed", 413)
    return verdict, choice, ratings, comment.strip()


def _lease(db: sqlite3.Connection, item_id: str, annotator: str, expires_at: float) -> None:
    db.execute("INSERT INTO leases(item_id, annotator, expires_at) VALUES (?, ?, ?) ON CONFLICT(item_id, annotator) "
               "DO UPDATE SET expires_at = excluded.expires_at", (item_id, annotator, expires_at))


def _item(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "prompt": row["prompt"], "responses": json.loads(row["responses"]), "source": row["source"]}
