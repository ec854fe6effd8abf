"""The labeling store, app and export: authentication, hostile input, exactly-once answers, k annotators
per item, undo, migrations, agreement; and the load test (8 annotators, 2,000 answers, a SIGKILL)."""

import json
import sqlite3

import pytest

from rlhf_jax.data.records import DataError
from rlhf_jax.labeling.app import create_app
from rlhf_jax.labeling.export import agreement, export
from rlhf_jax.labeling.load import run_load
from rlhf_jax.labeling.queue import read_queue
from rlhf_jax.labeling.schema import SCHEMA_VERSION
from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.labeling.validation import LabelError


@pytest.fixture
def store(tmp_path):
    store = LabelStore(str(tmp_path / "labels.sqlite"))
    store.add_items([{"id": f"i{n}", "prompt": f"prompt {n}", "responses": [f"a{n}", f"b{n}"]} for n in range(4)])
    return store


def client_for(store, name="alice", k=1):
    token = store.add_annotator(name)
    return create_app(store, k=k).test_client(), {"Authorization": f"Bearer {token}"}


def answer(request_id, item_id, verdict="choice", **fields):
    return {"request_id": request_id, "item_id": item_id, "verdict": verdict, **fields}


def test_requests_without_a_valid_token_are_refused(store):
    client, auth = client_for(store)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": auth["Authorization"] + "x"}):
        for method, path in (("get", "/"), ("get", "/api/next"), ("post", "/api/answers"), ("post", "/undo")):
            response = getattr(client, method)(path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/api/next", headers=auth).status_code == 200
    assert store.answers() == []


def test_login_link_sets_an_httponly_cookie(store):
    token = store.add_annotator("bob")
    client = create_app(store).test_client()
    response = client.get(f"/?token={token}")
    assert response.status_code == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=" in cookie
    assert client.get("/").status_code == 200


def test_html_in_items_is_rendered_inert(tmp_path):
    store = LabelStore(str(tmp_path / "x.sqlite"))
    store.add_items([{"id": "x", "prompt": "<img src=x onerror=alert(1)>",
                      "responses": ["<script>alert(1)</script>", "fine"]}])
    client, auth = client_for(store)
    response = client.get("/", headers=auth)
    html = response.get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]  # and no inline script runs


@pytest.mark.parametrize("body,status,message", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    (json.dumps(answer("r", "i0", choice=0, extra=1)), 400, "unknown field"),
    (json.dumps(answer("r", "i0", choice=2)), 400, "choice"),
    (json.dumps(answer("r", "i0", verdict="maybe")), 400, "verdict"),
    (json.dumps(answer("r", "i0", choice=0, ratings=[9, 1])), 400, "ratings"),
    (json.dumps(answer("r", "i0", choice=0, ratings=[1])), 400, "ratings"),
    (json.dumps(answer("r", "nope", choice=0)), 404, "does not exist"),
    (json.dumps(answer(7, "i0", choice=0)), 400, "request_id"),
    (json.dumps(answer("r", "i0", verdict="tie", comment="x" * 2001)), 413, "comment"),
    (json.dumps(answer("r", "i0", verdict="tie", comment="x" * 20000)), 413, "too large"),
])
def test_malformed_or_oversized_submissions_get_a_clear_4xx(store, body, status, message):
    client, auth = client_for(store)
    response = client.post("/api/answers", data=body, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == status
    assert message in response.get_json()["error"]
    assert store.answers() == []


def test_a_retried_request_is_counted_once_and_a_second_answer_is_refused(store):
    client, auth = client_for(store)
    first = client.post("/api/answers", json=answer("r1", "i0", choice=1), headers=auth)
    retry = client.post("/api/answers", json=answer("r1", "i0", choice=1), headers=auth)
    assert (first.status_code, retry.status_code) == (201, 200)
    assert first.get_json()["answer_id"] == retry.get_json()["answer_id"]
    again = client.post("/api/answers", json=answer("r2", "i0", choice=0), headers=auth)
    assert again.status_code == 409 and "undo it first" in again.get_json()["error"]
    assert [(a["item_id"], a["choice"]) for a in store.answers()] == [("i0", 1)]


def test_each_item_goes_to_k_annotators(store):
    k = 2
    clients = [client_for(store, name, k=k) for name in ("a1", "a2", "a3")]
    offered = [c.get("/api/next", headers=h).get_json()["item"]["id"] for c, h in clients]
    assert offered == ["i0", "i0", "i1"]  # the third is not offered an item already leased to k
    for (c, h), item in zip(clients[:2], offered):
        assert c.post("/api/answers", json=answer(f"r-{item}-{h}", item, verdict="tie"), headers=h).status_code == 201
    late = clients[2]
    refused = late[0].post("/api/answers", json=answer("r-late", "i0", verdict="tie"), headers=late[1])
    assert refused.status_code == 409 and "already has its 2 answers" in refused.get_json()["error"]
    assert clients[0][0].get("/api/progress", headers=clients[0][1]).get_json()["agreement"] == 1.0


def test_undo_withdraws_the_last_answer_and_offers_its_item_again(store):
    client, auth = client_for(store)
    client.post("/api/answers", json=answer("r1", "i0", choice=0), headers=auth)
    client.post("/api/answers", json=answer("r2", "i1", choice=1), headers=auth)
    assert client.post("/api/undo", json={"request_id": "u1"}, headers=auth).get_json() == {"item_id": "i1"}
    assert client.get("/api/next", headers=auth).get_json()["item"]["id"] == "i1"
    assert [a["item_id"] for a in store.answers()] == ["i0"]
    assert len(store.answers(include_undone=True)) == 2
    assert client.post("/api/answers", json=answer("r3", "i1", choice=0), headers=auth).status_code == 201


def test_schema_migrates_reopens_and_refuses_a_newer_version(tmp_path, store):
    path = str(tmp_path / "labels.sqlite")
    assert LabelStore(path).schema_version() == SCHEMA_VERSION
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert LabelStore(path).add_items([{"id": "i0", "prompt": "p", "responses": ["x", "y"]}]) == 0  # kept, not doubled
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(LabelError, match="newer than this code"):
        LabelStore(path)


def test_export_majority_and_all_votes(store, tmp_path):
    for name, choice in (("a", 1), ("b", 1), ("c", 0)):
        store.add_annotator(name)
        store.submit(
            name, f"{name}-0", "i0", "choice", choice, ratings=[2, 6], comment="more like b" if name == "a" else ""
        )
    store.submit("a", "a-1", "i1", "tie")
    store.submit("b", "b-1", "i1", "choice", 0)
    majority = export(store, str(tmp_path / "m"), votes="majority")
    rows = [json.loads(line) for line in open(tmp_path / "m" / "preferences.jsonl")]
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b0", "a0")]  # i1 is split 1-1: no majority
    ratings = [json.loads(line) for line in open(tmp_path / "m" / "ratings.jsonl")]
    assert [(r["response"], r["score"]) for r in ratings] == [("a0", 2.0), ("b0", 6.0)]
    assert majority["rows"] == {"preferences": 1, "ratings": 2, "language": 1}
    everything = export(store, str(tmp_path / "all"), votes="all")
    assert everything["rows"] == {"preferences": 4, "ratings": 6, "language": 1}
    from rlhf_jax.data import formats

    for file_format, suffix in (("parquet", ".parquet"), ("arrow", "")):  # trl's forms: the same rows read back
        export(store, str(tmp_path / file_format), votes="all", file_format=file_format)
        for name, kind in (("preferences", "preference"), ("ratings", "rating"), ("language", "language")):
            assert (formats.read_feedback(str(tmp_path / file_format / f"{name}{suffix}"), kind)
                    == formats.read_feedback(str(tmp_path / "all" / f"{name}.jsonl"), kind)), (file_format, name)
    # Agreement: i0 votes (1, 1, 0) -> 1 of 3 pairs agree; i1 (tie, 0) -> 0 of 1: pairwise 1/4.
    # Per item: P_i0 = (2*1) / (3*2) = 1/3, P_i1 = 0, so P_a = 1/6. Shares per item averaged over the two
    # items: 1 -> (2/3 + 0) / 2 = 1/3, 0 -> (1/3 + 1/2) / 2 = 5/12, tie -> (0 + 1/2) / 2 = 1/4, so
    # P_e = 16/144 + 25/144 + 9/144 = 50/144 and kappa = (24/144 - 50/144) / (94/144) = -26/94.
    assert everything["agreement"]["pairwise_agreement"] == pytest.approx(0.25)
    assert everything["agreement"]["fleiss_kappa"] == pytest.approx(-26 / 94)


def test_agreement_of_perfect_and_of_no_overlap():
    assert agreement({"x": [0, 0], "y": [1, 1]})["fleiss_kappa"] == pytest.approx(1.0)
    assert agreement({"x": [0]})["pairs"] == 0


def test_fleiss_kappa_matches_the_published_example_with_equal_raters():
    """Fleiss (1971) via Wikipedia's worked example: 10 subjects, 14 raters, 5 categories: P = 0.378,
    P_e = 0.213, kappa = 0.210."""
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    votes = {f"s{i}": [c for c, n in enumerate(row) for _ in range(n)] for i, row in enumerate(table)}
    result = agreement(votes)
    assert result["mean_item_agreement"] == pytest.approx(0.378, abs=5e-4)
    assert result["chance_agreement"] == pytest.approx(0.213, abs=5e-4)
    assert result["fleiss_kappa"] == pytest.approx(0.210, abs=5e-4)


def test_queue_reads_preference_files_and_names_bad_lines(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"id": f"p{n}", "prompt": "q", "chosen": f"good{n}", "rejected": f"bad{n}"} for n in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_queue(str(path))
    assert all(set(item["responses"]) == {f"good{n}", f"bad{n}"} for n, item in enumerate(items))
    first = [item["responses"][0].startswith("good") for item in items]
    assert 0 < sum(first) < len(first)  # the chosen response is not always shown first
    bad = tmp_path / "queue.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "p", "responses": ["x", "y"]}) + "\n"
                   + json.dumps({"id": "b", "prompt": "p", "responses": ["only one"]}) + "\n")
    with pytest.raises(DataError, match=r"queue.jsonl:2: field 'responses'"):
        read_queue(str(bad))


def test_load_8_annotators_2000_answers_with_a_server_kill(tmp_path):
    result = run_load(str(tmp_path), annotators=8, answers=2000, kill_after=1000)
    assert result["errors"] == []
    assert result["acknowledged"] == 2000 and result["stored"] == 2000
    assert result["lost"] == [] and result["duplicated"] == [] and result["mismatched"] == []
    assert result["max_answers_per_item"] == 1
    assert result["acknowledged_before_kill"] >= 1000 and result["client_retries"] > 0  # the kill was felt
