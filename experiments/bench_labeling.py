"""Labeling server throughput on loopback: 8 concurrent annotators submit 2,000 answers through the JSON
API of ``rlhf-jax label serve`` (waitress, 8 threads), and the server is SIGKILLed and restarted half
way. Beside it, in the same run, the ceiling of the store itself: the same answers written straight
into SQLite by one process, one durable (synchronous=FULL) transaction each, no HTTP.

Prints one JSON line: answers/s for both, and the exactly-once checks.

    python experiments/bench_labeling.py [--annotators 8] [--answers 2000] [--no-kill]
"""

import argparse
import json
import platform
import tempfile
import time

from rlhf_jax.labeling.load import run_load
from rlhf_jax.labeling.store import LabelStore


def store_ceiling(workdir: str, answers: int) -> float:
    """Answers per second of LabelStore.next_item + submit called directly (what each request does)."""
    store = LabelStore(f"{workdir}/ceiling.sqlite")
    store.add_items([{"id": f"c{n}", "prompt": "p", "responses": ["a", "b"]} for n in range(answers)])
    store.add_annotator("solo")
    start = time.perf_counter()
    for n in range(answers):
        item = store.next_item("solo", k=1)
        store.submit("solo", f"r{n}", item["id"], "choice", n % 2)
    return answers / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--no-kill", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        result = run_load(
            workdir, args.annotators, args.answers, kill_after=None if args.no_kill else args.answers // 2
        )
        ceiling = store_ceiling(workdir, args.answers)
    print(json.dumps({
        "bench": "labeling", "machine": platform.machine(), "annotators": args.annotators,
        "answers": result["acknowledged"], "server_answers_per_second": round(result["answers_per_second"], 1),
        "store_only_answers_per_second": round(ceiling, 1),
        "killed_and_restarted": not args.no_kill, "restart_seconds": (
            None if args.no_kill else round(result["restarted_at_s"] - result["killed_at_s"], 2)),
        "lost": len(result["lost"]), "duplicated": len(result["duplicated"]), "errors": result["errors"],
        "client_retries": result["client_retries"]}))


if __name__ == "__main__":
    main()
