"""Seconds per PPO iteration: rlhf_jax's jitted rollout + update beside trl's PPOTrainer, same run.

The workload of the peer (../shared/peers/w2_ppo.py, trl 1.12.0): policy SmolLM2-135M-Instruct, its
frozen copy as reference, 16 prompts of 16 Rotten Tomatoes tokens, exactly 24 sampled tokens
(temperature 1, no EOS stop), 4 epochs x 4 minibatches (16 Adam steps of 4 sequences), float32.
The reward model is MiniLM with a random scalar head (the peer uses a second SmolLM2 with a random
score head: a heavier scorer, so the comparison slightly favours us on scoring and is noted in the
output). Value: a separate SmolLM2 trunk (as the peer's) by default, or --value shared.

One iteration = rollout + host decode/re-tokenise/score + update; the first (compilation) is
reported apart, then the median of --iterations timed ones. Prints one JSON line.

    python experiments/bench_ppo.py [--iterations 3] [--value separate|shared]
        [--peer-python /tmp/venv_ppo/bin/python] [--peer-script ../shared/peers/w2_ppo.py]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from flax import nnx
from rt_prompts import fixed_length_prompts

from rlhf_jax import ppo
from rlhf_jax.config import experiment_from_dict
from rlhf_jax.models import from_pretrained, load_tokenizer
from rlhf_jax.runs import policy_training
from rlhf_jax.sampling import decode_responses
from rlhf_jax.scoring import RewardModel

POLICY = "smollm2-135m-instruct"
HERE = os.path.dirname(os.path.abspath(__file__))


def ours(args):
    exp = experiment_from_dict({
        "model": {"source": "minilm-l6", "head": "scalar"}, "train": {"task": "reward_pairwise"},
        "mesh": {"shape": {"data": 1, "fsdp": 1, "tensor": 1}},
        "ppo": {"policy": POLICY, "value": args.value, "iterations": 1, "rollout_prompts": args.prompts,
                "epochs": 4, "minibatches": 4, "prompt_tokens": args.prompt_len, "response_tokens": 24,
                "kl_target": 6.0}})
    run = policy_training.prepare(exp, None)
    run.sampling = ppo.sampling_config(exp.ppo, None, 0)  # no EOS stop, like the peer
    run.functions = ppo.jit_functions(ppo.Programs(run.graphdef, run.ref_graphdef, exp.ppo, run.sampling),
                                      run.state_sharding, jax.tree.map(lambda x: x.sharding, run.ref_params),
                                      run.mesh, run.rules)
    rm_model = from_pretrained("minilm-l6", head="scalar")
    graphdef, params = nnx.split(rm_model)
    reward_model = RewardModel(graphdef, params, load_tokenizer("minilm-l6"), 64)
    ids = np.asarray(fixed_length_prompts(run.tokenizer, args.prompts, args.prompt_len), np.int32)
    texts = [run.tokenizer.decode(row) for row in ids]
    state, seconds = run.state, []
    for _ in range(args.iterations + 1):
        start = time.perf_counter()
        experience = run.functions.rollout(state.params, run.ref_params, *policy_training.to_mesh((ids, np.ones_like(ids)), run),
                                           ppo.rollout_key(state.rng))
        responses = decode_responses(run.tokenizer, experience.ids_BxT[:, args.prompt_len:],
                                                 experience.response_mask_BxN)
        scores = reward_model.score(texts, responses)
        state, metrics = run.functions.update(state, experience, policy_training.to_mesh(scores, run))
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return seconds


def peer(args):
    """Run the peer script in its own venv (torch + trl 1.12.0); returns its JSON line, or why not."""
    if not (os.path.exists(args.peer_python) and os.path.exists(args.peer_script)):
        return {"skipped": f"no peer: {args.peer_python} or {args.peer_script} is missing "
                           f"(../shared/peers/setup.sh makes them)"}
    result = subprocess.run([args.peer_python, args.peer_script, "--model", "smollm2", "--iters", str(args.iterations),
                             "--prompts", str(args.prompts), "--prompt-len", str(args.prompt_len)],
                            capture_output=True, text=True, cwd=os.path.dirname(args.peer_script))
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"failed": result.stderr[-1500:]}
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--value", choices=["separate", "shared"], default="separate")
    parser.add_argument("--peer-python", default="/tmp/venv_ppo/bin/python")
    parser.add_argument("--peer-script", default=os.path.join(HERE, "..", "..", "shared", "peers", "w2_ppo.py"))
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    seconds = ours(args)
    median = statistics.median(seconds[1:])
    out = {"workload": "ppo_iteration", "metric": "seconds_per_ppo_iteration",
           "config": {"policy": POLICY, "dtype": "float32", "prompts": args.prompts, "prompt_len": args.prompt_len,
                      "response_tokens": 24, "epochs": 4, "minibatches": 4, "value": args.value,
                      "reward_model": "MiniLM-L6 + random scalar head (peer: SmolLM2 + random score head)"},
           "rlhf_jax_seconds_per_iteration": round(median, 2),
           "rlhf_jax_seconds_all": [round(s, 2) for s in seconds],
           "rlhf_jax_first_iteration_incl_compile": round(seconds[0], 2)}
    if not args.no_peer:
        result = peer(args)
        out["peer"] = {k: v for k, v in result.items() if k != "extra"}
        value = result.get("value")
        if value:
            out["trl_seconds_per_iteration"] = round(value, 2)
            out["speedup_vs_trl"] = round(value / median, 3)
    out.update(versions={"jax": jax.__version__}, machine={"nproc": os.cpu_count(), "platform": platform.platform()},
               date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
