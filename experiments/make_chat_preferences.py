"""Writes docs/examples/movie_chat_preferences.jsonl, the worked example of docs/data.md: a small preference
set in trl's conversational format, as a researcher would bring one (no ids, no project fields), made from
the Rotten Tomatoes asset. Each row asks about one film; the chosen answer is a fresh review of it, the
rejected one a rotten review of the same film. Deterministic: the same file on every machine.

    python experiments/make_chat_preferences.py [--films 240] [--out docs/examples/movie_chat_preferences.jsonl]
"""

import argparse
import bz2
import collections
import csv
import json
import os

import numpy as np

from rlhf_jax import assets

QUESTIONS = ("What did you think of {film}?", "Is {film} worth seeing?", "Review {film} in a sentence.",
             "How was {film}?")


def film_title(slug: str) -> str:
    return slug.replace("_", " ").title()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=240)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "examples",
                                                      "movie_chat_preferences.jsonl"))
    args = parser.parse_args()
    reviews = collections.defaultdict(lambda: {"fresh": [], "rotten": []})
    with bz2.open(assets.asset_path("rotten-tomatoes"), "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten") and row["movie_name"] and row["text"].strip():
                reviews[row["movie_name"]][row["category"]].append(row["text"].strip())
    films = sorted(film for film, r in reviews.items() if r["fresh"] and r["rotten"])
    rng = np.random.default_rng(0)
    chosen_films = [films[i] for i in sorted(rng.choice(len(films), size=min(args.films, len(films)), replace=False))]
    rows = []
    for film in chosen_films:
        fresh, rotten = reviews[film]["fresh"], reviews[film]["rotten"]
        question = QUESTIONS[int(rng.integers(len(QUESTIONS)))].format(film=film_title(film))
        rows.append({"prompt": [{"role": "user", "content": question}],
                     "chosen": [{"role": "assistant", "content": fresh[int(rng.integers(len(fresh)))]}],
                     "rejected": [{"role": "assistant", "content": rotten[int(rng.integers(len(rotten)))]}]})
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(json.dumps({"rows": len(rows), "out": args.out}))


if __name__ == "__main__":
    main()
