"""Records are validated with file:line errors; tfds builders write array_record and read back without TF."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax.config import DataConfig
from rlhf_jax.data import builders, formats, records
from rlhf_jax.data.pipeline import Batches, Split, eval_rows
from rlhf_jax.tasks import TASKS

GOOD = {"id": "a1", "prompt": "The film", "chosen": "is wonderful.", "rejected": "is dull.", "annotator": "sim"}


def write_jsonl(path, rows):
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())
    return str(path)


@pytest.mark.parametrize("bad,message", [
    ({k: v for k, v in GOOD.items() if k != "chosen"}, "missing field 'chosen'"),
    ({**GOOD, "chosen": 3}, "field 'chosen' must be str"),
    ({**GOOD, "rejected": "  "}, "field 'rejected' is empty"),
    ({**GOOD, "margin": "big"}, "field 'margin' must be int or float"),
    (b"\xff\xfe not utf-8\n", "not valid UTF-8"),
    (b"{not json\n", "not valid JSON"),
    ({**GOOD, "id": "a0"}, "duplicate id 'a0'"),
])
def test_bad_preference_row_names_file_and_line(tmp_path, bad, message):
    rows = [{**GOOD, "id": "a0"}, {**GOOD, "id": "x"}, bad]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(records.DataError, match=f"prefs.jsonl:3: .*{message}"):
        formats.read_feedback(path, "preference")


def test_columns_a_kind_does_not_use_are_left_out_with_a_warning(tmp_path, caplog):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, {**GOOD, "id": "b", "colour": "red"}])
    rows = formats.read_feedback(path, "preference")
    assert [r["id"] for r in rows] == ["a1", "b"] and all("colour" not in r for r in rows)
    assert "prefs.jsonl: columns ['colour'] are not used by preference rows" in caplog.text


def test_bad_row_writes_nothing(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, {**GOOD, "id": "b", "chosen": ""}])
    with pytest.raises(records.DataError, match=":2: field 'chosen' is empty"):
        builders.build("preferences", path, str(tmp_path / "data"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.array_record*"))


@pytest.mark.parametrize("kind,dataset,row", [
    ("preference", "preferences", {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 1.5}),
    ("rating", "ratings", {"prompt": "p", "response": "r", "score": 6}),
    ("language", "language_feedback", {"prompt": "p", "response": "r", "feedback": "too negative"}),
])
def test_feedback_builders_round_trip_without_tensorflow(tmp_path, kind, dataset, row):
    rows = [{"id": f"r{i}", **row} for i in range(40)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    source = builders.build(dataset, path, str(tmp_path / "data"))
    read = [builders.decode(source[split][i]) for split in source for i in range(len(source[split]))]
    assert sorted(r["id"] for r in read) == sorted(r["id"] for r in rows)
    assert {r["split"] for r in formats.read_feedback(path, kind)} == set(source)
    first = next(r for r in read if r["id"] == "r0")
    for key, value in row.items():
        assert first[key] == pytest.approx(value) if isinstance(value, (int, float)) else first[key] == value
    assert "tensorflow" not in sys.modules
    # a second build of the same file reuses the dataset
    again = builders.build(dataset, path, str(tmp_path / "data"))
    assert {s: len(again[s]) for s in again} == {s: len(source[s]) for s in source}


BUILD_AT = """
import sys, time
from rlhf_jax.data import builders
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
source = builders.build("preferences", sys.argv[1], sys.argv[2])
print(sum(len(source[split]) for split in source))
"""


def test_two_processes_building_one_dataset_at_once_both_read_it(tmp_path):
    # Both start writing at the same moment into the same cache: without the lock, the second's rename of its
    # finished incomplete.* directory onto the first's fails (directory not empty).
    rows = [{**GOOD, "id": f"r{i}", "chosen": f"is wonderful, {i} times over."} for i in range(3000)]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    start = f"{time.time() + 8:.3f}"  # both processes imported tfds by then
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_AT, path, str(tmp_path / "data"), start],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 0, err[-2000:]
        assert out.split()[-1] == "3000"
    assert len(list((tmp_path / "data").glob("preferences-*/*/*/dataset_info.json"))) == 1


def test_splits_are_a_stable_hash():
    assert records.hash_split("some review") == records.hash_split("some review")
    shares = [records.hash_split(f"text {i}") for i in range(5000)]
    assert abs(shares.count("test") / 5000 - 0.1) < 0.02 and abs(shares.count("validation") / 5000 - 0.1) < 0.02


def test_rotten_tomatoes_rows():
    from rlhf_jax import assets

    rows = records.read_rotten_tomatoes(str(assets.asset_path("rotten-tomatoes")))
    labels = [r["label"] for r in rows]
    assert len(rows) == 12808 and labels.count(1) == 7403 and labels.count(0) == 5405
    assert all(r["text"] for r in rows)


def test_text_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n\nsecond document\n")
    rows = records.read_text_corpus(str(tmp_path / "a.txt"))
    assert [r["text"] for r in rows] == ["first document", "second document"]
    with pytest.raises(records.DataError, match="no such file"):
        records.read_text_corpus(str(tmp_path / "missing.txt"))


def test_batches_are_a_pure_function_of_the_index():
    batches = Batches(10, batch_size=3, seed=1)
    assert batches.batches_per_epoch == 3
    epoch0 = np.concatenate([batches(i) for i in range(3)])
    assert len(set(epoch0)) == 9  # no repeats within an epoch
    np.testing.assert_array_equal(Batches(10, 3, 1)(4), batches(4))
    assert not np.array_equal(batches(0), batches(3))  # a new permutation each epoch


def test_eval_rows_pad_with_rows_of_zero_weight():
    out = list(eval_rows(5, 4))
    assert [rows.tolist() for rows in out] == [[0, 1, 2, 3], [4, -1, -1, -1]]

    def tokenize(examples, *args):
        return {"labels": np.asarray([e["label"] for e in examples]), "weights": np.ones(len(examples), np.float32)}

    split = Split([{"label": 7 + i} for i in range(5)], tokenize, None, 8, None)
    batch = split.arrays(out[1])
    assert batch["labels"].tolist() == [11, 0, 0, 0] and batch["weights"].tolist() == [1, 0, 0, 0]
    assert split.arrays(np.asarray([-1, -1]))["weights"].tolist() == [0, 0]  # a process's block of padding only
    assert split.all_arrays()["labels"].tolist() == [7, 8, 9, 10, 11]


def test_causal_tokenization_masks_the_prompt(smollm2_dir):
    from rlhf_jax.models import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir)
    arrays = TASKS["causal_lm"].tokenize([{"prompt": "Review:", "text": " great fun"}], tokenizer, 12,
                                         DataConfig(prompt_field="prompt"))
    prompt_len = len(tokenizer("Review:", add_special_tokens=False)["input_ids"])
    text_len = len(tokenizer(" great fun", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert arrays["loss_mask"][0].tolist() == [0] * prompt_len + [1] * text_len + [0] * (12 - prompt_len - text_len)
    assert arrays["input_ids"][0, prompt_len + text_len - 1] == tokenizer.eos_token_id


def test_a_tokenizer_is_parsed_once_per_source_and_each_caller_gets_its_own(tmp_path, smollm2_dir):
    """``load_tokenizer`` parses a source's files once per process while they stand unchanged (every stage of a
    run loads the policy's); what a caller changes stays its own, and files rewritten in place load again."""
    import shutil

    from rlhf_jax.models import load_tokenizer, pretrained

    where = tmp_path / "tokenizer"
    shutil.copytree(smollm2_dir, where, ignore=shutil.ignore_patterns("*.safetensors"))
    pretrained._load_tokenizer.cache_clear()
    first, second = load_tokenizer(str(where)), load_tokenizer(str(where))
    assert pretrained._load_tokenizer.cache_info().misses == 1 and first is not second
    second.padding_side = "left"
    assert first.padding_side == "right"
    text = "a fine film"
    assert first(text, padding="max_length", max_length=8)["input_ids"][0] != first.pad_token_id
    assert second(text, padding="max_length", max_length=8)["input_ids"][0] == second.pad_token_id
    assert first(text)["input_ids"] == second(text)["input_ids"]

    first.add_tokens(["<a-new-token>"])
    assert len(first) == len(second) + 1 == len(load_tokenizer(str(where))) + 1
    first.save_pretrained(where)
    again = load_tokenizer(str(where))
    assert pretrained._load_tokenizer.cache_info().misses == 2 and len(again) == len(second) + 1
