"""Reward-model training throughput: rlhf_jax's jitted pairwise (Bradley-Terry) step beside trl's RewardTrainer.

The peer's workload (../shared/peers/w3_reward.py, trl 1.16): all-MiniLM-L6-v2 with a scalar head, float32,
pairs of a "fresh" (chosen) and a "rotten" (rejected) Rotten Tomatoes snippet, each [CLS] text [SEP]
truncated to 64 tokens, batch 16 pairs (32 sequences per forward). The peer runs with --pad-to 64, so both
sides compute every batch at length 64 (trl's default pads to the longest in the batch: the peer's JSON
has that figure too when run without --pad-to). Ours: ``rlhf_jax.rl.reward.pairwise`` in ``rlhf_jax.steps``.
Metric: pairs/s = 16 / the median step time after the first --skip steps. Ours and the peer alternate for
--passes rounds; each round's ratio is printed, and their median; also the GEMM ceiling measured in the
same run and our step's MFU against it (bench_lib). Prints one JSON line.

    python experiments/bench_reward.py [--passes 3] [--steps 30] [--skip 5] [--model DIR]
        [--peer-python /tmp/venv_peers/bin/python] [--no-peer]
"""

import argparse
import os

import numpy as np
from bench_lib import PEERS, compiled_train_step, emit, model_dir, run_peer, side_by_side_steps
from rt_prompts import review_rows


def pair_batches(tokenizer, steps: int, batch: int, length: int) -> list[dict]:
    """``steps`` batches of (fresh, rotten) snippet pairs, in the peer's order, padded to ``length``."""
    rows = review_rows()
    fresh = [t for c, t in rows if c == "fresh"][:steps * batch]
    rotten = [t for c, t in rows if c == "rotten"][:steps * batch]
    batches = []
    for step in range(steps):
        arrays = {"weights": np.ones(batch, np.float32), "margin": np.zeros(batch, np.float32)}
        for side, texts in (("chosen", fresh), ("rejected", rotten)):
            enc = tokenizer(texts[step * batch:(step + 1) * batch], truncation=True, max_length=length,
                            padding="max_length", return_tensors="np")
            arrays[f"{side}_ids"] = enc["input_ids"].astype(np.int32)
            arrays[f"{side}_mask"] = enc["attention_mask"].astype(np.int32)
            arrays[f"{side}_types"] = np.zeros_like(arrays[f"{side}_ids"])
        batches.append(arrays)
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="minilm-l6", help="asset name or Hugging Face directory")
    parser.add_argument("--peer-python", default="/tmp/venv_peers/bin/python")
    parser.add_argument("--peer-script", default=os.path.join(PEERS, "w3_reward.py"))
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()

    source = model_dir(args.model)
    tokenizer, state, train_step = compiled_train_step(source, "scalar", "reward_pairwise", 5e-5, args.steps)
    batches = pair_batches(tokenizer, args.steps, args.batch, args.max_length)
    peer_args = ["--steps", str(args.steps), "--skip", str(args.skip), "--batch", str(args.batch),
                 "--max-length", str(args.max_length), "--pad-to", str(args.max_length)]
    peer = None if args.no_peer else (lambda: run_peer(args.peer_python, args.peer_script, peer_args))
    emit({"workload": "reward_model", "metric": "preference_pairs_per_second",
          "config": {"model": args.model, "dtype": "float32", "batch_pairs": args.batch,
                     "length": f"padded to {args.max_length}", "steps": args.steps, "timed_after": args.skip,
                     "peer": f"trl RewardTrainer (w3_reward.py --pad-to {args.max_length})"},
          **side_by_side_steps(train_step, state, batches, args.skip, args.passes, args.batch, peer)})


if __name__ == "__main__":
    main()
