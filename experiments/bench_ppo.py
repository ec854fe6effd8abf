"""Seconds per PPO iteration: rlhf_jax's jitted rollout + update beside trl's PPOTrainer, same run.

The workload of the peer (../shared/peers/w2_ppo.py, trl 1.12.0): policy SmolLM2-135M-Instruct, its
frozen copy as reference, 16 prompts of 16 Rotten Tomatoes tokens, exactly 24 sampled tokens
(temperature 1, no EOS stop), 4 epochs x 4 minibatches (16 Adam steps of 4 sequences), float32; value:
a separate SmolLM2 trunk with a scalar head; reward model: SmolLM2 with a random scalar head (the peer's
exact scorer, the default here; --reward minilm-l6 for the lighter MiniLM one). --value shared puts the
value head on the policy's trunk instead (not the peer's work).

One iteration = rollout + host decode/re-tokenise/score + update. Ours and the peer alternate for
--passes rounds (the peer's script in its own venv, with its own warm-up); in each, ours is the median of
--iterations timed iterations after the first of the run (compilation, reported apart), and the ratio is
peer seconds / ours. MFU: the iteration's model FLOPs (2 x parameters x tokens per forward, x 3 with the
backward; the embedding table counted where it is the LM head) over ours seconds, against the float32
GEMM rate jax reaches in the same run (bench_lib). Prints one JSON line.

    python experiments/bench_ppo.py [--passes 3] [--iterations 3] [--value separate|shared]
        [--reward smollm2-135m-instruct|minilm-l6|DIR] [--policy DIR] [--fused-optimizer]
        [--peer-python /tmp/venv_ppo/bin/python] [--no-peer]
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
from bench_lib import PEERS, alternate, emit, gemm_gflops, model_dir, run_peer, summary
from flax import nnx
from jax.profiler import TraceAnnotation
from rt_prompts import fixed_length_prompts

from rlhf_jax.config import experiment_from_dict
from rlhf_jax.models import from_pretrained, load_tokenizer
from rlhf_jax.rl import online
from rlhf_jax.runs import policy_training
from rlhf_jax.sampling import decode_responses
from rlhf_jax.scoring import RewardModel

RESPONSE_TOKENS = 24


def parameter_count(params, without_embedding: bool = False) -> int:
    """Parameters of a model's state; without its token embedding (a table lookup where it is not the LM head)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(int(np.prod(leaf.shape)) for path, leaf in leaves
               if not (without_embedding and "embed" in jax.tree_util.keystr(path)))


def iteration_flops(policy_params, value_params, reward_params, rows: int, tokens: int, epochs: int) -> float:
    """Model FLOPs of one PPO iteration: sampling, the policy's, reference's and value's forward over the
    rollout, the reward model's forward, then ``epochs`` passes of forward + backward of policy and value."""
    policy = 2 * parameter_count(policy_params) * rows * tokens
    value = 2 * parameter_count(value_params, without_embedding=True) * rows * tokens if value_params else 0
    scorer = 2 * parameter_count(reward_params, without_embedding=True) * rows * tokens
    rollout = 3 * policy + value + scorer  # sampling + policy log-probs + reference log-probs
    return rollout + epochs * 3 * (policy + value)


def online_iteration(policy: str, rl: dict, reward_model: RewardModel, prompts: int, prompt_len: int):
    """Our online RL iteration (jitted rollout, host decode + score, jitted update) on ``prompts`` fixed openings
    of ``prompt_len`` tokens (each repeated rl["samples_per_prompt"] times), sampling exactly the response
    tokens: (() -> seconds of one iteration, the run's initial state)."""
    exp = experiment_from_dict({
        "model": {"source": policy, "head": "scalar"}, "train": {"task": "reward_pairwise"},
        "mesh": {"shape": {"data": 1, "fsdp": 1, "tensor": 1}},
        "rl": {"policy": policy, "iterations": 1, "rollout_prompts": prompts, "prompt_tokens": prompt_len,
                "response_tokens": RESPONSE_TOKENS, **rl}})
    run = policy_training.prepare(exp, None)
    run.sampling = online.sampling_config(exp.rl, None, 0)  # no EOS stop, like the peers
    run.functions = online.jit_functions(
        online.Programs(run.graphdef, run.ref_graphdef, exp.rl, run.sampling),
        run.state_sharding,
        jax.tree.map(lambda x: x.sharding, run.ref_params),
        run.layout,
    )
    ids = np.repeat(np.asarray(fixed_length_prompts(run.tokenizer, prompts, prompt_len), np.int32),
                    exp.rl.samples_per_prompt, axis=0)
    texts = [run.tokenizer.decode(row) for row in ids]
    state = run.state

    def iteration() -> float:
        nonlocal state
        start = time.perf_counter()
        with TraceAnnotation("rollout"):  # the phases that experiments/profile_step.py times
            experience = run.functions.rollout(state.params, run.ref_params,
                                               *policy_training.to_mesh((ids, np.ones_like(ids)), run),
                                               online.rollout_key(state.rng))
            jax.block_until_ready(experience)
        with TraceAnnotation("decode + score"):
            responses = decode_responses(run.tokenizer, experience.ids_BxT[:, prompt_len:],
                                         experience.response_mask_BxN)
            scores = reward_model.score(texts, responses)
        with TraceAnnotation("update"):
            state, metrics = run.functions.update(state, experience, policy_training.to_mesh(scores, run))
            jax.block_until_ready(metrics)
        return time.perf_counter() - start

    return iteration, state


def scalar_reward_model(source: str, max_length: int, **overrides) -> RewardModel:
    """A reward model of ``source``'s trunk with a freshly initialised scalar head (seed 0)."""
    graphdef, params = nnx.split(from_pretrained(source, head="scalar", **overrides))
    return RewardModel(graphdef, params, load_tokenizer(source), max_length)


def prepare(args):
    """Our PPO iteration on the peer's workload: () -> seconds of one iteration, and its model FLOPs."""
    reward_model = scalar_reward_model(model_dir(args.reward or args.policy), args.prompt_len + RESPONSE_TOKENS)
    iteration, state = online_iteration(
        model_dir(args.policy), {"value": args.value, "epochs": 4, "minibatches": 4, "kl_target": 6.0,
                                 "fused_optimizer": args.fused_optimizer},
        reward_model, args.prompts, args.prompt_len)
    value_params = state.params["value_model"] if args.value == "separate" else None
    policy_params = state.params["policy"]
    flops = iteration_flops(policy_params, value_params, reward_model.params, args.prompts,
                            args.prompt_len + RESPONSE_TOKENS, epochs=4)
    return iteration, flops


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per pass")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--value", choices=["separate", "shared"], default="separate")
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="asset name or Hugging Face directory")
    parser.add_argument("--reward", default=None, help="the reward model's trunk (default: the policy's, as the peer)")
    parser.add_argument("--peer-python", default="/tmp/venv_ppo/bin/python")
    parser.add_argument("--peer-script", default=os.path.join(PEERS, "w2_ppo.py"))
    parser.add_argument("--fused-optimizer", action="store_true",
                        help="rl.fused_optimizer: clip + Adam in one pass (rounds differently when clipping acts)")
    parser.add_argument("--no-peer", action="store_true")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    iteration, flops = prepare(args)
    first = iteration()  # compilation
    seconds = []

    def ours():
        seconds.append(statistics.median([iteration() for _ in range(args.iterations)]))
        return seconds[-1]

    peer_runs = []

    def peer():
        peer_runs.append(run_peer(args.peer_python, args.peer_script,
                                  ["--model", "smollm2", "--iters", str(args.iterations),
                                   "--prompts", str(args.prompts), "--prompt-len", str(args.prompt_len)]))
        return peer_runs[-1].get("value")

    rounds = alternate(args.passes, ours, None if args.no_peer else peer, lower_is_better=True)
    ceiling = gemm_gflops()
    emit({"workload": "ppo_iteration", "metric": "seconds_per_ppo_iteration (ratio: peer / ours)",
          "config": {"policy": args.policy, "dtype": "float32", "prompts": args.prompts, "prompt_len": args.prompt_len,
                     "response_tokens": RESPONSE_TOKENS, "epochs": 4, "minibatches": 4, "value": args.value,
                     "fused_optimizer": args.fused_optimizer,
                     "reward_model": f"{args.reward or args.policy} + random scalar head",
                     "peer": "trl 1.12 PPOTrainer (w2_ppo.py): SmolLM2 policy, value and reward models"},
          **summary(rounds),
          "rlhf_jax_first_iteration_incl_compile": round(first, 2),
          "iteration_model_gflop": round(flops / 1e9, 1),
          "gemm_ceiling_gflops": round(ceiling, 1),
          "rlhf_jax_mfu": round(flops / statistics.median(seconds) / 1e9 / ceiling, 3),
          "peer_runs": [{k: v for k, v in run.items() if k != "config"} for run in peer_runs][:1]})


if __name__ == "__main__":
    sys.exit(main())
