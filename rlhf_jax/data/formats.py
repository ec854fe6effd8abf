"""Feedback and prompts in the forms the ecosystem publishes them (trl's dataset formats, as UltraFeedback,
HH-RLHF and most of the Hub use), from JSONL, Parquet or an Arrow directory saved by ``datasets``, read into
the project's records (``records.SCHEMAS``), and written back out in the same forms.

A row's columns say its form; each column holds text (the standard form) or a conversation, a list of
``{"role", "content"}`` messages (the conversational form):

    form        columns                                      project kind (records.SCHEMAS)
    preference  prompt (optional), chosen, rejected          preference
    unpaired    prompt, completion, label (bool)             unpaired (KTO's desirable / undesirable)
    rating      prompt, completion or response, score        rating
    language    prompt, completion or response, feedback     language
    completion  prompt (optional), completion; or messages   completion (supervised fine-tuning)
    prompt      prompt                                       prompt (online RL's prompts)

A conversational preference row without a prompt column has trl's implicit prompt: the messages that chosen
and rejected share. A ``messages`` row (trl's conversational language modelling) is its last turn, the
assistant's, after the rest as the prompt. The project's own columns (id, split, margin, annotator, source,
gold_*) pass through.

**Ids.** A row's ``id`` if it has one, else ``sha256`` of its content (its columns as canonical JSON), so the
hash split of a row is the same whatever file format or row order it arrives in.

**Conversations become text** through a ``Renderer``: with a chat template (the policy tokenizer's), the
prompt is ``template(prompt, add_generation_prompt=True)`` and the response is ``template(prompt +
response)`` with that prefix cut off, so that prompt + response tokenise to what ``apply_chat_template``
gives for the whole conversation (the response closes its own turn: ``data.pipeline`` appends no second
end-of-sequence token). Without one (an encoder reward model's tokenizer) the messages' contents, joined by
blank lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from rlhf_jax.data.records import SCHEMAS, DataError, read_lines, validate_row

log = logging.getLogger(__name__)
FORMS = ("preference", "unpaired", "rating", "language", "completion", "prompt")
# per form: the project's response columns and the names each is read from (trl's first)
ANSWER = ("completion", "response")
RESPONSES = {"preference": {"chosen": ("chosen",), "rejected": ("rejected",)}, "unpaired": {"response": ANSWER},
             "rating": {"response": ANSWER}, "language": {"response": ANSWER}, "completion": {"completion": ANSWER},
             "prompt": {}}
FILE_KINDS = ("jsonl", "parquet", "arrow")


def file_kind(path: str) -> str:
    """'jsonl' (.jsonl / .json lines), 'parquet' (.parquet) or 'arrow' (a directory ``Dataset.save_to_disk``
    wrote)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "dataset_info.json")):
            raise DataError(f"{path}: a directory, but not one that datasets' save_to_disk wrote "
                            "(no dataset_info.json)")
        return "arrow"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or directory")
    if path.endswith(".parquet"):
        return "parquet"
    return "jsonl"


def read_rows(path: str) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of a JSONL file (where = 'path:line'), a Parquet file or an Arrow
    directory (where = 'path: row i', counted from 0). A JSONL line that is not JSON raises DataError."""
    kind = file_kind(path)
    if kind == "jsonl":
        for number, line in read_lines(path):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                yield f"{path}:{number}", row
        return
    import datasets  # the ecosystem's reader of Parquet and Arrow; imported only for them

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:  # no cache left behind in ~/.cache/huggingface
        try:
            table = (datasets.load_from_disk(path, keep_in_memory=True) if kind == "arrow"
                     else datasets.Dataset.from_parquet(path, cache_dir=cache, keep_in_memory=True))
        except Exception as error:  # pyarrow's and datasets' own errors: name the file
            raise DataError(f"{path}: cannot read as {kind} ({type(error).__name__}: {error})") from None
        if isinstance(table, datasets.DatasetDict):
            raise DataError(f"{path}: a DatasetDict of splits {sorted(table)}; give one split's directory")
        rows = list(table)
    for index, row in enumerate(rows):
        yield f"{path}: row {index}", row


def detect_form(row: dict) -> str:
    """Which of ``FORMS`` a row's columns make."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    answered = "completion" in row or "response" in row
    for form, column in (("unpaired", "label"), ("rating", "score"), ("language", "feedback")):
        if answered and column in row:
            return form
    if answered or "messages" in row:
        return "completion"
    if "prompt" in row:
        return "prompt"
    raise DataError(f"columns {sorted(row)} are none of the forms: prompt / chosen / rejected (preference), "
                    "prompt / completion / label (unpaired), prompt / completion / score (rating), prompt / "
                    "completion / feedback (language), prompt / completion or messages (completion), prompt "
                    "(prompt-only)")


def _canonical(value: Any) -> Any:
    """Numbers as floats (a column of Parquet may hold 6.0 where JSONL held 6), mappings without None."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def content_id(row: dict) -> str:
    """The first 24 hex digits of sha256 of the row's columns as canonical JSON (``_canonical``): the same
    for the same content in any file format."""
    text = json.dumps(_canonical(row), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value) and bool(value)


def _check_conversation(value: list[dict], column: str, where: str) -> list[dict]:
    """The messages as {'role', 'content'} (keys an Arrow struct filled with None dropped)."""
    messages = [{k: v for k, v in message.items() if v is not None} for message in value]
    for i, message in enumerate(messages):
        if set(message) != {"role", "content"} or not all(isinstance(v, str) for v in message.values()):
            raise DataError(f"{where}: field '{column}' message {i} must be {{'role': str, 'content': str}}, "
                            f"got {message!r:.80}")
    return messages


class Renderer:
    """Conversations -> text, by the tokenizer's chat template when it has one and ``use_template`` allows
    (None: when it has one; True: it must; False: never), else the contents joined by blank lines."""

    def __init__(self, tokenizer=None, use_template: bool | None = None):
        has = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
        if use_template and not has:
            raise DataError("config field 'data.chat_template': True, but the tokenizer has no chat template")
        self.tokenizer = tokenizer if (has and use_template is not False) else None
        self.used = False  # whether it has rendered a conversation (then its identity names the dataset)

    @property
    def identity(self) -> str:
        """Names the rendering in a dataset's directory: the template's digest, or 'plain'."""
        if self.tokenizer is None:
            return "plain"
        return hashlib.sha256(self.tokenizer.chat_template.encode("utf-8")).hexdigest()[:12]

    def prompt(self, messages: list[dict]) -> str:
        self.used = True
        if self.tokenizer is None:
            return "\n\n".join(m["content"] for m in messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def response(self, prompt: list[dict], messages: list[dict]) -> str:
        """The response's text after the rendered prompt: its turn(s), closed as the template closes them."""
        self.used = True
        if self.tokenizer is None:
            return "\n\n".join(m["content"] for m in messages)
        start = self.prompt(prompt)
        whole = self.tokenizer.apply_chat_template(prompt + messages, tokenize=False)
        if not whole.startswith(start):
            raise DataError("the chat template does not render the prompt as a prefix of the whole conversation")
        return whole[len(start):]


def _split_messages(row: dict, where: str) -> dict:
    """A ``messages`` row as prompt (every message before the last) and completion (the last, the
    assistant's)."""
    messages = row["messages"]
    if not _is_conversation(messages) or set(row) & {"prompt", "completion", "response"}:
        raise DataError(f"{where}: field 'messages' must be a non-empty conversation, alone (no prompt / completion)")
    messages = _check_conversation(messages, "messages", where)
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field 'messages' must end with the assistant's turn, the completion to learn; "
                        f"it ends with {messages[-1]['role']!r}")
    rest = {k: v for k, v in row.items() if k != "messages"}
    return {**rest, "prompt": messages[:-1], "completion": messages[-1:]}


def _split_implicit_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """trl's implicit prompt: the messages chosen and rejected share, then what each says after them."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def to_record(row: Any, kind: str, where: str, renderer: Renderer) -> dict:
    """One row of any form, standard or conversational, as the project's ``kind`` row, not yet validated
    (``records.validate_row`` does that): conversations rendered, the response column named as the project
    names it, an id from the content when the row has none. Prompts (kind 'prompt') can come from a row of
    any form."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object (a row of columns), got {type(row).__name__}")
    row = {k: v for k, v in row.items() if v is not None}  # a column this row lacks (Arrow fills it with None)
    identity = content_id(row)
    form = detect_form(row) if kind == "prompt" else kind
    if form == "completion" and "messages" in row:  # trl's conversational language modelling: the last turn
        row = _split_messages(row, where)
    read_from = {name for names in RESPONSES[form].values() for name in names} | {"prompt"}
    keep = ("id", "split", "source") if kind == "prompt" else tuple(k for k in row if k not in read_from)
    out = {k: row[k] for k in keep if k in row}
    out.setdefault("id", identity)
    values = {"prompt": row.get("prompt")}
    for column, names in RESPONSES[form].items():
        present = [name for name in names if name in row]
        if len(present) > 1:
            raise DataError(f"{where}: both {present[0]!r} and {present[1]!r}; give one")
        values[column] = row[present[0]] if present else None
    conversational = [c for c, v in values.items() if _is_conversation(v)]
    if not conversational:  # the standard form: the text as it is (validate_row checks types and emptiness)
        out.update({c: v for c, v in values.items() if c in ("prompt", *RESPONSES[kind]) and v is not None})
        if kind in ("preference", "completion"):  # a prompt may be absent: the text is all response
            out.setdefault("prompt", "")
        return out
    texts = [c for c, v in values.items() if isinstance(v, str)]
    if texts:
        raise DataError(f"{where}: field '{texts[0]}' is text but '{conversational[0]}' is a conversation; a row is "
                        "all one form or the other")
    for column in conversational:
        values[column] = _check_conversation(values[column], column, where)
    prompt = values["prompt"]
    if prompt is None and form == "preference":  # trl's implicit prompt
        prompt, values["chosen"], values["rejected"] = _split_implicit_prompt(values["chosen"], values["rejected"])
    if not prompt:
        raise DataError(f"{where}: field 'prompt' is missing or empty")
    out["prompt"] = renderer.prompt(prompt)
    for column in RESPONSES[kind]:
        if not values[column]:
            raise DataError(f"{where}: field '{column}' is missing or an empty conversation")
        out[column] = renderer.response(prompt, values[column])
    return out


def read_feedback(paths: str | list[str], kind: str, renderer=None) -> list[dict]:
    """Every row of the file(s), validated; raises DataError at the first bad row. Preference, unpaired,
    rating, language and prompt rows come in any of this module's forms and files (JSONL, Parquet, an
    Arrow directory; text or conversations, rendered by ``renderer``; ids from the content when absent),
    columns the kind does not use left out with a warning; a queue is the project's own JSONL."""
    if kind not in SCHEMAS:
        raise DataError(f"unknown feedback kind {kind!r} (kinds: {sorted(SCHEMAS)})")
    paths = [paths] if isinstance(paths, str) else list(paths)
    renderer = renderer or Renderer()
    rows, seen, ignored = [], {}, {}
    for path in paths:
        raw = read_rows(path)
        if kind != "queue":  # the labeling app's queue is the project's own form
            raw = ((where, to_record(row, kind, where, renderer)) for where, row in raw)
        for where, row in raw:
            if kind != "queue" and isinstance(row, dict):
                ignored.setdefault(path, set()).update(set(row) - set(SCHEMAS[kind]))
            row = validate_row(row, kind, where, extra_columns=kind != "queue")
            if row["id"] in seen:
                raise DataError(f"{where}: duplicate id {row['id']!r} (first at {seen[row['id']]})")
            seen[row["id"]] = where
            rows.append(row)
    for path, columns in ignored.items():
        if columns:
            log.warning("%s: columns %s are not used by %s rows: left out", path, sorted(columns), kind)
    if not rows:
        raise DataError(f"{paths[0] if len(paths) == 1 else paths}: no rows")
    return rows


# ---- out: the project's rows in the same forms ----

def to_ecosystem(record: dict, kind: str) -> dict:
    """A project row as the standard form's columns (trl's names: an unpaired row's response is 'completion');
    the project's id, split, annotation and gold columns kept beside them (other tools ignore them); a gold
    score the row does not have (NaN) left out."""
    row = {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
    if kind == "unpaired":
        row["completion"] = row.pop("response")
    return row


def write(records: list[dict], kind: str, path: str) -> str:
    """Write project rows in the standard form: JSONL (.jsonl), Parquet (.parquet) or, for any other name, an
    Arrow directory by ``Dataset.save_to_disk``. Returns the path."""
    rows = [to_ecosystem(r, kind) for r in records]
    if not rows:
        raise DataError(f"{path}: no rows to write")
    if path.endswith(".jsonl"):
        from rlhf_jax.files import write_jsonl

        write_jsonl(rows, path)
        return path
    import datasets

    datasets.disable_progress_bars()
    columns = list(dict.fromkeys(k for row in rows for k in row))  # from_list would take the first row's keys
    table = datasets.Dataset.from_list([{k: row.get(k) for k in columns} for row in rows])
    if path.endswith(".parquet"):
        table.to_parquet(path)
    else:
        table.save_to_disk(path)
    return path


def convert(source: str, out: str, kind: str = "preference") -> str:
    """``rlhf-jax data convert``: the rows of ``source`` (any form and file; conversations as their contents)
    written to ``out`` in the standard form (``write``). Returns a line saying what was done."""
    rows = read_feedback(source, kind)
    write(rows, kind, out)
    return f"{len(rows)} {kind} rows from {source} -> {out}"
