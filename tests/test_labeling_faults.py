"""The faults found by probing the labeling app as an attacker and as an unlucky annotator would use it,
one test (or more) each; every test here failed on the code before its fix. The browser-only ones
(login links clicked from a web page, CSRF from another origin) are in test_labeling_browser.py."""

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from rlhf_jax.data import formats
from rlhf_jax.labeling.app import create_app
from rlhf_jax.labeling.export import export
from rlhf_jax.labeling.load import ServerProcess
from rlhf_jax.labeling.schema import SCHEMA_VERSION
from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.launch import free_port

ITEMS = [{"id": f"i{n}", "prompt": f"prompt {n}", "responses": [f"a{n}", f"b{n}"]} for n in range(4)]


@pytest.fixture
def store(tmp_path):
    store = LabelStore(str(tmp_path / "labels.sqlite"))
    store.add_items(ITEMS)
    return store


class Api:
    """One annotator's JSON API client over a test client of the app."""

    def __init__(self, store, name, k):
        self.name, self.store = name, store
        self.client = create_app(store, k=k).test_client()
        self.headers = {"Authorization": f"Bearer {store.add_annotator(name)}"}

    def next(self):
        item = self.client.get("/api/next", headers=self.headers).get_json()["item"]
        return item and item["id"]

    def answer(self, item_id, request_id=None, verdict="choice", **fields):
        body = {"request_id": request_id or f"{self.name}-{item_id}", "item_id": item_id, "verdict": verdict,
                **({"choice": 0} if verdict == "choice" else {}), **fields}
        return self.client.post("/api/answers", json=body, headers=self.headers)


class Browser:
    """A test client signed in by the login link, as a browser is: cookie, forms with their hidden fields."""

    def __init__(self, store, name, k=1):
        self.token = store.add_annotator(name)
        self.client = create_app(store, k=k).test_client()
        self.client.get(f"/?token={self.token}")

    def form_fields(self, form_id="answer-form"):
        html = self.client.get("/").get_data(as_text=True)
        form = html[html.index(f'id="{form_id}"'):]
        form = form[:form.index("</form>")]
        return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))

    def post(self, path, data, **headers):
        return self.client.post(path, data=data, headers=headers)


def expire_leases(store, annotator):
    """The annotator walked away: their leases are past their expiry."""
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        db.execute("UPDATE leases SET expires_at = 0 WHERE annotator = ?", (annotator,))


def leases_on(store, item_id):
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        return [row[0] for row in db.execute("SELECT annotator FROM leases WHERE item_id = ? AND expires_at > ?",
                                             (item_id, time.time()))]


def live_answers(store, item_id):
    return sorted(a["annotator"] for a in store.answers() if a["item_id"] == item_id)


# -- 1. An annotator stuck on a full item ------------------------------------------------------------------
def test_1_late_page_from_an_expired_lease_leaves_nobody_stuck_on_a_full_item(store):
    alice, bob, dave = (Api(store, name, k=2) for name in ("alice", "bob", "dave"))
    assert alice.next() == "i0"
    expire_leases(store, "alice")                      # alice walks away
    assert (bob.next(), dave.next()) == ("i0", "i0")   # her slot goes to dave
    statuses = {api.name: api.answer("i0").status_code for api in (alice, bob, dave)}  # her old page comes in first
    assert sorted(statuses.values()) == [201, 201, 409]
    assert len(live_answers(store, "i0")) == 2
    for api in (alice, bob, dave):                     # nobody is shown the full item again
        assert api.next() != "i0"
    assert leases_on(store, "i0") == []


def test_1_a_held_lease_on_an_item_that_filled_up_is_not_offered_and_a_409_releases_it(store):
    dave = Api(store, "dave", k=2)
    assert dave.next() == "i0"
    for name in ("bob", "carol"):                      # filled behind dave's back (no k check at this call)
        store.add_annotator(name)
        store.submit(name, f"{name}-i0", "i0", "tie")
    refused = dave.answer("i0")
    assert refused.status_code == 409 and "already has its 2 answers" in refused.get_json()["error"]
    assert "dave" not in leases_on(store, "i0")
    assert dave.next() == "i1" and leases_on(store, "i0") == []


# -- 2. Submitting an item you were not offered ------------------------------------------------------------
def test_2_a_live_lease_of_another_annotator_reserves_its_slot(store):
    alice, bob = Api(store, "alice", k=1), Api(store, "bob", k=1)
    assert alice.next() == "i0"
    sneaked = bob.answer("i0")                         # bob was never offered i0
    assert sneaked.status_code == 409 and "slots are taken" in sneaked.get_json()["error"]
    assert alice.answer("i0").status_code == 201
    assert live_answers(store, "i0") == ["alice"]


# -- 3. CSRF from the same site ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/answer", "/undo"])
@pytest.mark.parametrize("attack", ["other-origin", "same-site", "cross-site", "no-csrf-token", "wrong-csrf-token"])
def test_3_state_changing_forms_from_another_origin_are_refused(store, path, attack):
    victim = Browser(store, "alice")
    fields = victim.form_fields()
    assert victim.post("/answer", {**fields, "verdict": "0"}, Origin="http://localhost").status_code == 303
    before = store.answers(include_undone=True)
    data = {"item_id": "i3", "verdict": "1", "request_id": "forged", "csrf_token": fields.get("csrf_token", "")}
    headers = {}
    if attack == "other-origin":
        headers = {"Origin": "http://localhost:9999"}
    elif attack in ("same-site", "cross-site"):
        headers = {"Sec-Fetch-Site": attack}
    elif attack == "no-csrf-token":
        data.pop("csrf_token")
    else:
        data["csrf_token"] = "0" * 64
    response = victim.post(path, data, **headers)
    assert response.status_code == 403
    assert store.answers(include_undone=True) == before


def test_3_a_login_link_from_another_site_does_not_switch_the_annotator_silently(store):
    victim = Browser(store, "alice")
    carol = store.add_annotator("carol")
    response = victim.client.get(f"/?token={carol}", headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200 and "Set-Cookie" not in response.headers
    assert "signed in as <b id=\"current\">alice</b>" in response.get_data(as_text=True)
    assert '<span id="annotator">alice</span>' in victim.client.get("/").get_data(as_text=True)
    page = victim.client.get(f"/?token={carol}").get_data(as_text=True)  # confirming is a same-origin POST
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert victim.post("/login", {"token": carol, "csrf_token": csrf}).status_code == 303
    assert '<span id="annotator">carol</span>' in victim.client.get("/").get_data(as_text=True)


# -- 5. /api/undo ignores item_id and is not idempotent ----------------------------------------------------
def test_5_api_undo_withdraws_the_named_item_once_per_request_id(store):
    alice = Api(store, "alice", k=1)
    for item in ("i0", "i1", "i2"):
        assert alice.answer(item).status_code == 201

    def undo(body):
        return alice.client.post("/api/undo", json=body, headers=alice.headers)

    assert undo({"request_id": "u1", "item_id": "i0"}).get_json() == {"item_id": "i0"}
    assert undo({"request_id": "u1", "item_id": "i0"}).get_json() == {"item_id": "i0"}  # a retry
    assert undo({"request_id": "u1"}).get_json() == {"item_id": "i0"}                   # still that one
    assert [a["item_id"] for a in store.answers()] == ["i1", "i2"]
    assert undo({"request_id": "u2"}).get_json() == {"item_id": "i2"}                   # no item: the latest
    missing = undo({"request_id": "u3", "item_id": "i0"})                                # nothing live on i0
    assert missing.status_code == 404 and "item_id" in missing.get_json()["error"]
    assert [a["item_id"] for a in store.answers()] == ["i1"]


# -- 6. Tokens change on a restart and on a failed start ---------------------------------------------------
def serve_command(db, port, *args):
    return [sys.executable, "-m", "rlhf_jax.cli", "label", "serve", "--db", db, "--port", str(port), *args]


def links_of_a_start(db, *args, timeout=60.0):
    """Start the server, read the links it prints, stop it: {name: token}."""
    port = free_port()
    process = subprocess.Popen(serve_command(db, port, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    links = {}
    try:
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            match = re.match(r"(\S+): http://\S+/\?token=(\S+)", line)
            if match:
                links[match[1]] = match[2]
            if line.startswith("serving") or time.monotonic() > deadline:
                break
        else:
            raise AssertionError(f"the server did not start: {process.stderr.read()[-2000:]}")
    finally:
        process.terminate()
        process.wait(timeout=30)
    return links


def test_6_tokens_survive_a_restart_and_rotate_only_when_asked(tmp_path):
    db, token_file = str(tmp_path / "labels.sqlite"), str(tmp_path / "tokens.json")
    first = links_of_a_start(db, "--annotator", "alice", "--annotator", "bob", "--token-file", token_file)
    assert set(first) == {"alice", "bob"}
    again = links_of_a_start(db, "--annotator", "alice", "--annotator", "bob", "--token-file", token_file)
    assert again == first                                  # the same links, read back from the token file
    store = LabelStore(db)
    assert store.authenticate(first["alice"]) == "alice" and store.authenticate(first["bob"]) == "bob"
    links_of_a_start(db, "--annotator", "alice")           # no token file: nothing to print, nothing changed
    assert store.authenticate(first["alice"]) == "alice"
    rotated = links_of_a_start(db, "--annotator", "bob", "--rotate-tokens", "--token-file", token_file)
    assert rotated["bob"] != first["bob"] and rotated["alice"] == first["alice"]
    assert store.authenticate(first["bob"]) is None and store.authenticate(rotated["bob"]) == "bob"
    assert json.load(open(token_file)) == rotated


def test_6_a_start_that_fails_on_a_taken_port_changes_no_token(tmp_path):
    db = str(tmp_path / "labels.sqlite")
    store = LabelStore(db)
    token = store.add_annotator("alice")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = subprocess.run(serve_command(db, taken.getsockname()[1], "--annotator", "alice", "--annotator",
                                              "newcomer"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert re.fullmatch(r"rlhf-jax: error: cannot listen on 127\.0\.0\.1:\d+ .*\n", result.stderr)
    assert store.authenticate(token) == "alice" and store.annotators() == ["alice"]


# -- 7. 500s on bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,field", [
    ("[" * 6000, "nested too deeply"),
    ('{"request_id": "\\ud800", "item_id": "i0", "verdict": "tie"}', "request_id"),
    ('{"request_id": "r", "item_id": "\\ud800", "verdict": "tie"}', "item_id"),
    ('{"request_id": "r", "item_id": "i0", "verdict": "tie", "comment": "a \\ud800 b"}', "comment"),
    ('{"request_id": "r", "item_id": "i0", "verdict": "choice", "choice": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"request_id": "r", "item_id": "i0", "verdict": "\\udfff"}', "verdict"),
])
def test_7_hostile_json_gets_a_400_naming_the_problem(store, raw, field):
    alice = Api(store, "alice", k=1)
    response = alice.client.post("/api/answers", data=raw.encode(), headers={**alice.headers,
                                                                             "Content-Type": "application/json"})
    assert response.status_code == 400 and field in response.get_json()["error"]
    undo = alice.client.post("/api/undo", data=raw.replace('"item_id": "i0", ', "").encode(),
                             headers={**alice.headers, "Content-Type": "application/json"})
    assert undo.status_code == 400
    assert store.answers() == []


@pytest.mark.parametrize("fields,field", [
    ({"verdict": "²"}, "verdict"),
    ({"verdict": "³"}, "verdict"),
    ({"verdict": "9" * 5000}, "verdict"),
    ({"verdict": "0", "rating_0": "²"}, "rating_0"),
    ({"verdict": "0", "rating_0": "9" * 5000}, "rating_0"),
    ({"verdict": "0", "rating_²": "3"}, "rating_²"),
])
def test_7_hostile_form_fields_get_a_400_naming_the_field(store, fields, field):
    alice = Browser(store, "alice")
    response = alice.post("/answer", {**alice.form_fields(), **fields})
    assert response.status_code == 400 and field in response.get_data(as_text=True)
    assert store.answers() == []


# -- 8. Big bodies are read before they are refused --------------------------------------------------------
def test_8_an_oversized_body_is_refused_before_it_is_read(tmp_path):
    db = str(tmp_path / "labels.sqlite")
    LabelStore(db)
    server = ServerProcess(db, free_port())
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(b"POST /api/answers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 33554432\r\n\r\n" + b"x" * 65536)  # 32 MiB announced, 64 KiB sent
            reply = connection.recv(4096)
    finally:
        server.stop()
    assert reply.startswith(b"HTTP/1.1 413")


# -- 9. Start-up and export tracebacks ---------------------------------------------------------------------
def label_db_with_answers(path):
    store = LabelStore(path)
    store.add_items([{"id": f"item-{n}", "prompt": "p" * 200, "responses": ["x" * 300, "y" * 300]} for n in range(200)])
    store.add_annotator("alice")
    for n in range(200):
        store.submit("alice", f"r{n}", f"item-{n}", "tie", comment="c" * 100)
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")


def damage(kind, path):
    if kind == "random-bytes":
        with open(path, "wb") as f:
            f.write(os.urandom(64 * 1024))
        return
    label_db_with_answers(path)
    data = open(path, "rb").read()
    if kind == "truncated":
        data = data[:len(data) // 2 + 100]
    elif kind == "corrupt":
        data = data[:8192] + os.urandom(16384) + data[8192 + 16384:]
    else:  # a newer schema, in rollback-journal mode: refusing it must not switch the file to WAL
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        return
    with open(path, "wb") as f:
        f.write(data)


def run_cli(*args, timeout=60):
    try:
        return subprocess.run([sys.executable, "-m", "rlhf_jax.cli", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rlhf-jax {' '.join(args)} did not stop within {timeout} s (it should have refused to start)")


def assert_one_line_error(result, pattern):
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.fullmatch(rf"rlhf-jax: error: [^\n]*(?:{pattern})[^\n]*\n", result.stderr), result.stderr[-2000:]


@pytest.mark.parametrize("kind,pattern", [("random-bytes", "not a readable label database"),
                                          ("truncated", "damaged|not a readable"),
                                          ("corrupt", "damaged|not a readable"),
                                          ("newer-schema", "newer than this code")])
@pytest.mark.parametrize("command", ["serve", "export"])
def test_9_a_bad_database_file_is_refused_in_one_line_and_left_as_it_was(tmp_path, kind, pattern, command):
    db = str(tmp_path / "labels.sqlite")
    damage(kind, db)
    before, listing = open(db, "rb").read(), sorted(os.listdir(tmp_path))
    if command == "serve":
        result = run_cli("label", "serve", "--db", db, "--port", str(free_port()), "--annotator", "alice", timeout=20)
    else:
        result = run_cli("label", "export", "--db", db, "--out", str(tmp_path / "out"))
    assert_one_line_error(result, pattern)
    assert open(db, "rb").read() == before and sorted(os.listdir(tmp_path)) == listing


@pytest.mark.parametrize("args,pattern", [
    (["--annotator", "a=SAMETOKEN", "--annotator", "b=SAMETOKEN"], "same token"),
    (["--port", "70000"], "--port 70000"),
    (["--threads", "0"], "--threads 0"),
    (["--labels-per-item", "0"], "--labels-per-item"),
])
def test_9_bad_serve_arguments_are_refused_before_the_database_is_touched(tmp_path, args, pattern):
    db = str(tmp_path / "labels.sqlite")
    result = run_cli("label", "serve", "--db", db, *(["--port", str(free_port())] if "--port" not in args else []),
                     *args, timeout=20)
    assert_one_line_error(result, pattern)
    assert not os.path.exists(db)


def test_9_an_existing_token_given_to_a_second_annotator_is_refused(tmp_path):
    db = str(tmp_path / "labels.sqlite")
    LabelStore(db).add_annotator("alice", "ALICETOKEN")
    result = run_cli("label", "serve", "--db", db, "--port", str(free_port()), "--annotator", "bob=ALICETOKEN",
                     timeout=20)
    assert_one_line_error(result, "share one token")
    assert LabelStore(db).annotators() == ["alice"]


def test_9_export_to_a_file_is_refused(store, tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    result = run_cli("label", "export", "--db", store.path, "--out", str(target))
    assert_one_line_error(result, "not a directory")
    assert target.read_text() == "keep me"


def test_9_export_of_every_vote_gives_unique_ids_the_reader_accepts(tmp_path):
    store = LabelStore(str(tmp_path / "labels.sqlite"))
    store.add_items([{"id": "a-b", "prompt": "p", "responses": ["x", "y"]},
                     {"id": "a", "prompt": "p", "responses": ["x", "y"]}])
    for name, item in (("c", "a-b"), ("b-c", "a")):
        store.add_annotator(name)
        store.submit(name, f"{name}-{item}", item, "choice", 0, ratings=[3, 4], comment="ok")
    export(store, str(tmp_path / "out"), votes="all")
    for kind, name in (("preference", "preferences"), ("rating", "ratings"), ("language", "language")):
        rows = formats.read_feedback(str(tmp_path / "out" / f"{name}.jsonl"), kind)
        assert len({row["id"] for row in rows}) == len(rows) == {"preferences": 2, "ratings": 4, "language": 2}[name]


# -- 10. Smaller things ------------------------------------------------------------------------------------
def test_10_a_405_says_which_methods_are_allowed(store):
    alice = Api(store, "alice", k=1)
    response = alice.client.get("/answer", headers=alice.headers)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_10_the_bearer_scheme_is_case_insensitive(store, scheme):
    token = store.add_annotator("alice")
    client = create_app(store).test_client()
    assert client.get("/api/next", headers={"Authorization": f"{scheme} {token}"}).status_code == 200


def test_10_a_skip_does_not_use_up_a_slot(store):
    alice, bob = Api(store, "alice", k=1), Api(store, "bob", k=1)
    assert alice.next() == "i0"
    assert alice.answer("i0", verdict="skip").status_code == 201
    assert bob.next() == "i0"                          # the skip left i0's one slot free
    assert bob.answer("i0").status_code == 201
    assert alice.next() == "i1"                        # and alice is not asked again


def test_10_the_session_cookie_has_a_lifetime_and_sign_out_ends_it(store):
    alice = Browser(store, "alice")
    cookie = alice.client.get_cookie("rlhf_label_token")
    assert cookie is not None and cookie.expires is not None
    response = alice.post("/logout", {"csrf_token": alice.form_fields("logout-form")["csrf_token"]})
    assert response.status_code == 200 and "Signed out" in response.get_data(as_text=True)
    assert alice.client.get_cookie("rlhf_label_token") is None
    assert alice.client.get("/").status_code == 401
