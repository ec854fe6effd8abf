"""Answers in the store -> the preference, rating and language-feedback JSONL the tfds builders read.

``votes='majority'``: one preference per item whose non-skip votes have a strict winner that is not a
tie (the winner preferred to each other response), one rating per response (the mean of the ratings
given). ``votes='all'``: every answer becomes its own rows, with its annotator. Comments are always
kept one per annotator (text has no majority); a comment on a choice is attached to the chosen
response, otherwise to every response. All rows of an item share the item's split.

Agreement, over items with two or more non-skip votes (a vote is a response index or 'tie'):
observed P_o = fraction of agreeing annotator pairs; chance P_e = sum_c p_c^2 with p_c the share of
all votes in category c; kappa = (P_o - P_e) / (1 - P_e) (Fleiss' kappa, variable raters per item).
"""

from __future__ import annotations

import collections
import itertools
import os

from rlhf_jax.data import records
from rlhf_jax.feedback.collect import write_jsonl
from rlhf_jax.labeling.store import LabelStore
from rlhf_jax.metrics import write_json


def _vote(answer: dict):
    return answer["choice"] if answer["verdict"] == "choice" else "tie"


def _preference_rows(item_id: str, answer_like: dict, choice: int, row_id: str, annotator: str) -> list[dict]:
    responses = answer_like["responses"]
    return [{"id": f"{row_id}-{choice}v{j}", "split": records.hash_split(item_id), "prompt": answer_like["prompt"],
             "chosen": responses[choice], "rejected": responses[j], "annotator": annotator, "source": "label-app"}
            for j in range(len(responses)) if j != choice]


def agreement(votes_by_item: dict[str, list]) -> dict:
    """Pairwise agreement and Fleiss' kappa over items with >= 2 votes (see the module docstring)."""
    agree = pairs = 0
    counts = collections.Counter()
    for votes in votes_by_item.values():
        if len(votes) < 2:
            continue
        counts.update(votes)
        for a, b in itertools.combinations(votes, 2):
            pairs += 1
            agree += a == b
    if not pairs:
        return {"items": 0, "pairs": 0, "observed": None, "kappa": None}
    total = sum(counts.values())
    observed = agree / pairs
    chance = sum((c / total) ** 2 for c in counts.values())
    kappa = (observed - chance) / (1 - chance) if chance < 1 else 1.0
    return {"items": sum(len(v) >= 2 for v in votes_by_item.values()), "pairs": pairs, "observed": observed,
            "kappa": kappa}


def export(store: LabelStore, out_dir: str, votes: str = "majority") -> dict:
    """Write preferences.jsonl, ratings.jsonl, language.jsonl and summary.json into ``out_dir``."""
    if votes not in ("majority", "all"):
        raise ValueError(f"votes: {votes!r} is not 'majority' or 'all'")
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
                    preferences += _preference_rows(item_id, a, a["choice"], f"{item_id}-{a['annotator']}", a["annotator"])
            for a in item_answers:
                ratings += [{"id": f"{item_id}-{a['annotator']}-r{j}", "split": split, "prompt": a["prompt"],
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
                    ratings.append({"id": f"{item_id}-r{j}", "split": split, "prompt": first["prompt"],
                                    "response": response, "score": sum(given) / len(given),
                                    "annotator": f"mean-of-{len(given)}", "source": "label-app"})
        for a in item_answers:
            if a["comment"]:
                targets = [a["choice"]] if a["verdict"] == "choice" else range(len(a["responses"]))
                language += [{"id": f"{item_id}-{a['annotator']}-c{j}", "split": split, "prompt": a["prompt"],
                              "response": a["responses"][j], "feedback": a["comment"], "annotator": a["annotator"],
                              "source": "label-app"} for j in targets]
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name, rows in (("preferences", preferences), ("ratings", ratings), ("language", language)):
        paths[name] = write_jsonl(rows, os.path.join(out_dir, f"{name}.jsonl"))
    summary = {"votes": votes, "answers": len(answers), "items_answered": len(by_item),
               "annotators": dict(collections.Counter(a["annotator"] for a in answers)),
               "skips": sum(a["verdict"] == "skip" for a in answers), "ties": sum(a["verdict"] == "tie" for a in answers),
               "rows": {"preferences": len(preferences), "ratings": len(ratings), "language": len(language)},
               "agreement": agreement(votes_by_item), "files": paths}
    write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary
