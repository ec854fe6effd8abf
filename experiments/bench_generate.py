"""Sampling throughput: rlhf_jax's jitted KV-cache sampler beside transformers' generate, same run.

SmolLM2-135M-Instruct, float32, batches of 16-token Rotten Tomatoes prompts, exactly 24 sampled
tokens (temperature 1, no top-k/top-p, no early stop). One warm-up (compilation) then the median
of --repeats timed calls; the peer runs on the GPU when torch sees one. Also printed: the weight bytes
that the decode loop reads per second (every new token re-reads all the weights), a lower bound on
the memory bandwidth it achieves. Prints one JSON line.

    python experiments/bench_generate.py [--batches 16 64] [--repeats 3] [--model DIR] [--no-peer]
"""

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx
from rt_prompts import fixed_length_prompts

from bench_lib import emit, model_dir as resolve_model_dir
from rlhf_jax.models import from_pretrained, load_tokenizer
from rlhf_jax.sampling import SamplingConfig, generate


def time_calls(call, repeats):
    """(seconds of the first call, median seconds of ``repeats`` further calls, all their seconds)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return first, statistics.median(seconds), seconds


def ours(model, prompts, new_tokens, repeats):
    ids = np.asarray(prompts, np.int32)
    config = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, eos_token_id=None)
    keys = iter(jax.random.split(jax.random.key(0), repeats + 1))
    call = lambda: jax.block_until_ready(generate(model, ids, np.ones_like(ids), next(keys), config).tokens_BxN)
    return time_calls(call, repeats)


def peer(model_dir, prompts, new_tokens, repeats, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    ids = torch.tensor(prompts, device=device)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=new_tokens,
                  max_new_tokens=new_tokens, use_cache=True, pad_token_id=0)

    def call():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        assert out.shape == (len(prompts), ids.shape[1] + new_tokens)  # (a GPU result: synchronises)

    return time_calls(call, repeats), {"torch": torch.__version__, "transformers": transformers.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the peer")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="asset name or Hugging Face directory")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers' generate")
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model)
    model = from_pretrained(model_dir, dtype="float32")
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokenizer = load_tokenizer(model_dir)
    results, versions = {}, {}
    for batch in args.batches:
        prompts = fixed_length_prompts(tokenizer, batch, args.prompt_len)
        generated = batch * args.new_tokens
        first, median, seconds = ours(model, prompts, args.new_tokens, args.repeats)
        row = {"rlhf_jax_tokens_per_s": round(generated / median, 2),
               "rlhf_jax_seconds": [round(s, 3) for s in seconds],
               "rlhf_jax_first_call_seconds_incl_compile": round(first, 2),
               "rlhf_jax_weight_gb_read_per_s": round(weight_bytes * args.new_tokens / median / 1e9, 1)}
        if not args.no_peer:
            (_, peer_median, peer_seconds), peer_versions = peer(model_dir, prompts, args.new_tokens, args.repeats,
                                                                 args.threads)
            versions.update(peer_versions)
            row.update({"transformers_tokens_per_s": round(generated / peer_median, 2),
                        "transformers_seconds": [round(s, 3) for s in peer_seconds],
                        "speedup_vs_transformers": round(peer_median / median, 3)})
        results[f"batch_{batch}"] = row
    emit({
        "workload": "generate", "metric": "generated_tokens_per_second",
        "config": {"model": args.model, "dtype": "float32", "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens,
                   "sampling": "temperature 1, no top-k/top-p, no early stop", "repeats": args.repeats,
                   "peer": "transformers generate (do_sample, KV cache)"},
        "results": results, "versions": versions})

if __name__ == "__main__":
    main()
