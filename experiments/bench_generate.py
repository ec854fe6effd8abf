"""Sampling throughput: rlhf_jax's jitted KV-cache sampler beside transformers' generate, same run.

SmolLM2-135M-Instruct, float32, batches of 16-token Rotten Tomatoes prompts, exactly 24 sampled
tokens (temperature 1, no top-k/top-p, no early stop). Per batch size: one warm-up call each (ours:
compilation), then --passes rounds that alternate ours and the peer, each side's figure the median of
--repeats timed calls; each round's ratio is printed, and their median. The peer runs on the GPU when
torch sees one. Also printed: the weight bytes that our decode loop reads per second (every new token
re-reads all the weights), a lower bound on the memory bandwidth it achieves. Prints one JSON line.

    python experiments/bench_generate.py [--batches 16 64] [--passes 3] [--repeats 3] [--model DIR] [--no-peer]
"""

import argparse
import itertools
import statistics
import time

import jax
import numpy as np
from bench_lib import alternate, emit, summary
from bench_lib import model_dir as resolve_model_dir
from flax import nnx
from rt_prompts import fixed_length_prompts

from rlhf_jax.models import from_pretrained, load_tokenizer
from rlhf_jax.sampling import SamplingConfig, generate


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def sampling_call(model, prompts, new_tokens):
    """() -> None: one jitted sampling call on ``prompts``, a new key each call, waited for."""
    ids = np.asarray(prompts, np.int32)
    config = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, eos_token_id=None)
    calls = itertools.count()
    return lambda: jax.block_until_ready(
        generate(model, ids, np.ones_like(ids), jax.random.fold_in(jax.random.key(0), next(calls)), config).tokens_BxN)


def sampler(model_name: str, batch: int, prompt_len: int = 16, new_tokens: int = 24):
    """The bench's sampling call at one batch size, compiled (for experiments/profile_step.py)."""
    model_dir = resolve_model_dir(model_name)
    call = sampling_call(from_pretrained(model_dir, dtype="float32"),
                         fixed_length_prompts(load_tokenizer(model_dir), batch, prompt_len), new_tokens)
    call()
    return call


def peer_model(model_dir, threads):
    """transformers' model of the same weights (on the GPU when torch sees one), and the versions."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().to(device)
    return model, {"torch": torch.__version__, "transformers": transformers.__version__}


def peer_call(model, prompts, new_tokens):
    """() -> None: one ``generate`` call with the same sampling (temperature 1, exactly new_tokens)."""
    import torch

    ids = torch.tensor(prompts, device=model.device)
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=new_tokens,
                  max_new_tokens=new_tokens, use_cache=True, pad_token_id=0)

    def call():
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        assert out.shape == (len(prompts), ids.shape[1] + new_tokens)  # (a GPU result: synchronises)

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--passes", type=int, default=3, help="alternating rounds of ours and the peer")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side per pass (their median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the peer")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="asset name or Hugging Face directory")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers' generate")
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model)
    model = from_pretrained(model_dir, dtype="float32")
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tokenizer = load_tokenizer(model_dir)
    torch_model, versions = (None, {}) if args.no_peer else peer_model(model_dir, args.threads)
    results = {}
    for batch in args.batches:
        prompts = fixed_length_prompts(tokenizer, batch, args.prompt_len)
        generated = batch * args.new_tokens
        ours = sampling_call(model, prompts, args.new_tokens)
        first = timed(ours)  # compilation
        theirs = None if torch_model is None else peer_call(torch_model, prompts, args.new_tokens)
        if theirs is not None:
            theirs()  # warm-up
        our_seconds = []

        def tokens_per_s(call, seconds):
            seconds.append(statistics.median(timed(call) for _ in range(args.repeats)))
            return generated / seconds[-1]

        rounds = alternate(args.passes, lambda: tokens_per_s(ours, our_seconds),
                           theirs and (lambda: tokens_per_s(theirs, [])))
        our_seconds = statistics.median(our_seconds)
        results[f"batch_{batch}"] = {
            **summary(rounds), "rlhf_jax_first_call_seconds_incl_compile": round(first, 2),
            "rlhf_jax_weight_gb_read_per_s": round(weight_bytes * args.new_tokens / our_seconds / 1e9, 1)}
    emit({
        "workload": "generate", "metric": "generated_tokens_per_second",
        "config": {"model": args.model, "dtype": "float32", "prompt_len": args.prompt_len,
                   "new_tokens": args.new_tokens, "passes": args.passes, "repeats": args.repeats,
                   "sampling": "temperature 1, no top-k/top-p, no early stop",
                   "peer": "transformers generate (do_sample, KV cache)"},
        "results": results, "versions": versions})


if __name__ == "__main__":
    main()
