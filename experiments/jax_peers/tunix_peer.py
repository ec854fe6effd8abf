"""google-tunix as a bench peer: a process of its own venv that takes one JSON request per stdin line and
answers one JSON line on stdout, so that its compiled programs stay warm between alternating passes.

SmolLM2-135M-Instruct (the float32 safetensors directory rlhf_jax's assets give) through tunix's Llama3
NNX model, with the fix it needs: tunix 0.1.7 never passes ``rope_theta`` to ``apply_rope`` (whose
default, 1e6, replaces SmolLM2's 1e5); it is bound here. Requests:

  {"op": "versions"}
  {"op": "logits", "ids": [[...]], "out": PATH}        float32 logits [B, T, V] saved with numpy
  {"op": "sampler", "prompts": [[...]], "new_tokens": N} a Sampler for these prompts, one call (compiles)
  {"op": "sample", "repeats": R}                        R timed calls; their seconds
  {"op": "dpo_trainer", "prompt_ids": [[...]], "chosen_ids": [[...]], "rejected_ids": [[...]], "beta": b,
   "learning_rate": lr}                                 a DPOTrainer (policy + frozen reference), one step
  {"op": "dpo", "steps": S}                             S steps on that batch in one train() call; seconds
  {"op": "grpo_learner", "prompts": [[...]], "prompt_texts": [...], "reward_model": DIR, "samples": G,
   "new_tokens": N, "beta": b, "epsilon": e, "learning_rate": lr, "epochs": mu, "minibatches": M}
                                                        a GRPOLearner (actor, frozen reference, rlhf_jax's
                                                        reward model on DIR as its reward), one iteration
  {"op": "grpo", "iterations": I}                       I iterations in one train() call; seconds per one

Sampling as experiments/bench_generate.py does it: the prompts' ids as they are (tunix's sampler would
prepend a BOS; it is given none), temperature 1, the full distribution, exactly N new tokens (the EOS id
lies outside the vocabulary). tunix samples only in its "top_p" mode (without top_p it is greedy); at
top_p 1.0 and no top_k that mode draws from the whole softmax with ``jax.random.categorical``, as ours does.

GRPO as configs/grpo_quick.py's iteration: all prompts x G samples, ``epochs`` passes (tunix's
``num_iterations``) of M Adam steps (``mini_batch_size``); tunix rolls out each mini-batch on its own (a
global step of its is one mini-batch: M rollouts of 1/M of the batch, each followed by its ``epochs`` Adam
steps), so rollout granularity matches ours only at M = 1. The loss: a mean over each sequence's tokens,
then over sequences, plus beta times the mean k3 ("low_var_kl") estimate of KL to the reference. The
reward function scores with rlhf_jax's own RewardModel (the repository on PYTHONPATH), so the scorer's
work and code are the same on both sides. ``grpo`` times one train() call over I copies of the batch and
checks that it ran I x M rollouts (reward calls) and I x epochs x M Adam steps.

Run by experiments/bench_jax_peers.py, not by hand.
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from serve import TimedSampler, serve, versions
from tunix.generate import sampler as sampler_lib
from tunix.models.llama3 import model as llama_lib
from tunix.models.llama3 import params as llama_params

SMOLLM2_135M = llama_lib.ModelConfig(
    num_layers=30, vocab_size=49152, embed_dim=576, hidden_dim=1536, num_heads=9, head_dim=64,
    num_kv_heads=3, rope_theta=100_000, norm_eps=1e-5, weight_tying=True)
llama_lib.apply_rope = functools.partial(llama_lib.apply_rope, rope_theta=SMOLLM2_135M.rope_theta)


class Ids:
    """A tokenizer for tunix over prompts given as ids: key 'pI' is prompt I, no BOS is added; decoding by
    ``hf`` (a transformers tokenizer) where given."""

    def __init__(self, prompts, hf=None):
        self.prompts, self.hf = {f"p{i}": list(p) for i, p in enumerate(prompts)}, hf

    def encode(self, text, **kwargs):
        return self.prompts[str(text)]  # GRPO passes numpy strings

    def decode(self, ids, **kwargs):
        return self.hf.decode(ids, **kwargs) if self.hf else " ".join(map(str, ids))

    def bos_id(self):
        return None

    def eos_id(self):
        return SMOLLM2_135M.vocab_size

    def pad_id(self):
        return 0


class Peer(TimedSampler):
    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
        with self.mesh:
            self.model = llama_params.create_model_from_safe_tensors(model_dir, SMOLLM2_135M, self.mesh,
                                                                     dtype=jnp.float32)

    def versions(self, request):
        return versions("google-tunix")

    def logits(self, request):
        ids = np.asarray(request["ids"], np.int32)
        batch, length = ids.shape
        positions = np.broadcast_to(np.arange(length), (batch, length))
        causal = np.broadcast_to(np.tril(np.ones((length, length), bool)), (batch, length, length))
        logits, _ = self.model(jnp.asarray(ids), jnp.asarray(positions), None, jnp.asarray(causal))
        np.save(request["out"], np.asarray(logits, np.float32))
        return {"shape": list(logits.shape)}

    def sampler(self, request):
        prompts, new_tokens = request["prompts"], request["new_tokens"]
        length = len(prompts[0])
        cache = sampler_lib.CacheConfig(cache_size=length + new_tokens, num_layers=SMOLLM2_135M.num_layers,
                                        num_kv_heads=SMOLLM2_135M.num_kv_heads, head_dim=SMOLLM2_135M.head_dim)
        sampler = sampler_lib.Sampler(self.model, Ids(prompts), cache)
        keys = [f"p{i}" for i in range(len(prompts))]
        seeds = iter(range(10**9))

        def call():
            out = sampler(keys, max_generation_steps=new_tokens, max_prompt_length=length, temperature=1.0,
                          top_p=1.0, eos_tokens=[SMOLLM2_135M.vocab_size], seed=next(seeds), pad_output=True)
            jax.block_until_ready(out.tokens)
            return out

        start = time.perf_counter()
        out = call()
        first = time.perf_counter() - start
        lengths = sorted({len(t) for t in out.tokens})
        if lengths != [new_tokens]:
            raise RuntimeError(f"tunix sampled {lengths} tokens, not exactly {new_tokens}")
        self.call = call
        return {"first_call_seconds_incl_compile": first}

    def dpo_trainer(self, request):
        """tunix's DPOTrainer on one tokenised batch (no padding: every row is full), clip 1.0 + AdamW."""
        import optax
        from tunix.sft.dpo import dpo_trainer as dpo_lib

        with self.mesh:
            reference = llama_params.create_model_from_safe_tensors(self.model_dir, SMOLLM2_135M, self.mesh,
                                                                    dtype=jnp.float32)
        prompt, chosen, rejected = (jnp.asarray(request[k], jnp.int32) for k in ("prompt_ids", "chosen_ids",
                                                                                 "rejected_ids"))
        self.batch = dpo_lib.TrainingInput(prompt_ids=prompt, prompt_mask=jnp.ones_like(prompt), chosen_ids=chosen,
                                           chosen_mask=jnp.ones_like(chosen), rejected_ids=rejected,
                                           rejected_mask=jnp.ones_like(rejected))
        config = dpo_lib.DPOTrainingConfig(eval_every_n_steps=10**9, max_steps=10**9, beta=request["beta"],
                                           pbar_description=None)
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(request["learning_rate"]))
        self.trainer = dpo_lib.DPOTrainer(self.model, reference, optimizer, config)
        return {"first_step_seconds_incl_compile": self.dpo({"steps": 1})["seconds"]}

    def dpo(self, request):
        from flax import nnx

        # train() skips as many leading examples as it has trained already (its resume): pad the list so
        # that exactly request["steps"] new ones train, and count them.
        done, skipped = self.trainer._train_steps, self.trainer._iter_steps
        start = time.perf_counter()
        with self.mesh:
            self.trainer.train([self.batch] * (skipped + request["steps"]))
        jax.block_until_ready(nnx.state(self.model))
        seconds = time.perf_counter() - start
        trained = self.trainer._train_steps - done
        if trained != request["steps"]:
            raise RuntimeError(f"tunix trained {trained} steps, not {request['steps']}")
        return {"seconds": seconds}

    def grpo_learner(self, request):
        import optax
        import transformers
        from flax import nnx
        from tunix.rl import rl_cluster as rl_cluster_lib
        from tunix.rl.grpo import grpo_learner as grpo_lib
        from tunix.rl.rollout import base_rollout

        from rlhf_jax.models import from_pretrained, load_tokenizer
        from rlhf_jax.scoring import RewardModel

        prompts, texts, samples = request["prompts"], request["prompt_texts"], request["samples"]
        with self.mesh:
            reference = llama_params.create_model_from_safe_tensors(self.model_dir, SMOLLM2_135M, self.mesh,
                                                                    dtype=jnp.float32)
        scorer = from_pretrained(request["reward_model"], head="scalar", pooling="cls")
        graphdef, params = nnx.split(scorer)
        reward_model = RewardModel(graphdef, params, load_tokenizer(request["reward_model"]),
                                   request["reward_max_length"])
        text_of = {f"p{i}": text for i, text in enumerate(texts)}
        self.reward_calls = 0

        def reward(prompts, completions, **kwargs):
            self.reward_calls += 1
            return [float(s) for s in reward_model.score([text_of[str(p)] for p in prompts], list(completions))]

        rows = len(prompts)
        mini = rows // request["minibatches"]
        cluster_config = rl_cluster_lib.ClusterConfig(
            role_to_mesh=dict.fromkeys((rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
                                        rl_cluster_lib.Role.ROLLOUT), self.mesh),
            rollout_engine="vanilla",
            offload_to_cpu=False,
            training_config=rl_cluster_lib.RLTrainingConfig(
                actor_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(request["learning_rate"])),
                eval_every_n_steps=10**9, max_steps=10**9, mini_batch_size=mini, train_micro_batch_size=mini,
                rollout_micro_batch_size=mini, compute_logps_micro_batch_size=mini),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=request["new_tokens"], max_prompt_length=len(prompts[0]),
                kv_cache_size=len(prompts[0]) + request["new_tokens"], temperature=1.0, top_p=1.0,
                eos_tokens=[SMOLLM2_135M.vocab_size]),
        )
        hf = transformers.AutoTokenizer.from_pretrained(self.model_dir)
        self.cluster = rl_cluster_lib.RLCluster(actor=self.model, reference=reference, tokenizer=Ids(prompts, hf),
                                                cluster_config=cluster_config)
        self.learner = grpo_lib.GRPOLearner(
            rl_cluster=self.cluster, reward_fns=[reward],
            algo_config=grpo_lib.GRPOConfig(num_generations=samples, num_iterations=request["epochs"],
                                            beta=request["beta"], epsilon=request["epsilon"],
                                            loss_agg_mode="sequence-mean-token-mean", kl_loss_mode="low_var_kl"))
        self.grpo_batch = {"prompts": np.array([f"p{i}" for i in range(rows)])}
        self.adam_steps, self.minibatches = request["epochs"] * request["minibatches"], request["minibatches"]
        return {"first_iteration_seconds_incl_compile": self.grpo({"iterations": 1})["seconds"]}

    def grpo(self, request):
        from flax import nnx

        iterations = request["iterations"]
        done, calls = self.cluster.actor_trainer.train_steps, self.reward_calls
        start = time.perf_counter()
        self.learner.train([self.grpo_batch] * iterations)
        jax.block_until_ready(nnx.state(self.model))
        seconds = time.perf_counter() - start
        trained, rollouts = self.cluster.actor_trainer.train_steps - done, self.reward_calls - calls
        if (trained, rollouts) != (self.adam_steps * iterations, self.minibatches * iterations):
            raise RuntimeError(f"tunix ran {rollouts} rollouts and {trained} Adam steps, not "
                               f"{self.minibatches * iterations} and {self.adam_steps * iterations}")
        return {"seconds": seconds / iterations}


def main():
    serve(Peer(sys.argv[1]))


if __name__ == "__main__":
    main()
