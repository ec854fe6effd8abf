"""The ecosystem's data formats (rlhf_jax.data.formats): each form, standard and conversational, read from
JSONL, Parquet and an Arrow directory to the same records and the same datasets; bad rows named; chat
templates applied as transformers applies them; the project's rows written back out."""

import json
import os

import datasets
import numpy as np
import pytest

from rlhf_jax.data import builders, formats, records
from rlhf_jax.rl.preference import tokenize_preference_sequences

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "docs", "examples")
SYSTEM = {"role": "system", "content": "You review films."}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# form -> (kind read, rows in the standard form, the same content as conversations)
FORMS = {
    "preference": ("preference", [
        {"prompt": "The plot", "chosen": "is gripping.", "rejected": "is a mess.", "margin": 1.5},
        {"prompt": "", "chosen": "Loved it.", "rejected": "Hated it."},
        {"prompt": "Acting", "chosen": "superb", "rejected": "wooden", "id": "own-id", "split": "test"},
    ], [
        {"prompt": [SYSTEM, user("The plot?")], "chosen": [assistant("Gripping.")], "rejected": [assistant("A mess.")],
         "margin": 1.5},
        {"chosen": [user("Verdict?"), assistant("Loved it.")], "rejected": [user("Verdict?"), assistant("Hated it.")]},
        {"prompt": [user("Acting?")], "chosen": [assistant("Superb.")], "rejected": [assistant("Wooden.")],
         "id": "own-id", "split": "test"},
    ]),
    "unpaired": ("unpaired", [
        {"prompt": "The plot", "completion": "is gripping.", "label": True},
        {"prompt": "The plot", "completion": "is a mess.", "label": False},
    ], [
        {"prompt": [user("The plot?")], "completion": [assistant("Gripping.")], "label": True},
        {"prompt": [user("The plot?")], "completion": [assistant("A mess.")], "label": False},
    ]),
    "rating": ("rating", [
        {"prompt": "The plot", "completion": "is gripping.", "score": 6},
        {"prompt": "The plot", "completion": "is a mess.", "score": 1.5},
    ], [
        {"prompt": [user("The plot?")], "completion": [assistant("Gripping.")], "score": 6},
        {"prompt": [user("The plot?")], "completion": [assistant("A mess.")], "score": 1.5},
    ]),
    "language": ("language", [
        {"prompt": "The plot", "response": "is gripping.", "feedback": "more detail"},
    ], [
        {"prompt": [user("The plot?")], "response": [assistant("Gripping.")], "feedback": "more detail"},
    ]),
    "completion": ("completion", [
        {"prompt": "The plot", "completion": "is gripping."},
        {"completion": "A film with no prompt."},
    ], [
        {"messages": [SYSTEM, user("The plot?"), assistant("Gripping.")]},
        {"prompt": [user("The acting?")], "completion": [assistant("Wooden.")]},
    ]),
    "prompt": ("prompt", [{"prompt": "The plot"}, {"prompt": "The acting"}],
               [{"prompt": [SYSTEM, user("The plot?")]}, {"prompt": [user("The acting?")]}]),
}


def write_as(rows, kind, path):
    """The rows as JSONL (one object a line, absent columns absent), Parquet or an Arrow directory."""
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))  # from_list reads the first row's keys only
    table = datasets.Dataset.from_list([{k: row.get(k) for k in columns} for row in rows])
    if kind == "parquet":
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    return str(path)


def write_all(tmp_path, rows, stem="rows"):
    return {kind: write_as(rows, kind, tmp_path / f"{stem}.{kind}") for kind in formats.FILE_KINDS}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("style", ["standard", "conversational"])
def test_every_file_kind_reads_to_the_same_records(tmp_path, form, style):
    kind, standard, conversational = FORMS[form]
    rows = standard if style == "standard" else conversational
    read = {file_kind: formats.read_feedback(path, kind) for file_kind, path in write_all(tmp_path, rows).items()}
    assert read["parquet"] == read["jsonl"] and read["arrow"] == read["jsonl"]
    got = read["jsonl"]
    assert len(got) == len(rows) and len({r["id"] for r in got}) == len(rows)
    for record, row in zip(got, rows):
        assert record["id"] == row.get("id", formats.content_id(row))  # its own id, else the content's
        assert record["split"] == row.get("split", records.hash_split(record["id"]))
        assert set(record) <= set(records.SCHEMAS[kind])
    if style == "standard":  # the text as it was, trl's 'completion' as the project's 'response'
        for record, row in zip(got, rows):
            for column, value in row.items():
                if column not in ("id", "split"):
                    renamed = "response" if column == "completion" and kind != "completion" else column
                    assert record[renamed] == value
    if form == "unpaired":
        assert [r["label"] for r in got] == [True, False]


def test_conversations_without_a_template_are_their_contents():
    row = {"prompt": [SYSTEM, user("The plot?")], "chosen": [assistant("Gripping.")], "rejected": [assistant("No.")]}
    record = formats.to_record(row, "preference", "here", formats.Renderer())
    assert record["prompt"] == "You review films.\n\nThe plot?" and record["chosen"] == "Gripping."


def test_an_implicit_prompt_is_what_chosen_and_rejected_share():
    row = FORMS["preference"][2][1]
    record = formats.to_record(row, "preference", "here", formats.Renderer())
    assert (record["prompt"], record["chosen"], record["rejected"]) == ("Verdict?", "Loved it.", "Hated it.")


def test_prompts_come_from_rows_of_any_form(tmp_path):
    path = write_as(FORMS["preference"][2], "jsonl", tmp_path / "prefs.jsonl")
    prompts = formats.read_feedback(path, "prompt")
    assert [p["prompt"] for p in prompts] == ["You review films.\n\nThe plot?", "Verdict?", "Acting?"]
    assert prompts[2]["id"] == "own-id" and set(prompts[0]) == {"id", "prompt", "source", "split"}


def test_content_ids_do_not_depend_on_how_numbers_were_stored():
    assert formats.content_id({"prompt": "p", "score": 6}) == formats.content_id({"score": 6.0, "prompt": "p"})
    assert formats.content_id({"prompt": "p", "score": 6}) != formats.content_id({"prompt": "p", "score": 7})


BAD = [  # (kind, rows (the last is bad), the message, whether Arrow can hold the rows at all)
    ("preference", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
     "missing field 'rejected'", True),
    ("preference", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                    {"prompt": "p", "chosen": [assistant("a")], "rejected": [assistant("b")]}],
     "field 'prompt' is text but 'chosen' is a conversation", False),
    ("preference", [{"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
                    {"prompt": [user("p")], "chosen": [{"role": "assistant", "text": "a"}],
                     "rejected": [assistant("b")]}],
     "field 'chosen' message 0 must be {'role': str, 'content': str}", True),
    ("unpaired", [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "p", "completion": "a", "label": 1}],
     "field 'label' must be bool", False),
    ("rating", [{"prompt": "p", "completion": "a", "score": 1}, {"prompt": "p", "completion": "a", "score": "high"}],
     "field 'score' must be int or float", False),
    ("rating", [{"prompt": "p", "completion": "a", "score": 1}, {"prompt": "p", "completion": "a", "response": "b",
                                                                 "score": 2}],
     "both 'completion' and 'response'", True),
    ("language", [{"prompt": "p", "response": "a", "feedback": "f"}, {"prompt": "p", "response": "a", "feedback": " "}],
     "field 'feedback' is empty", True),
    ("completion", [{"messages": [user("p"), assistant("a")]}, {"messages": [user("p"), user("q")]}],
     "field 'messages' must end with the assistant's turn", True),
    ("prompt", [{"prompt": "p"}, {"prompt": ""}], "field 'prompt' is empty", True),
    ("prompt", [{"prompt": [user("p")]}, {"prompt": [user("")]}], "field 'prompt' is empty", True),
]


@pytest.mark.parametrize("kind,rows,message,arrow", BAD, ids=[f"{k}-{m[:24]}" for k, _, m, _ in BAD])
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, kind, rows, message, arrow):
    jsonl = write_as(rows, "jsonl", tmp_path / "bad.jsonl")
    with pytest.raises(records.DataError, match=f"bad.jsonl:2: .*{message}"):
        formats.read_feedback(jsonl, kind)
    if arrow:
        parquet = write_as(rows, "parquet", tmp_path / "bad.parquet")
        with pytest.raises(records.DataError, match=f"bad.parquet: row 1: .*{message}"):
            formats.read_feedback(parquet, kind)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(records.DataError, match="broken.parquet: cannot read as parquet"):
        formats.read_feedback(str(tmp_path / "broken.parquet"), "preference")
    (tmp_path / "folder").mkdir()
    with pytest.raises(records.DataError, match="folder: a directory, but not one that datasets' save_to_disk"):
        formats.read_feedback(str(tmp_path / "folder"), "preference")


def without_nan(row: dict) -> dict:
    """NaN (no gold score) as None: NaN is not equal to itself."""
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}


def test_the_three_file_kinds_build_identical_datasets(tmp_path):
    rows = [{"prompt": [user(f"Review {i}?")], "chosen": [assistant(f"Good {i}.")],
             "rejected": [assistant(f"Bad {i}.")]} for i in range(30)]
    built = {}
    for file_kind, path in write_all(tmp_path, rows).items():
        source = builders.build("preferences", path, str(tmp_path / "data" / file_kind))
        built[file_kind] = {split: sorted((without_nan(builders.decode(source[split][i]))
                                           for i in range(len(source[split]))), key=lambda r: r["id"])
                            for split in source}
    assert built["parquet"] == built["jsonl"] and built["arrow"] == built["jsonl"]
    assert sum(len(v) for v in built["jsonl"].values()) == 30 and len(built["jsonl"]) >= 2


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


def test_chat_templated_tokens_equal_transformers_apply_chat_template(tmp_path, smollm2_tokenizer):
    """Prompt and response rendered apart, tokenised apart by the DPO / SFT tokenisation, joined: the tokens
    transformers' apply_chat_template gives for the whole conversation, with no second end-of-sequence."""
    tok = smollm2_tokenizer
    rows = [
        {"prompt": [user("What did you think of the film?")], "chosen": [assistant("A quiet, moving drama.")],
         "rejected": [assistant("Dull.")]},
        {"prompt": [SYSTEM, user("Plot?"), assistant("Which part?"), user("The ending.")],
         "chosen": [assistant("It lands, and earns its tears.")], "rejected": [assistant("It falls flat.")]},
        {"chosen": [user("One word?"), assistant("Superb.")], "rejected": [user("One word?"), assistant("Bad.")]},
    ]
    path = write_as(rows, "jsonl", tmp_path / "conv.jsonl")
    got = formats.read_feedback(path, "preference", formats.Renderer(tok))
    arrays = tokenize_preference_sequences(got, tok, 96)
    for i, row in enumerate(rows):
        prompt = row.get("prompt", row["chosen"][:1])
        for side in ("chosen", "rejected"):
            conversation = prompt + row[side][-1:]
            expected = tok.apply_chat_template(conversation, tokenize=True, return_dict=False)
            length = int(arrays[f"{side}_mask"][i].sum())
            assert arrays[f"{side}_ids"][i, :length].tolist() == list(expected), (i, side)
            prompt_length = len(tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                        return_dict=False))
            loss = arrays[f"{side}_loss_mask"][i]
            assert loss[:prompt_length].sum() == 0 and loss[prompt_length:length].all()  # the response's turn
    assert got[0]["prompt"].endswith("<|im_start|>assistant\n") and got[0]["chosen"].endswith("<|im_end|>\n")


def test_supervised_messages_tokenise_as_apply_chat_template_with_the_loss_on_the_last_turn(tmp_path,
                                                                                           smollm2_tokenizer):
    from rlhf_jax.config import DataConfig
    from rlhf_jax.data.pipeline import tokenize_causal_lm

    tok = smollm2_tokenizer
    rows = [{"messages": [user("Plot?"), assistant("Which part?"), user("The ending."), assistant("It lands.")]},
            {"messages": [SYSTEM, user("One word?"), assistant("Superb.")]}]
    got = formats.read_feedback(write_as(rows, "jsonl", tmp_path / "sft.jsonl"), "completion", formats.Renderer(tok))
    data = DataConfig(dataset="completions", text_field="completion", prompt_field="prompt", max_length=96)
    arrays = tokenize_causal_lm(got, tok, 96, data)
    for i, row in enumerate(rows):
        expected = list(tok.apply_chat_template(row["messages"], tokenize=True, return_dict=False))
        prompt = len(tok.apply_chat_template(row["messages"][:-1], tokenize=True, add_generation_prompt=True,
                                             return_dict=False))
        length = int(arrays["attention_mask"][i].sum())
        assert arrays["input_ids"][i, :length].tolist() == expected
        assert arrays["loss_mask"][i, :prompt].sum() == 0 and arrays["loss_mask"][i, prompt:length].all()


def test_a_required_template_the_tokenizer_lacks_is_refused(minilm_dir):
    import transformers

    with pytest.raises(records.DataError, match="data.chat_template"):
        formats.Renderer(transformers.AutoTokenizer.from_pretrained(minilm_dir), use_template=True)


@pytest.mark.parametrize("file_kind", formats.FILE_KINDS)
def test_the_projects_rows_leave_in_the_same_forms(tmp_path, file_kind):
    """Collected preferences (with simulated gold scores) and unpaired rows written out and read back by the
    same readers: the same rows; an unpaired row's response under trl's name, 'completion'."""
    prefs = [{"id": f"p{i}", "prompt": "The film", "chosen": f"good {i}", "rejected": f"bad {i}", "margin": 0.0,
              "annotator": "sim", "source": "", "gold_chosen": 0.5, "gold_rejected": -0.25, "split": "train"}
             for i in range(3)]
    out = formats.write(prefs, "preference", str(tmp_path / f"prefs.{file_kind}"))
    assert formats.read_feedback(out, "preference") == prefs
    unpaired = [{"id": "u0", "prompt": "p", "response": "fine", "label": True, "annotator": "", "source": "",
                 "split": "test"}]
    out = formats.write(unpaired, "unpaired", str(tmp_path / f"unpaired.{file_kind}"))
    assert formats.read_feedback(out, "unpaired") == unpaired
    first = next(formats.read_rows(out))[1]
    assert first["completion"] == "fine" and "response" not in first


def test_data_convert_on_the_command_line(tmp_path):
    from rlhf_jax import cli

    out = tmp_path / "prefs.parquet"
    assert cli.main(["data", "convert", os.path.join(EXAMPLES, "movie_chat_preferences.jsonl"), str(out)]) == 0
    rows = formats.read_feedback(str(out), "preference")
    assert len(rows) == 240 and rows == formats.read_feedback(os.path.join(EXAMPLES, "movie_chat_preferences.jsonl"),
                                                              "preference")


def test_supervised_fine_tuning_on_a_messages_file_end_to_end(tmp_path):
    """trl's conversational language-modelling rows (the worked example's prompt and chosen answer as one
    `messages` list) fine-tune the tiny Llama with SmolLM2's tokenizer: the dataset is built from the
    template-rendered rows and named by the template, and the loss falls."""
    import subprocess
    import sys

    from conftest import CONFIGS

    from rlhf_jax.metrics import read_metrics

    rows = [json.loads(line) for line in open(os.path.join(EXAMPLES, "movie_chat_preferences.jsonl"))]
    path = write_as([{"messages": r["prompt"] + r["chosen"]} for r in rows], "parquet", tmp_path / "sft.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_jax.cli", "train", "--config", os.path.join(CONFIGS, "tiny_sft.py"),
         "--workdir", str(tmp_path / "run"), "--config.data.dataset=completions", f"--config.data.source={path}",
         "--config.data.text_field=completion", "--config.data.prompt_field=prompt", "--config.data.labels=None",
         "--config.data.max_length=64", f"--config.data.root={tmp_path / 'datasets'}", "--config.train.steps=12"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    built = os.listdir(tmp_path / "datasets")
    assert len(built) == 1 and built[0].startswith("completions-") and len(built[0].split("-")) == 3  # + template
    validation = [r for r in read_metrics(str(tmp_path / "run")) if r["split"] == "validation"]
    assert validation[-1]["loss"] < validation[0]["loss"]


def test_rl_prompts_from_a_file_are_split_ordered_cycled_and_checked_for_length(smollm2_tokenizer):
    from rlhf_jax.config import ConfigError
    from rlhf_jax.runs.pipeline import file_prompts

    path = os.path.join(EXAMPLES, "movie_chat_preferences.jsonl")
    held_out = file_prompts(path, 30, 48, smollm2_tokenizer, "test", seed=0)
    assert len(held_out) == 30 and len(set(held_out)) == 24 and held_out[24:] == held_out[:6]  # 24, cycled
    assert held_out != file_prompts(path, 30, 48, smollm2_tokenizer, "test", seed=1)  # another order
    lengths = [len(ids) for ids in smollm2_tokenizer(held_out, add_special_tokens=False)["input_ids"]]
    with pytest.raises(ConfigError, match=f"rl.prompt_tokens.*take up to {max(lengths)} tokens, got 20"):
        file_prompts(path, None, 20, smollm2_tokenizer, "test", seed=0)
