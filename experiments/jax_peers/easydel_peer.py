"""EasyDeL as a bench peer: a process of its own venv (jax 0.9.2, flax 0.12.3, torch for its HF loader) that
takes one JSON request per stdin line and answers one JSON line on stdout, as tunix_peer.py does.

SmolLM2-135M-Instruct from the float32 safetensors directory rlhf_jax's assets give, loaded through
``AutoEasyDeLModelForCausalLM.from_pretrained`` with the four defaults that change its numbers undone
(../shared/peers/jax/README.md): the float16 load (torch_dtype float32), rope_theta falling back to 10000
(given), bfloat16 attention and KV cache (float32 given), and the bfloat16 cast of the rope table
(``EasyDeLBaseConfig.get_basic_frequencies`` patched to keep float32). Requests:

  {"op": "versions"}
  {"op": "logits", "ids": [[...]], "out": PATH}         float32 logits [B, T, V] saved with numpy
  {"op": "sampler", "prompts": [[...]], "new_tokens": N} the jitted generate for these prompts, one call
  {"op": "sample", "repeats": R}                         R timed calls; their seconds
  {"op": "grpo_learner", "prompt_texts": [...], "reward_model": DIR, "reward_max_length": L, "samples": G,
   "new_tokens": N, "prompt_tokens": P, "beta": b, "epsilon": e, "learning_rate": lr, "steps": S}
                                                         a GRPOTrainer on S steps of these prompts, started
                                                         in a thread and held at its second reward call
  {"op": "grpo", "iterations": I}                        released for I iterations; seconds per iteration
  {"op": "dpo_trainer", "prompt_ids": [[...]], "chosen_ids": [[...]], "rejected_ids": [[...]], "beta": b,
   "learning_rate": lr, "total_steps": S}                a DPOTrainer (policy + frozen reference) on S copies
                                                         of the batch, in a thread, held after its first step
  {"op": "dpo", "steps": K}                              released for K steps; their seconds

Sampling as EasyDeL's trainers do it (``BaseTrainer.create_generate_function``: ``module.generate`` under
one jit, the parameters an argument), with a transformers ``GenerationConfig``: do_sample, temperature 1,
top_k 0, top_p 1.0 (the whole softmax), exactly N new tokens (the EOS id lies outside the vocabulary). The
prompts' ids as they are, no padding.

GRPO: ``ed.GRPOTrainer`` (loss_type "grpo": each sequence's tokens averaged, then the sequences; beta times
the k3 estimate of KL to the reference; clip 1.0, Adam without weight decay, no schedule). It takes one
optimizer step per rollout (its config's ``num_iterations`` is read nowhere in 0.3.0), so the bench
matches it with one epoch of one minibatch. Its reward function scores with rlhf_jax's RewardModel (the
repository on PYTHONPATH) and is the bench's handle on the trainer: ``train()`` runs in a thread, and the
reward function waits at each call until the bench releases as many iterations as it times, so the
trainer alternates with ours without leaving its loop. Released at a reward call, it runs that call's
scoring, the update, the next rollout and its generation up to the next reward call: one iteration of
work per interval, what ours does between two of its scorings. Run by experiments/bench_jax_peers.py,
not by hand.
"""

import sys
import threading
import time

import easydel as ed
import jax
import jax.numpy as jnp
import numpy as np
import torch
from easydel.infra.base_config import EasyDeLBaseConfig
from flax.nnx import split as nnx_split
from serve import TimedSampler, serve, versions
from transformers import GenerationConfig

ROPE_THETA = 100_000.0  # SmolLM2-135M's (config.json)


def _float32_frequencies(self, head_size=None, rotary_dim=None, base=None):
    """EasyDeLBaseConfig.get_basic_frequencies without its cast of the table to bfloat16."""
    from easydel.infra.utils import ModuleCaches
    from easydel.layers import get_frequencies
    from jax.sharding import NamedSharding, PartitionSpec

    head_size = head_size or self.head_dim
    table = get_frequencies(head_size=head_size, rotary_dim=rotary_dim or head_size,
                            max_position=self.granted_freq_max_position_embedding, base=base or self.rope_theta,
                            rope_scaling=self._get_rope_config().to_dict(),
                            partial_rotary_factor=getattr(self, "partial_rotary_factor", 1.0)).astype(jnp.float32)
    return ModuleCaches(jax.device_put(table, NamedSharding(self.mesh, PartitionSpec())))


EasyDeLBaseConfig.get_basic_frequencies = _float32_frequencies


class Peer(TimedSampler):
    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.load_arguments = dict(
            pretrained_model_name_or_path=model_dir, dtype=jnp.float32, param_dtype=jnp.float32,
            precision=jax.lax.Precision.HIGHEST, sharding_axis_dims=(1, 1, 1, 1, 1), auto_shard_model=True,
            local_files_only=True, torch_dtype=torch.float32,
            config_kwargs=dict(freq_max_position_embeddings=256, mask_max_position_embeddings=256,
                               rope_theta=ROPE_THETA, attn_dtype=jnp.float32, kvdtype=jnp.float32))
        self.model = ed.AutoEasyDeLModelForCausalLM.from_pretrained(**self.load_arguments)
        if self.model.config.rope_theta != ROPE_THETA:
            raise RuntimeError(f"EasyDeL loaded rope_theta {self.model.config.rope_theta}, not {ROPE_THETA}")

    def versions(self, request):
        return versions("easydel")

    def logits(self, request):
        ids = jnp.asarray(request["ids"], jnp.int32)
        with self.model.mesh:
            logits = self.model(input_ids=ids, attention_mask=jnp.ones_like(ids)).logits
        np.save(request["out"], np.asarray(logits, np.float32))
        return {"shape": list(logits.shape)}

    def sampler(self, request):
        prompts, new_tokens = np.asarray(request["prompts"], np.int32), request["new_tokens"]
        vocab = self.model.config.vocab_size
        config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                                  eos_token_id=vocab, pad_token_id=0, num_return_sequences=1)
        graphdef, graphstate, graphother = self.model.split_module()

        @jax.jit
        def generate(graphstate, ids, mask, key):
            module = self.model.merge_module(graphdef, graphstate, graphother)
            with module.mesh:
                out = module.generate(input_ids=ids, attention_mask=mask, generation_config=config, prng_key=key)
            return out.sequences

        ids, mask = jnp.asarray(prompts), jnp.ones(prompts.shape, jnp.int32)
        seeds = iter(range(10**9))

        def call():
            return jax.block_until_ready(generate(graphstate, ids, mask, jax.random.PRNGKey(next(seeds))))

        start = time.perf_counter()
        sequences = np.asarray(call())
        first = time.perf_counter() - start
        new = sequences[:, prompts.shape[1]:]
        if new.shape[1] != new_tokens or (new >= vocab).any() or (sequences[:, :prompts.shape[1]] != prompts).any():
            raise RuntimeError(f"EasyDeL returned {sequences.shape} tokens, not the prompts + {new_tokens} sampled")
        self.call = call
        return {"first_call_seconds_incl_compile": first}

    def grpo_learner(self, request):
        import datasets

        from rlhf_jax.models import from_pretrained, load_tokenizer
        from rlhf_jax.scoring import RewardModel

        graphdef, params = nnx_split(from_pretrained(request["reward_model"], head="scalar", pooling="cls"))
        reward_model = RewardModel(graphdef, params, load_tokenizer(request["reward_model"]),
                                   request["reward_max_length"])
        self.held = HeldTrainer()

        def reward(prompts=None, completions=None, **kwargs):
            self.held.arrive()
            return [float(s) for s in reward_model.score(list(prompts), [str(c) for c in completions])]

        prompts, total = request["prompt_texts"], request["prompt_tokens"] + request["new_tokens"]
        config = ed.GRPOConfig(
            num_train_epochs=1, total_batch_size=len(prompts), learning_rate=request["learning_rate"],
            max_training_steps=request["steps"], max_prompt_length=request["prompt_tokens"],
            max_completion_length=request["new_tokens"], max_length=total, num_return_sequences=request["samples"],
            beta=request["beta"], epsilon=request["epsilon"], loss_type="grpo", temperature=1.0, top_p=1.0, top_k=0,
            use_esurge_generation=False, **self.quiet_training("grpo"))
        dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts * request["steps"]])
        trainer = ed.GRPOTrainer(arguments=config, model=self.model, reward_funcs=reward, train_dataset=dataset,
                                 processing_class=self.tokenizer())
        seconds = self.held.start(trainer, arrivals=2)
        return {"first_iteration_seconds_incl_compile": seconds,
                "first_iteration": "train() start to its second reward call: set-up, 2 rollouts, 1 update"}

    def grpo(self, request):
        return {"seconds": self.held.run(request["iterations"]) / request["iterations"]}

    def dpo_trainer(self, request):
        """ed.DPOTrainer on one batch of pairs given as ids (decoded here; it tokenises them again), its
        reference's log-probs computed in every step (its default, as tunix's), held after each step."""
        import datasets

        tokenizer, held = self.tokenizer(), HeldTrainer()

        class Trainer(ed.DPOTrainer):
            def on_step_end(self, state, metrics, step):
                state, metrics = super().on_step_end(state, metrics, step)
                held.arrive()
                return state, metrics

        rows = [{"prompt": tokenizer.decode(p), "chosen": tokenizer.decode(c), "rejected": tokenizer.decode(r)}
                for p, c, r in zip(request["prompt_ids"], request["chosen_ids"], request["rejected_ids"], strict=True)]
        prompt, response = len(request["prompt_ids"][0]), len(request["chosen_ids"][0])
        config = ed.DPOConfig(
            num_train_epochs=1, total_batch_size=len(rows), learning_rate=request["learning_rate"],
            max_training_steps=request["total_steps"], beta=request["beta"], loss_type="sigmoid",
            max_prompt_length=prompt, max_completion_length=response, max_length=prompt + response,
            **self.quiet_training("dpo"))
        with self.model.mesh:
            reference = ed.AutoEasyDeLModelForCausalLM.from_pretrained(**self.load_arguments)
        trainer = Trainer(arguments=config, model=self.model, reference_model=reference, processing_class=tokenizer,
                          train_dataset=datasets.Dataset.from_list(rows * request["total_steps"]))
        self.held = held
        return {"first_step_seconds_incl_compile": held.start(trainer, arrivals=1)}

    def dpo(self, request):
        return {"seconds": self.held.run(request["steps"])}

    def tokenizer(self):
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir)
        tokenizer.padding_side = "left"
        self.model.config.pad_token_id = tokenizer.pad_token_id
        return tokenizer

    @staticmethod
    def quiet_training(name: str) -> dict:
        """Training arguments that keep the trainer to its steps: clip 1.0, Adam without weight decay, no
        schedule (the default), no saving, logging or wandb, the data in order."""
        return dict(save_directory=f"/tmp/easydel_{name}_bench", weight_decay=0.0, clip_grad=1.0, use_wandb=False,
                    save_steps=10**9, do_last_save=False, log_steps=10**9, report_steps=10**9,
                    shuffle_train_dataset=False, progress_bar_type="json")


class HeldTrainer:
    """An EasyDeL trainer's ``train()`` in a thread, held at each arrival (a reward call, a step's end) until
    the bench releases it: the trainer alternates with ours without leaving its loop."""

    def __init__(self):
        self.arrivals, self.released, self.failure = 0, 0, None
        self.gate = threading.Condition()

    def arrive(self):
        """Called by the trainer's thread: count, then wait while no release covers this arrival."""
        with self.gate:
            self.arrivals += 1
            self.gate.notify_all()
            self.gate.wait_for(lambda: self.arrivals <= self.released)

    def start(self, trainer, arrivals: int) -> float:
        """Start ``trainer.train()``; seconds until it reaches arrival number ``arrivals`` (held there)."""
        self.released = arrivals - 1

        def train():
            try:
                trainer.train()
            except BaseException as error:  # reported by the waiting request
                self.failure = f"{type(error).__name__}: {error}"
            with self.gate:
                self.arrivals = 10**9  # ended: wake the waiting request
                self.gate.notify_all()

        start = time.perf_counter()
        threading.Thread(target=train, daemon=True).start()
        self.wait(arrivals)
        return time.perf_counter() - start

    def run(self, count: int) -> float:
        """Release ``count`` more arrivals; seconds until the trainer is held again."""
        start = time.perf_counter()
        with self.gate:
            self.released = self.arrivals + count - 1
            target = self.arrivals + count
            self.gate.notify_all()
        self.wait(target)
        return time.perf_counter() - start

    def wait(self, arrivals: int):
        with self.gate:
            self.gate.wait_for(lambda: self.arrivals >= arrivals)
        if self.failure or self.arrivals == 10**9:
            raise RuntimeError(f"EasyDeL's train() ended early: {self.failure or 'no more data'}")


def main():
    serve(Peer(sys.argv[1]))


if __name__ == "__main__":
    main()
