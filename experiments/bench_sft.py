"""Supervised fine-tuning throughput: rlhf_jax's jitted causal-LM train step beside trl's SFTTrainer, same run.

The peer's workload (../shared/peers/w4_sft.py, trl 1.16): SmolLM2-135M-Instruct, float32, Rotten Tomatoes
snippets joined with EOS and cut into blocks of exactly 128 tokens ("wrapped" packing), batch 8 blocks
(1,024 tokens per step), AdamW at 2e-5, no gradient checkpointing. Ours trains on the same blocks with
``rlhf_jax.steps`` (AdamW with global-norm clipping, as every supervised run). Metric: training tokens/s
= 1,024 / the median step time after the first --skip steps. Ours and the peer alternate for --passes
rounds; each round's ratio is printed, and their median. Also printed: the GEMM ceiling measured in the
same run and our step's MFU against it (bench_lib). Prints one JSON line.

    python experiments/bench_sft.py [--passes 3] [--steps 10] [--skip 2] [--model DIR]
        [--peer-python /tmp/venv_peers/bin/python] [--no-peer]
"""

import argparse
import os

import numpy as np
from bench_lib import PEERS, compiled_train_step, emit, model_dir, run_peer, side_by_side_steps
from rt_prompts import review_texts


def packed_blocks(tokenizer, count: int, length: int) -> np.ndarray:
    """[count, length] int32: the snippets' tokens joined with EOS and cut into blocks (trl's 'wrapped')."""
    stream = []
    for text in review_texts():
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= count * length:
            return np.asarray(stream[:count * length], np.int32).reshape(count, length)
    raise ValueError(f"the snippets make fewer than {count} blocks of {length} tokens")


def sft_batches(tokenizer, steps: int, batch: int, length: int) -> list[dict]:
    """``steps`` batches of ``batch`` packed blocks, every token real and trained on."""
    ids_SxBxT = packed_blocks(tokenizer, steps * batch, length).reshape(steps, batch, length)
    return [
        {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)} for ids in ids_SxBxT
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="asset name or Hugging Face directory")
    parser.add_argument("--peer-python", default="/tmp/venv_peers/bin/python")
    parser.add_argument("--peer-script", default=os.path.join(PEERS, "w4_sft.py"))
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()

    source = model_dir(args.model)
    tokenizer, state, train_step = compiled_train_step(source, "causal_lm", "causal_lm", 2e-5, args.steps)
    batches = sft_batches(tokenizer, args.steps, args.batch, args.seq_len)
    peer_args = ["--steps", str(args.steps), "--skip", str(args.skip), "--batch", str(args.batch),
                 "--seq-len", str(args.seq_len)]
    peer = None if args.no_peer else (lambda: run_peer(args.peer_python, args.peer_script, peer_args))
    emit({"workload": "sft", "metric": "training_tokens_per_second",
          "config": {"model": args.model, "dtype": "float32", "batch": args.batch, "seq_len": args.seq_len,
                     "steps": args.steps, "timed_after": args.skip, "peer": "trl SFTTrainer (w4_sft.py)"},
          **side_by_side_steps(train_step, state, batches, args.skip, args.passes, args.batch * args.seq_len, peer)})


if __name__ == "__main__":
    main()
