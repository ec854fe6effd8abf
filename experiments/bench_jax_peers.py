"""Beside the JAX peers, same run, alternating: rlhf_jax's sampler, DPO step and GRPO iteration against
google-tunix's Sampler, DPOTrainer and GRPOLearner (--peer tunix), and against EasyDeL's generate,
DPOTrainer and GRPOTrainer (--peer easydel).

SmolLM2-135M-Instruct, float32, batches of 16-token Rotten Tomatoes openings, exactly 24 sampled tokens
(temperature 1, the full distribution, no early stop): experiments/bench_generate.py's work. The peer runs
in a venv of its own (experiments/jax_peers/setup.sh) as a process that stays up between passes, so its
compiled sampler stays warm as ours does. Before any timing, both sides' logits on the same openings are
compared (max |diff| under 1e-3, the SmolLM2 parity tests' bound). Per batch size: one call each that
compiles (reported apart), then --passes rounds alternating ours and the peer, each side's figure the
median of --repeats calls (after --pass-warmup untimed calls of its own in that pass, DPO steps too;
default none). The peer gets rlhf_jax's allocator settings (rlhf_jax/allocator.py) through GLIBC_TUNABLES;
--peer-allocator default leaves glibc's.

DPO (--work dpo): configs/dpo_quick.py's shape, 16 pairs of 40-token sequences (8 prompt tokens, 32
response tokens, no padding), beta 0.05, clip 1.0 + AdamW 5e-5; ours is the jitted step a run trains with
(bench_lib.compiled_train_step), tunix's its DPOTrainer.train over --steps copies of the batch. tunix
computes the frozen reference's log-probs inside every step; a run of ours computes them once, before
training, so ours is given both ways: the step alone, and the step plus one reference forward of the
batch (the peer's per-step work). --dpo-response-positions: our LM head, in the step and the reference
forward, at the 32 response positions alone (data.max_response_length = 32), not all 40.

GRPO (--work grpo): an iteration of configs/grpo_quick.py's shape, 8 openings of 8 tokens x 4 samples of
exactly 24 tokens, beta 0.03 times the k3 KL estimate, each sequence's tokens averaged then the sequences,
2 epochs x M minibatches of Adam (5e-5, clip 1.0), scored by a MiniLM-L6 reward model with a fresh scalar
head (the main job's kind), rlhf_jax's RewardModel on both sides; ours is bench_ppo.online_iteration (the
run's jitted rollout and update), tunix's its GRPOLearner.train over --iterations copies of the batch.
--grpo-minibatches 1 (default): the work matched exactly, one rollout of 32 and 2 Adam steps of 32 each side;
2: grpo_quick's own 4 Adam steps of 16, where ours rolls out the 32 at once and tunix, which rolls out each
mini-batch on its own, twice 16. EasyDeL's GRPOTrainer takes one optimizer step per rollout, so against it
both sides run one epoch of one minibatch; its trainer runs in a thread of the peer, held at each reward
call until the bench releases it (experiments/jax_peers/easydel_peer.py). Prints one JSON line.

    python experiments/bench_jax_peers.py [--peer tunix|easydel] [--work sampling dpo grpo] [--peer-python PY]
        [--batches 16 64] [--passes 3] [--grpo-minibatches 1|2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import jax
import numpy as np
from bench_generate import sampling_call, timed
from bench_lib import HERE, alternate, compiled_train_step, emit, model_dir, summary, time_steps
from bench_ppo import RESPONSE_TOKENS, online_iteration, scalar_reward_model
from flax import nnx
from rt_prompts import fixed_length_prompts

from rlhf_jax.allocator import TUNABLES
from rlhf_jax.config import load_config
from rlhf_jax.models import from_pretrained, load_tokenizer

PARITY_BOUND = 1e-3
PEERS = {  # name: (its script in experiments/jax_peers/, its venv's python as setup.sh makes it, its work)
    "tunix": ("tunix_peer.py", "/tmp/venv_tunix/bin/python", ("sampling", "dpo", "grpo")),
    "easydel": ("easydel_peer.py", "/tmp/venv_easydel/bin/python", ("sampling", "dpo", "grpo")),
}


class PeerProcess:
    """A peer script in its own venv, one JSON request and one JSON answer per line."""

    def __init__(self, python: str, script: str, model: str, allocator: str, xla_flags: str | None = None):
        # On our platform (a GPU's name in JAX_PLATFORMS is "cuda"), with rlhf_jax importable for its scorer; a
        # peer's own packages come through its python (a venv, or a wrapper that sets its PYTHONPATH).
        platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        env = {**os.environ, "JAX_PLATFORMS": platform,
               "PYTHONPATH": os.pathsep.join(filter(None, (os.path.dirname(HERE), os.environ.get("PYTHONPATH"))))}
        env.pop("XLA_FLAGS", None)  # ours (a simulated device count, say) are not the peer's
        if xla_flags:
            env["XLA_FLAGS"] = xla_flags
        if allocator == "same":
            env["GLIBC_TUNABLES"] = TUNABLES
        self.process = subprocess.Popen([python, script, model], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.answer()

    def answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                answer = json.loads(line)
                if "error" in answer:
                    raise RuntimeError(f"peer: {answer['error']}")
                return answer
        raise RuntimeError(f"the peer exited with status {self.process.wait()}")

    def __call__(self, op: str, **fields) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


def logits_gap(model, peer: PeerProcess, prompts, out_path: str) -> float:
    """max |our logits - the peer's| on ``prompts`` (no padding: every opening has the same length)."""
    ids = np.asarray(prompts, np.int32)
    ours = np.asarray(model(ids, np.ones_like(ids)), np.float32)
    peer("logits", ids=ids.tolist(), out=out_path)
    return float(np.max(np.abs(ours - np.load(out_path))))


def dpo_batch(tokenizer, pairs: int, prompt_len: int = 8, response_len: int = 32, positions: bool = False):
    """(ours, the peer's) one DPO batch of review tokens: the first ``prompt_len`` + ``response_len`` tokens
    of 2 x ``pairs`` snippets; pair i shares snippet i's opening, chosen continues it, rejected is pairs + i's
    continuation. ``positions``: ours carries the responses' positions, as data.max_response_length =
    ``response_len`` tokenises them, so that our LM head runs at those positions alone."""
    rows = np.asarray(fixed_length_prompts(tokenizer, 2 * pairs, prompt_len + response_len), np.int32)
    prompt, chosen, rejected = rows[:pairs, :prompt_len], rows[:pairs, prompt_len:], rows[pairs:, prompt_len:]
    full = {"chosen": np.concatenate([prompt, chosen], 1), "rejected": np.concatenate([prompt, rejected], 1)}
    loss_mask = np.concatenate([np.zeros_like(prompt), np.ones_like(chosen)], 1)
    ours = {"weights": np.ones(pairs, np.float32)}
    for side, ids in full.items():
        ours.update({f"{side}_ids": ids, f"{side}_mask": np.ones_like(ids), f"{side}_loss_mask": loss_mask})
        if positions:
            ours[f"{side}_positions"] = np.tile(np.arange(prompt_len, prompt_len + response_len, dtype=np.int32),
                                                (pairs, 1))
    peer = {"prompt_ids": prompt.tolist(), "chosen_ids": chosen.tolist(), "rejected_ids": rejected.tolist()}
    return ours, peer


def reference_forward(model: str):
    """pairs -> (log pi_ref(chosen), log pi_ref(rejected)): a frozen float32 copy of ``model``, jitted on its own."""
    from rlhf_jax.rl.preference import pair_logprobs

    graphdef, params = nnx.split(from_pretrained(model_dir(model), dtype="float32"))
    forward = jax.jit(lambda params, pairs: pair_logprobs(nnx.merge(graphdef, params), pairs))
    return lambda pairs: forward(params, pairs)


def dpo_bench(peer: PeerProcess, args) -> dict:
    tokenizer, state, train_step = compiled_train_step(args.model, "causal_lm", "dpo", 5e-5, 10**6)
    batch, peer_batch = dpo_batch(tokenizer, 16, positions=args.dpo_response_positions)
    reference = reference_forward(args.model)
    ref_chosen, ref_rejected = reference(batch)
    batch = {**batch, "ref_chosen": np.asarray(ref_chosen), "ref_rejected": np.asarray(ref_rejected)}
    first_reference = timed(lambda: jax.block_until_ready(reference(batch)))
    state, (first,) = time_steps(train_step, state, [batch], 0)
    peer_first = peer("dpo_trainer", **peer_batch, beta=0.05, learning_rate=5e-5,
                      total_steps=1 + args.passes * (args.pass_warmup + args.steps) + 1
                      )["first_step_seconds_incl_compile"]
    step_seconds, reference_seconds = [], []

    def ours():
        nonlocal state
        if args.pass_warmup:
            state, _ = time_steps(train_step, state, [batch] * args.pass_warmup, 0)
            jax.block_until_ready(reference(batch))
        state, seconds = time_steps(train_step, state, [batch] * args.steps, 0)
        step_seconds.append(sum(seconds) / len(seconds))
        reference_seconds.append(statistics.median(timed(lambda: jax.block_until_ready(reference(batch)))
                                                   for _ in range(3)))
        return step_seconds[-1] + reference_seconds[-1]

    def theirs():
        if args.pass_warmup:
            peer("dpo", steps=args.pass_warmup)
        return peer("dpo", steps=args.steps)["seconds"] / args.steps

    rounds = alternate(args.passes, ours, theirs, lower_is_better=True)
    alone = [round(r["peer"] / s, 3) for r, s in zip(rounds, step_seconds, strict=True)]
    return {**summary(rounds), "metric": "seconds per step; ratio = peer / ours, with our reference forward",
            "rlhf_jax_step_seconds": [round(s, 3) for s in step_seconds],
            "rlhf_jax_reference_forward_seconds": [round(s, 3) for s in reference_seconds],
            "ratio_without_our_reference_forward": alone,
            "rlhf_jax_first_step_seconds_incl_compile": round(first + first_reference, 2),
            "peer_first_step_seconds_incl_compile": round(peer_first, 2)}


PEER_TITLES = {"tunix": "google-tunix Sampler, DPOTrainer and GRPOLearner (llama3 model, rope_theta bound)",
               "easydel": "EasyDeL generate under one jit, DPOTrainer and GRPOTrainer (float32 load; rope_theta, "
                          "attention / KV / rope dtypes fixed)"}
GRPO_FIELDS = ("algorithm", "samples_per_prompt", "kl_target", "kl_coef", "epochs", "learning_rate")


def grpo_bench(peer: PeerProcess, tokenizer, args) -> dict:
    quick = load_config(os.path.join(os.path.dirname(HERE), "configs", "grpo_quick.py"))  # the shape timed
    openings_n, prompt_len, max_length = quick.rl.rollout_prompts, quick.rl.prompt_tokens, quick.data.max_length
    one_step = args.peer == "easydel"  # its GRPOTrainer takes one optimizer step per rollout
    shape = {**{name: getattr(quick.rl, name) for name in GRPO_FIELDS},
             "minibatches": 1 if one_step else args.grpo_minibatches, **({"epochs": 1} if one_step else {})}
    reward_source = model_dir(args.reward_model or quick.model.source)
    reward_model = scalar_reward_model(reward_source, max_length, **dict(quick.model.config))
    iteration, _ = online_iteration(model_dir(args.model), shape, reward_model, openings_n, prompt_len)
    first = iteration()
    openings = fixed_length_prompts(tokenizer, openings_n, prompt_len)
    peer_first = peer("grpo_learner", prompts=openings, prompt_texts=[tokenizer.decode(o) for o in openings],
                      reward_model=reward_source, reward_max_length=max_length,
                      samples=shape["samples_per_prompt"], new_tokens=RESPONSE_TOKENS, prompt_tokens=prompt_len,
                      beta=shape["kl_coef"], epsilon=quick.rl.clip_ratio, learning_rate=shape["learning_rate"],
                      epochs=shape["epochs"], minibatches=shape["minibatches"],
                      steps=2 + args.passes * args.iterations + 1)
    rounds = alternate(args.passes, lambda: statistics.median(iteration() for _ in range(args.iterations)),
                       lambda: peer("grpo", iterations=args.iterations)["seconds"], lower_is_better=True)
    return {**summary(rounds), "metric": "seconds per GRPO iteration (ours: median of --iterations; the peer: mean "
                                         "over --iterations); ratio = peer / ours",
            "shape": {"openings": openings_n, "prompt_tokens": prompt_len, "response_tokens": RESPONSE_TOKENS,
                      **shape}, "peer_rollouts_per_iteration": shape["minibatches"],
            "rlhf_jax_first_iteration_seconds_incl_compile": round(first, 2),
            "peer_first_iteration": {k: round(v, 2) if isinstance(v, float) else v for k, v in peer_first.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=tuple(PEERS), default="tunix")
    parser.add_argument("--peer-python", help="the peer's venv's python (default: experiments/jax_peers/setup.sh's)")
    parser.add_argument("--peer-allocator", choices=("same", "default"), default="same")
    parser.add_argument("--work", nargs="+", choices=("sampling", "dpo", "grpo"),
                        help="default: all the peer has")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=4, help="DPO steps per side per pass")
    parser.add_argument("--iterations", type=int, default=3, help="GRPO iterations per side per pass")
    parser.add_argument("--dpo-response-positions", action="store_true",
                        help="dpo: our LM head at the 32 response positions alone, as data.max_response_length=32 "
                             "gives (default: at all 40, configs/dpo_quick.py as it is)")
    parser.add_argument("--grpo-minibatches", type=int, choices=(1, 2), default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pass-warmup", type=int, default=0,
                        help="sampling, dpo: untimed calls / steps each side makes at the start of every pass")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--reward-model", help="grpo: the reward model's trunk (default: grpo_quick.py's)")
    args = parser.parse_args()
    script, default_python, peer_work = PEERS[args.peer]
    args.work = args.work or list(peer_work)
    if not set(args.work) <= set(peer_work):
        parser.error(f"--peer {args.peer} has no {sorted(set(args.work) - set(peer_work))} (it has {peer_work})")

    source = model_dir(args.model)  # a transformers directory: float32 safetensors, which the peer reads too
    model = from_pretrained(source, dtype="float32")
    tokenizer = load_tokenizer(source)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    peer = PeerProcess(args.peer_python or default_python, os.path.join(HERE, "jax_peers", script), source,
                       args.peer_allocator)
    versions = {"peer": peer("versions")}
    gap = logits_gap(model, peer, fixed_length_prompts(tokenizer, 4, args.prompt_len), "/tmp/bench_peer_logits.npy")
    if not gap < PARITY_BOUND:
        sys.exit(f"logits differ from the peer's by {gap:.3g} (bound {PARITY_BOUND}): no timing")
    results = {}
    for batch in args.batches if "sampling" in args.work else []:
        prompts = fixed_length_prompts(tokenizer, batch, args.prompt_len)
        generated = batch * args.new_tokens
        ours = sampling_call(model, prompts, args.new_tokens)
        first = timed(ours)
        peer_first = peer("sampler", prompts=prompts, new_tokens=args.new_tokens)["first_call_seconds_incl_compile"]
        our_seconds = []

        def our_rate():
            for _ in range(args.pass_warmup):
                timed(ours)
            our_seconds.append(statistics.median(timed(ours) for _ in range(args.repeats)))
            return generated / our_seconds[-1]

        def peer_rate():
            if args.pass_warmup:
                peer("sample", repeats=args.pass_warmup)
            return generated / statistics.median(peer("sample", repeats=args.repeats)["seconds"])

        rounds = alternate(args.passes, our_rate, peer_rate)
        results[f"batch_{batch}"] = {
            **summary(rounds), "rlhf_jax_first_call_seconds_incl_compile": round(first, 2),
            "peer_first_call_seconds_incl_compile": round(peer_first, 2),
            "rlhf_jax_weight_gb_read_per_s": round(weight_bytes * args.new_tokens / statistics.median(our_seconds)
                                                   / 1e9, 1)}
    if "dpo" in args.work:
        results["dpo"] = dpo_bench(peer, args)
    if "grpo" in args.work:
        results["grpo"] = grpo_bench(peer, tokenizer, args)
    peer.close()
    emit({"workload": "jax_peer", "metric": "sampling: generated tokens per second; dpo, grpo: their own 'metric'",
          "config": {"model": args.model, "dtype": "float32", "prompt_len": args.prompt_len,
                     "new_tokens": args.new_tokens, "passes": args.passes, "repeats": args.repeats,
                     "pass_warmup": args.pass_warmup, "dpo_response_positions": args.dpo_response_positions,
                     "sampling": "temperature 1, no top-k/top-p, no early stop",
                     "peer": PEER_TITLES[args.peer],
                     "peer_allocator": args.peer_allocator},
          "logits_max_abs_diff": gap, "results": results, "versions": versions})


if __name__ == "__main__":
    main()
