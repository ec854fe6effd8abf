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

Sampling as EasyDeL's trainers do it (``BaseTrainer.create_generate_function``: ``module.generate`` under
one jit, the parameters an argument), with a transformers ``GenerationConfig``: do_sample, temperature 1,
top_k 0, top_p 1.0 (the whole softmax), exactly N new tokens (the EOS id lies outside the vocabulary). The
prompts' ids as they are, no padding. Run by experiments/bench_jax_peers.py, not by hand.
"""

import sys
import time

import easydel as ed
import jax
import jax.numpy as jnp
import numpy as np
import torch
from easydel.infra.base_config import EasyDeLBaseConfig
from serve import serve
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


class Peer:
    def __init__(self, model_dir):
        self.vocab_size = None
        self.model = ed.AutoEasyDeLModelForCausalLM.from_pretrained(
            model_dir, dtype=jnp.float32, param_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST,
            sharding_axis_dims=(1, 1, 1, 1, 1), auto_shard_model=True, local_files_only=True,
            torch_dtype=torch.float32,
            config_kwargs=dict(freq_max_position_embeddings=256, mask_max_position_embeddings=256,
                               rope_theta=ROPE_THETA, attn_dtype=jnp.float32, kvdtype=jnp.float32))
        if self.model.config.rope_theta != ROPE_THETA:
            raise RuntimeError(f"EasyDeL loaded rope_theta {self.model.config.rope_theta}, not {ROPE_THETA}")
        self.call = None

    def versions(self, request):
        import importlib.metadata as md

        return {"jax": jax.__version__, "jaxlib": md.version("jaxlib"), "flax": md.version("flax"),
                "easydel": md.version("easydel")}

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

    def sample(self, request):
        seconds = []
        for _ in range(request["repeats"]):
            start = time.perf_counter()
            self.call()
            seconds.append(time.perf_counter() - start)
        return {"seconds": seconds}


def main():
    serve(Peer(sys.argv[1]))


if __name__ == "__main__":
    main()
