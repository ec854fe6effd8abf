"""The label store: SQLite in WAL mode, one schema, numbered migrations.

Guarantees the labeling app relies on:

* an answer is committed (``synchronous=FULL``) before the request that carries it is acknowledged,
  so a crash (even ``kill -9``) loses nothing acknowledged;
* every write is one ``BEGIN IMMEDIATE`` transaction, so concurrent annotators are serialised by
  SQLite's write lock, never interleaved;
* a submission or an undo carries a client ``request_id`` (unique): a retried request returns what it
  already did instead of acting twice, and one annotator holds at most one live answer per item (a
  partial unique index);
* each item has ``k`` slots. A slot is taken by a live answer (a skip takes none) or by an unexpired
  lease: the item shown to an annotator is reserved for them for ``LEASE_SECONDS``. An item is offered
  only while a slot is free, and an answer is accepted only into a free slot or the annotator's own
  lease: an answer for an item whose slots are all taken (an expired page, an item never offered) is
  refused with 409, which also releases the annotator's lease on it, so nobody is shown it again;
* an annotator holds at most one lease: the item they are looking at.

A database file is checked read-only before anything is written to it: a damaged file, a file of
another program or a newer schema is refused and left exactly as it was.

Tokens are stored as SHA-256 digests and compared in constant time; all SQL is parameterised.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence

from rlhf_jax.labeling.schema import MIGRATIONS, SCHEMA_VERSION, check_database_file
from rlhf_jax.labeling.validation import (
    MAX_ITEM_ID_CHARS,
    LabelError,
    check_annotator_name,
    check_request_id,
    check_text,
    token_digest,
    validate_answer,
)

LEASE_SECONDS = 600.0  # how long an item shown to an annotator stays reserved for them

# Slots of `items.id` taken by others than :me: live answers that are not skips, and others' unexpired leases.
_TAKEN_BY_OTHERS = (
    "((SELECT COUNT(*) FROM answers a WHERE a.item_id = items.id AND a.undone_at IS NULL AND a.verdict != 'skip') + "
    "(SELECT COUNT(*) FROM leases l WHERE l.item_id = items.id AND l.annotator != :me AND l.expires_at >= :now))")
_UNANSWERED_BY_ME = ("NOT EXISTS (SELECT 1 FROM answers a WHERE a.item_id = items.id AND a.annotator = :me "
                     "AND a.undone_at IS NULL)")


class LabelStore:
    """All reads and writes of one database file. Safe to share between threads: each thread has its own
    connection, so no connection crosses a thread."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        check_database_file(path)
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

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and kept (opening one costs more than a query)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def close(self) -> None:
        """Close this thread's connection (another call opens a new one)."""
        db, self._local.db = getattr(self._local, "db", None), None
        if db is not None:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start (no upgrade deadlocks)."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT or ROLLBACK: start the next call on a fresh connection
                self.close()
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        yield self._connection()

    def _migrate(self) -> None:
        """Apply the missing migrations, each in its own write transaction; the version is read under the
        write lock, so two processes opening a new file never apply a migration twice."""
        for target in range(1, SCHEMA_VERSION + 1):
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise LabelError(
                        f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})"
                    )
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
        """Register ``name`` with ``token`` (a fresh random one if None), replacing a token it had; returns
        the token, which is stored only as a digest."""
        return self.register_annotators({name: token or secrets.token_urlsafe(24)})[name]

    def register_annotators(self, wanted: Mapping[str, str | None], rotate: bool = False,
                            known: Mapping[str, str] | None = None) -> dict[str, str | None]:
        """Register annotators in one transaction (all or none); returns name -> token, None where an existing
        token was kept but is not known here (only its digest is stored).

        Per name: the token given in ``wanted`` if any; else a new annotator gets its token from ``known``
        (a token file) or a random one; an existing annotator keeps its token (``rotate``: gets a random
        new one). Two annotators with one token are refused, naming both."""
        known = known or {}
        tokens: dict[str, str | None] = {}
        with self._write() as db:
            for name, given in wanted.items():
                check_annotator_name(name)
                row = db.execute("SELECT token_sha256 FROM annotators WHERE name = ?", (name,)).fetchone()
                token = given
                if token is None and row is None:
                    token = known.get(name) or secrets.token_urlsafe(24)
                elif token is None and rotate:
                    token = secrets.token_urlsafe(24)
                elif token is None:
                    kept = known.get(name)
                    tokens[name] = (
                        kept if kept and hmac.compare_digest(token_digest(kept), row["token_sha256"]) else None
                    )
                    continue
                check_text(f"token of {name}", token, 256)
                if not token:
                    raise LabelError(f"token of {name}: must not be empty")
                digest = token_digest(token)
                owner = db.execute("SELECT name FROM annotators WHERE token_sha256 = ? AND name != ?",
                                   (digest, name)).fetchone()
                twin = [other for other, t in tokens.items() if t is not None and token_digest(t) == digest]
                if owner is not None or twin:
                    raise LabelError(f"annotators {(owner['name'] if owner else twin[0])!r} and {name!r} would "
                                     "share one token: give each its own")
                db.execute("INSERT INTO annotators(name, token_sha256, created_at) VALUES (?, ?, ?) "
                           "ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256",
                           (name, digest, time.time()))
                tokens[name] = token
        return tokens

    def annotators(self) -> list[str]:
        with self._read() as db:
            return [row["name"] for row in db.execute("SELECT name FROM annotators ORDER BY name")]

    def authenticate(self, token: str | None) -> str | None:
        """The annotator whose token this is, else None. Every stored digest is compared in constant time."""
        if not token or len(token) > 256:
            return None
        try:
            digest = token_digest(token)
        except UnicodeEncodeError:
            return None
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
        """The item this annotator should label next, leased to them (and their other leases released):
        among the items they have not answered and that have a slot for them, ``prefer`` if they hold its
        lease (an undone item), else the one they already hold, else the first in queue order."""
        now = time.time()
        args = {"me": annotator, "now": now, "k": k, "prefer": prefer}
        free_for_me = f"{_UNANSWERED_BY_ME} AND {_TAKEN_BY_OTHERS} < :k"
        with self._write() as db:
            db.execute("DELETE FROM leases WHERE expires_at < ?", (now,))
            row = db.execute(
                f"SELECT items.* FROM leases JOIN items ON items.id = leases.item_id WHERE leases.annotator = :me "
                f"AND {free_for_me} ORDER BY items.id = :prefer DESC, items.seq LIMIT 1", args).fetchone()
            if row is None:
                row = db.execute(f"SELECT items.* FROM items WHERE {free_for_me} ORDER BY items.seq LIMIT 1",
                                 args).fetchone()
            db.execute("DELETE FROM leases WHERE annotator = ? AND item_id IS NOT ?",
                       (annotator, row["id"] if row else None))
            if row is None:
                return None
            _lease(db, row["id"], annotator, now + lease_seconds)
        return _item(row)

    def submit(self, annotator: str, request_id: str, item_id: str, verdict: str, choice: int | None = None,
               ratings: Sequence[int | None] = (), comment: str = "", k: int | None = None) -> tuple[int, bool]:
        """Record one answer; returns (answer id, whether it is new). A request_id seen before returns its
        answer unchanged (a retry), whatever the rest of the call says. With ``k``, an answer that is not a
        skip needs a free slot (see the module docstring); without one it is refused with 409 and the
        annotator's lease on the item is released."""
        check_request_id(request_id)
        check_text("item_id", item_id, MAX_ITEM_ID_CHARS)
        now = time.time()
        refusal = None
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
            if k is not None and verdict != "skip":
                refusal = _no_free_slot(db, item_id, annotator, k, now)
            if refusal is None:
                cursor = db.execute(
                    "INSERT INTO answers(request_id, item_id, annotator, verdict, choice, ratings, comment, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_id, item_id, annotator, verdict, choice, json.dumps(ratings), comment, now),
                )
            db.execute("DELETE FROM leases WHERE item_id = ? AND annotator = ?", (item_id, annotator))
        if refusal is not None:
            raise refusal  # after the commit: the released lease stays released
        return cursor.lastrowid, True

    def undo(self, annotator: str, request_id: str, item_id: str | None = None) -> str | None:
        """Withdraw this annotator's live answer on ``item_id`` (None: their latest); the answer is kept,
        marked undone, and its item leased back to them so it is shown next. Returns the item id (None when
        there was nothing to undo). A request_id seen before returns what it did then and does nothing more."""
        check_request_id(request_id)
        if item_id is not None:
            check_text("item_id", item_id, MAX_ITEM_ID_CHARS)
        now = time.time()
        with self._write() as db:
            seen = db.execute("SELECT u.annotator, a.item_id FROM undos u LEFT JOIN answers a ON a.id = u.answer_id "
                              "WHERE u.request_id = ?", (request_id,)).fetchone()
            if seen is not None:
                if seen["annotator"] != annotator:
                    raise LabelError(f"request_id {request_id!r} belongs to another annotator", 409)
                return seen["item_id"]
            if item_id is None:
                row = db.execute("SELECT id, item_id FROM answers WHERE annotator = ? AND undone_at IS NULL "
                                 "ORDER BY id DESC LIMIT 1", (annotator,)).fetchone()
            else:
                row = db.execute("SELECT id, item_id FROM answers WHERE annotator = ? AND item_id = ? "
                                 "AND undone_at IS NULL", (annotator, item_id)).fetchone()
                if row is None:
                    raise LabelError(f"item_id: {annotator} has no live answer on item {item_id!r} to undo", 404)
            if row is not None:
                db.execute("UPDATE answers SET undone_at = ? WHERE id = ?", (now, row["id"]))
                db.execute("DELETE FROM leases WHERE annotator = ?", (annotator,))
                _lease(db, row["item_id"], annotator, now + LEASE_SECONDS)
            db.execute("INSERT INTO undos(request_id, annotator, answer_id, created_at) VALUES (?, ?, ?, ?)",
                       (request_id, annotator, row["id"] if row else None, now))
            return row["item_id"] if row else None

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
        """Items in all, items complete (k answers that are not skips), this annotator's live answers, and
        their agreement with others' non-skip votes on the same items."""
        with self._read() as db:
            total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            complete = db.execute("SELECT COUNT(*) FROM (SELECT item_id FROM answers WHERE undone_at IS NULL "
                                  "AND verdict != 'skip' GROUP BY item_id HAVING COUNT(*) >= ?)", (k,)).fetchone()[0]
            mine = db.execute("SELECT COUNT(*) FROM answers WHERE annotator = ? AND undone_at IS NULL",
                              (annotator,)).fetchone()[0]
            # My non-skip votes against other annotators' on the same items: same verdict and same choice.
            compared, agreed = db.execute(
                "SELECT COUNT(*), "
                "COALESCE(SUM(o.verdict = m.verdict AND (m.verdict = 'tie' OR o.choice = m.choice)), 0) "
                "FROM answers m JOIN answers o ON o.item_id = m.item_id AND o.annotator != m.annotator "
                "WHERE m.annotator = ? AND m.undone_at IS NULL AND o.undone_at IS NULL "
                "AND m.verdict != 'skip' AND o.verdict != 'skip'",
                (annotator,),
            ).fetchone()
        return {"total": total, "complete": complete, "mine": mine, "compared": compared,
                "agreement": agreed / compared if compared else None}


def _no_free_slot(db: sqlite3.Connection, item_id: str, annotator: str, k: int, now: float) -> LabelError | None:
    """Why ``annotator`` may not answer ``item_id`` now (all k slots taken by others), or None."""
    args = {"me": annotator, "now": now, "item": item_id}
    live, taken = db.execute(
        "SELECT (SELECT COUNT(*) FROM answers a WHERE a.item_id = items.id AND a.undone_at IS NULL "
        f"AND a.verdict != 'skip'), {_TAKEN_BY_OTHERS} FROM items WHERE items.id = :item", args).fetchone()
    if live >= k:
        return LabelError(f"item {item_id!r} already has its {k} answers; it will not be shown again", 409)
    if taken >= k:
        return LabelError(f"item {item_id!r} is being labelled by the annotators it was shown to (all {k} of its "
                          "slots are taken; yours expired or was never given); it will not be shown again", 409)
    return None


def _lease(db: sqlite3.Connection, item_id: str, annotator: str, expires_at: float) -> None:
    db.execute("INSERT INTO leases(item_id, annotator, expires_at) VALUES (?, ?, ?) ON CONFLICT(item_id, annotator) "
               "DO UPDATE SET expires_at = excluded.expires_at", (item_id, annotator, expires_at))


def _item(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "prompt": row["prompt"],
        "responses": json.loads(row["responses"]),
        "source": row["source"],
    }
