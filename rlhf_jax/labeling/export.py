"""Answers in the store -> the preference, rating and language-feedback JSONL the tfds builders read.

``votes='majority'``: one preference per item whose non-skip votes have a strict winner that is not a
tie (the winner preferred to each other response), one rating per response (the mean of the ratings
given). ``votes='all'``: every answer becomes its own rows, with its annotator. Comments are always
kept one per annotator (text has no majority); a comment on a choice is attached to the chosen
response, otherwise to every response. All rows of an item share the item's split.

Row ids are ``ITEM#SUFFIX`` (majority) or ``ITEM/ANNOTATOR#SUFFIX`` (one row per vote): annotator names
hold neither '/' nor '#' and suffixes no '/' or '#', so splitting at the last '#' and then the last '/'
gives back the parts, and two different rows never share an id, whatever the item ids hold.

Agreement, over non-skip votes (a vote is a response index or 'tie'); r_i votes on item i, r_ic of
them for category c:

  pairwise agreement = sum_i sum_c r_ic (r_ic - 1) / sum_i r_i (r_i - 1), the share of agreeing pairs;
  P_a = mean over items with r_i >= 2 of sum_c r_ic (r_ic - 1) / (r_i (r_i - 1));
  pi_c = mean over items with r_i >= 1 of r_ic / r_i;   P_e = sum_c pi_c^2;
  kappa = (P_a - P_e) / (1 - P_e).

This is Fleiss' kappa generalised to a varying number of raters per item as in Gwet, Handbook of
Inter-Rater Reliability (2014), ch. 2 (irrCAC's ``fleiss.raw``); with the same number of raters on
every item it is Fleiss' (1971) kappa exactly.
"""

from __future__ import annotations

import collections
import os

from rlhf_jax.data import formats, records
from rlhf_jax.files import write_json, write_jsonl
from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.labeling.validation import LabelError


def _vote(answer: dict):
    return answer["choice"] if answer["verdict"] == "choice" else "tie"


def _preference_rows(item_id: str, answer_like: dict, choice: int, row_id: str, annotator: str) -> list[dict]:
    responses = answer_like["responses"]
    return [{"id": f"{row_id}#{choice}v{j}", "split": records.hash_split(item_id), "prompt": answer_like["prompt"],
             "chosen": responses[choice], "rejected": responses[j], "annotator": annotator, "source": "label-app"}
            for j in range(len(responses)) if j != choice]


def agreement(votes_by_item: dict[str, list]) -> dict:
    """Pairwise agreement and Fleiss' kappa for a varying number of raters (see the module docstring)."""
    rated = [collections.Counter(votes) for votes in votes_by_item.values() if votes]
    multi = [(counts, sum(counts.values())) for counts in rated if sum(counts.values()) >= 2]
    if not multi:
        return {"items": 0, "pairs": 0, "pairwise_agreement": None, "fleiss_kappa": None}
    agreeing = sum(c * (c - 1) for counts, _ in multi for c in counts.values())
    ordered_pairs = sum(r * (r - 1) for _, r in multi)
    observed = sum(sum(c * (c - 1) for c in counts.values()) / (r * (r - 1)) for counts, r in multi) / len(multi)
    shares = collections.Counter()
    for counts in rated:
        total = sum(counts.values())
        shares.update({category: c / total / len(rated) for category, c in counts.items()})
    chance = sum(pi * pi for pi in shares.values())
    kappa = (observed - chance) / (1 - chance) if chance < 1 else 1.0
    return {"items": len(multi), "pairs": ordered_pairs // 2, "pairwise_agreement": agreeing / ordered_pairs,
            "mean_item_agreement": observed, "chance_agreement": chance, "fleiss_kappa": kappa}


def export(store: LabelStore, out_dir: str, votes: str = "majority", file_format: str = "jsonl") -> dict:
    """Write preferences, ratings and language rows and summary.json into ``out_dir``: as the project's JSONL
    (``file_format='jsonl'``), or in trl's standard form as ``.parquet`` files or Arrow directories (``formats.write``;
    a kind with no rows is then not written)."""
    if file_format not in ("jsonl", "parquet", "arrow"):
        raise LabelError(f"--format: {file_format!r} is not 'jsonl', 'parquet' or 'arrow'")
    if votes not in ("majority", "all"):
        raise LabelError(f"votes: {votes!r} is not 'majority' or 'all'")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise LabelError(f"--out {out_dir}: exists and is not a directory")
    answers = store.answers()
    by_item: dict[str, list[dict]] = collections.defaultdict(list)
    for answer in answers:
        by_item[answer["item_id"]].append(answer)
    preferences, ratings, language = [], [], []
    votes_by_item = {}
    for item_id, item_answers in by_item.items():
        counted = [a for a in item_answers if a["verdict"] != "skip"]
        votes_by_item[item_id] = [_vote(a) for a in counted]
        split = records.hash_split(item_id)
        if votes == "all":
            for a in counted:
                if a["verdict"] == "choice":
                    preferences += _preference_rows(
                        item_id, a, a["choice"], f"{item_id}/{a['annotator']}", a["annotator"]
                    )
            for a in item_answers:
                ratings += [{"id": f"{item_id}/{a['annotator']}#r{j}", "split": split, "prompt": a["prompt"],
                             "response": a["responses"][j], "score": float(r), "annotator": a["annotator"],
                             "source": "label-app"} for j, r in enumerate(a["ratings"]) if r is not None]
        else:
            tally = collections.Counter(votes_by_item[item_id]).most_common()
            if tally and tally[0][0] != "tie" and (len(tally) == 1 or tally[0][1] > tally[1][1]):
                preferences += _preference_rows(item_id, item_answers[0], tally[0][0], item_id,
                                                f"majority-of-{len(counted)}")
            first = item_answers[0]
            for j, response in enumerate(first["responses"]):
                given = [a["ratings"][j] for a in item_answers if a["ratings"] and a["ratings"][j] is not None]
                if given:
                    ratings.append({"id": f"{item_id}#r{j}", "split": split, "prompt": first["prompt"],
                                    "response": response, "score": sum(given) / len(given),
                                    "annotator": f"mean-of-{len(given)}", "source": "label-app"})
        for a in item_answers:
            if a["comment"]:
                targets = [a["choice"]] if a["verdict"] == "choice" else range(len(a["responses"]))
                language += [{"id": f"{item_id}/{a['annotator']}#c{j}", "split": split, "prompt": a["prompt"],
                              "response": a["responses"][j], "feedback": a["comment"], "annotator": a["annotator"],
                              "source": "label-app"} for j in targets]
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, kind, rows in (("preferences", "preference", preferences), ("ratings", "rating", ratings),
                             ("language", "language", language)):
        path = os.path.join(out_dir, name + {"jsonl": ".jsonl", "parquet": ".parquet", "arrow": ""}[file_format])
        if file_format == "jsonl":
            paths[name] = write_jsonl(rows, path)
        elif rows:
            paths[name] = formats.write(rows, kind, path)
    summary = {
        "votes": votes,
        "answers": len(answers),
        "items_answered": len(by_item),
        "annotators": dict(collections.Counter(a["annotator"] for a in answers)),
        "skips": sum(a["verdict"] == "skip" for a in answers),
        "ties": sum(a["verdict"] == "tie" for a in answers),
        "rows": {"preferences": len(preferences), "ratings": len(ratings), "language": len(language)},
        "agreement": agreement(votes_by_item),
        "files": paths,
    }
    write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary
