"""A load test of the labeling server on loopback: N annotators answer concurrently through the JSON API
while the server is killed (SIGKILL) and restarted; then every acknowledged answer is checked in the
database. Used by tests/test_labeling_load.py and experiments/bench_labeling.py.

Each simulated annotator loops: GET /api/next, POST /api/answers with a fresh request_id; on a
connection error it retries the *same* request (same request_id) until acknowledged, which is what an
annotator's browser does with a re-sent form. Request loops are bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.launch import free_port


class ServerProcess:
    """``rlhf-jax label serve`` in a child process on 127.0.0.1:port."""

    def __init__(self, db: str, port: int, k: int = 1, threads: int = 8):
        self.args = [sys.executable, "-m", "rlhf_jax.cli", "label", "serve", "--db", db, "--port", str(port),
                     "--labels-per-item", str(k), "--threads", str(threads)]
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"label server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"label server on port {self.port} not up after {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Annotator(threading.Thread):
    """Answers ``quota`` items through the API; records every acknowledged (request_id, answer_id)."""

    def __init__(self, name: str, token: str, port: int, quota: int, deadline: float):
        super().__init__(daemon=True)
        self.name_, self.token, self.port, self.quota, self.deadline = name, token, port, quota, deadline
        self.acknowledged: dict[str, int] = {}
        self.retries = 0
        self.error: str | None = None
        self.connection: http.client.HTTPConnection | None = None

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One request, retried on connection errors (server down) until the deadline."""
        payload = None if body is None else json.dumps(body)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{self.name_}: deadline passed")
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (OSError, http.client.HTTPException):
                self.retries += 1
                self.connection = None
                time.sleep(0.05)

    def run(self) -> None:
        try:
            while len(self.acknowledged) < self.quota:
                status, body = self._call("GET", "/api/next")
                if status != 200 or body.get("item") is None:
                    raise RuntimeError(f"{self.name_}: /api/next gave {status} {body}")
                item = body["item"]
                request_id = uuid.uuid4().hex
                answer = {"request_id": request_id, "item_id": item["id"], "verdict": "choice",
                          "choice": len(self.acknowledged) % len(item["responses"]), "ratings": [], "comment": ""}
                status, body = self._call("POST", "/api/answers", answer)
                if status not in (200, 201):
                    raise RuntimeError(f"{self.name_}: /api/answers gave {status} {body}")
                self.acknowledged[request_id] = body["answer_id"]
        except Exception as error:  # reported by the caller
            self.error = repr(error)


def run_load(workdir: str, annotators: int = 8, answers: int = 2000, kill_after: int | None = 1000,
             timeout: float = 300.0) -> dict:
    """The load test; returns counts, the checks' outcomes and answers per second."""
    os.makedirs(workdir, exist_ok=True)
    db = os.path.join(workdir, "load.sqlite")
    store = LabelStore(db)
    store.add_items([{"id": f"item-{n:05d}", "prompt": f"prompt {n}", "responses": [f"a {n}", f"b {n}"]}
                     for n in range(answers)])
    tokens = {f"annotator{i}": store.add_annotator(f"annotator{i}") for i in range(annotators)}
    port = free_port()
    server = ServerProcess(db, port)
    server.start()
    deadline = time.monotonic() + timeout
    quotas = [answers // annotators + (i < answers % annotators) for i in range(annotators)]
    workers = [Annotator(name, token, port, quota, deadline) for (name, token), quota in zip(tokens.items(), quotas)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    killed_at = restarted_at = None
    try:
        if kill_after is not None:
            while sum(len(w.acknowledged) for w in workers) < kill_after and time.monotonic() < deadline:
                time.sleep(0.01)
            killed_at = time.monotonic() - start
            acknowledged_before_kill = sum(len(w.acknowledged) for w in workers)
            server.kill()
            server.start()
            restarted_at = time.monotonic() - start
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    acknowledged = {rid: aid for w in workers for rid, aid in w.acknowledged.items()}
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT request_id, id FROM answers WHERE undone_at IS NULL").fetchall()
        per_item = connection.execute("SELECT MAX(c) FROM (SELECT COUNT(*) c FROM answers WHERE undone_at IS NULL "
                                      "GROUP BY item_id)").fetchone()[0]
    stored: dict[str, list[int]] = {}
    for request_id, answer_id in rows:
        stored.setdefault(request_id, []).append(answer_id)
    return {
        "annotators": annotators, "answers_target": answers, "acknowledged": len(acknowledged),
        "stored": len(rows), "errors": [w.error for w in workers if w.error],
        "lost": sorted(set(acknowledged) - set(stored)),
        "duplicated": sorted(rid for rid, ids in stored.items() if len(ids) > 1),
        "mismatched": sorted(rid for rid, aid in acknowledged.items() if stored.get(rid, [aid])[0] != aid),
        "unacknowledged_stored": len(set(stored) - set(acknowledged)),
        "max_answers_per_item": per_item, "client_retries": sum(w.retries for w in workers),
        "killed_at_s": killed_at, "restarted_at_s": restarted_at,
        "acknowledged_before_kill": acknowledged_before_kill if kill_after is not None else None,
        "seconds": elapsed, "answers_per_second": len(acknowledged) / elapsed,
    }
