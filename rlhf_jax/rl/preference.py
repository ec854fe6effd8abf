"""Offline preference optimisation of a causal LM on preference pairs: DPO, conservative DPO, IPO and KTO
(``losses.preference_loss``, ``losses.kto_loss``), and the reference-free SimPO and ORPO
(``losses.reference_free_loss``), as supervised tasks (``rlhf_jax.tasks``), trained by the supervised trainer;
and KTO on unpaired examples, each response desirable or not (``kto_unpaired``, ``losses.kto_unpaired_loss``).

Each pair (prompt, chosen, rejected) becomes two causal sequences, prompt + response + EOS, with a loss
mask on the response. The frozen reference's log-probabilities of both responses are computed once,
before training, by one jitted pass over every split with the initial parameters (the reference is the
policy the run starts from), and stored with the data as two columns, ``ref_chosen`` and
``ref_rejected``; the training step runs only the policy. They are also kept in a file named by everything
they depend on, so runs on the same pairs from the same start (DPO, IPO, cDPO, other seeds) share one pass.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from rlhf_jax import losses, sharding
from rlhf_jax.data.pipeline import Split, _tokenize_causal, eval_rows
from rlhf_jax.data.records import DataError
from rlhf_jax.distributed import is_main_process
from rlhf_jax.feeding import Feed

SIDES = ("chosen", "rejected")
# a side's columns ({side}_{part}) and the ``_tokenize_causal`` arrays they hold; positions only with
# data.max_response_length
COLUMNS = {"ids": "input_ids", "mask": "attention_mask", "loss_mask": "loss_mask", "positions": "response_positions"}


def _max_response(data) -> int | None:
    return None if data is None else data.max_response_length


def tokenize_preference_sequences(examples: list[dict], tokenizer, max_length: int, data=None) -> dict[str, np.ndarray]:
    """Pairs -> {chosen,rejected}_{ids,mask,loss_mask} ([B, L] int32) and weights; with
    data.max_response_length R, {chosen,rejected}_positions too ([B, R] int32, ``_tokenize_causal``)."""
    if not examples:
        raise DataError("no preference pairs to tokenize")
    prompts = [e["prompt"] for e in examples]
    arrays = {"weights": np.ones(len(examples), np.float32)}
    for side in SIDES:
        encoded = _tokenize_causal(tokenizer, [e[side] for e in examples], max_length, prompts, _max_response(data))
        arrays.update({f"{side}_{part}": encoded[name] for part, name in COLUMNS.items() if name in encoded})
    return arrays


def tokenize_unpaired(examples: list[dict], tokenizer, max_length: int, data=None) -> dict[str, np.ndarray]:
    """Unpaired examples (prompt, response, label) -> response_{ids,mask,loss_mask} ([B, L] int32; with
    data.max_response_length R, response_positions [B, R]), desirable (1.0 for label True) and weights."""
    if not examples:
        raise DataError("no unpaired examples to tokenize")
    encoded = _tokenize_causal(tokenizer, [e["response"] for e in examples], max_length,
                               [e["prompt"] for e in examples], _max_response(data))
    return {**{f"response_{part}": encoded[name] for part, name in COLUMNS.items() if name in encoded},
            "desirable": np.asarray([float(e["label"]) for e in examples], np.float32),
            "weights": np.ones(len(examples), np.float32)}


def sequence_logprobs(model, ids_BxT, mask_BxT, loss_mask_BxT, positions_BxR=None):
    """log pi(response | prompt) ([B]). Without positions, the LM head runs at every position and
    ``losses.sequence_logprob`` reads the response's; with them (``_tokenize_causal``'s response_positions),
    the head runs only at the R positions before the response's tokens, and 0s score nothing: the same sum,
    with the head's products and softmax over R positions instead of T."""
    if positions_BxR is None:
        return losses.sequence_logprob(model(ids_BxT, mask_BxT), ids_BxT, loss_mask_BxT)
    hidden_BxTxD = model.hidden_states(ids_BxT, mask_BxT)
    scored_BxR = (positions_BxR > 0).astype(jnp.int32)
    before_BxR = jnp.maximum(positions_BxR - 1, 0)
    hidden_BxRxD = jnp.take_along_axis(hidden_BxTxD, before_BxR[..., None], axis=1)
    logits_BxRxV = model.head(hidden_BxRxD, scored_BxR, model.backbone.token_embed)
    return losses.scored_logprob(logits_BxRxV, jnp.take_along_axis(ids_BxT, positions_BxR, axis=1), scored_BxR)


def _side(batch, side: str):
    """``sequence_logprobs``' arguments from a batch's columns of ``side``."""
    return tuple(batch.get(f"{side}_{part}") for part in COLUMNS)


def response_logprobs(model, batch):
    """log pi(response | prompt) of unpaired examples ([B])."""
    return sequence_logprobs(model, *_side(batch, "response"))


def pair_logprobs(model, batch):
    """(log pi(chosen | prompt), log pi(rejected | prompt)), [B] each, in one forward of 2B sequences."""
    chosen, rejected = _side(batch, "chosen"), _side(batch, "rejected")
    both = [None if c is None else jnp.concatenate([c, r]) for c, r in zip(chosen, rejected, strict=True)]
    logp_2B = sequence_logprobs(model, *both)
    half = batch["chosen_ids"].shape[0]
    return logp_2B[:half], logp_2B[half:]


def response_lengths(batch, side: str):
    """|y|: the response tokens whose log-probs ``losses.sequence_logprob`` sums ([B] float32)."""
    return jnp.sum(batch[f"{side}_loss_mask"][:, 1:], axis=1).astype(jnp.float32)


def make_loss(kind: str):
    """The task's loss_fn maker: DPO / cDPO / IPO and KTO on the policy's and the stored reference's
    log-probs, SimPO and ORPO on the policy's alone (``losses``)."""
    def make(tokenizer, vocab_size: int, train):
        def loss_fn(model, batch, rng):
            if kind == "kto_unpaired":
                return losses.kto_unpaired_loss(response_logprobs(model, batch), batch["ref_response"],
                                                batch["desirable"], train.beta, train.kto_desirable_weight,
                                                train.kto_undesirable_weight, batch["weights"])
            chosen, rejected = pair_logprobs(model, batch)
            if kind in losses.REFERENCE_FREE_LOSSES:
                return losses.reference_free_loss(chosen, rejected, response_lengths(batch, "chosen"),
                                                  response_lengths(batch, "rejected"), kind, train.beta,
                                                  train.simpo_gamma, train.orpo_lambda, batch["weights"])
            if kind == "kto":
                return losses.kto_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], train.beta,
                                       train.kto_desirable_weight, train.kto_undesirable_weight, batch["weights"])
            return losses.preference_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], train.beta,
                                          kind, train.label_smoothing if kind == "dpo" else 0.0, batch["weights"])

        return loss_fn

    return make


def _cache_key(split: Split, params, layout: sharding.Layout, batch_size: int) -> str:
    """sha256 of what the reference log-probs depend on: every row's arrays, the parameters, the mesh and
    its rules (the partitioning can change the order of a sum), the batch size and jax's version."""
    digest = hashlib.sha256(
        json.dumps(
            [dict(layout.mesh.shape), sorted(layout.rules.items()), batch_size, jax.__version__], default=str
        ).encode()
    )
    for name, array in sorted(split.all_arrays().items()):
        digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
    for leaf in jax.tree.leaves(jax.device_get(params)):
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def add_reference_logprobs(split: Split, graphdef, params, layout: sharding.Layout, batch_size: int,
                           cache_dir: str | None = None) -> None:
    """Store the reference's log-probs of every pair's two responses with the split (columns ``ref_chosen``
    and ``ref_rejected``; of unpaired examples, ``ref_response``): one jitted pass, each process feeding its
    block of every batch. With ``cache_dir`` (one process), a pass on the same inputs (``_cache_key``) is read
    back instead: the same numbers."""
    path = None
    if cache_dir is not None and jax.process_count() == 1:
        path = os.path.join(cache_dir, _cache_key(split, params, layout, batch_size) + ".npz")
        if os.path.exists(path):
            with np.load(path) as stored:
                split.add_columns({name: stored[name] for name in stored.files})
            return
    feed = Feed.of(layout, batch_size)
    sides = SIDES if "chosen" in split.examples[0] else ("response",)  # pairs, or unpaired examples

    def reference(params, batch):
        model = nnx.merge(graphdef, params)
        return pair_logprobs(model, batch) if sides == SIDES else (response_logprobs(model, batch),)

    forward = jax.jit(layout.traced(reference))
    local = {side: [] for side in sides}
    batches = tqdm(list(eval_rows(len(split), batch_size)), desc="reference log-probs", disable=not is_main_process(),
                   dynamic_ncols=True)
    for rows in batches:
        for side, logp in zip(sides, feed.take(forward(params, feed.put(split.arrays(rows[feed.local]))))):
            local[side].append(logp)
    columns = {f"ref_{side}": feed.gather(np.concatenate(local[side]))[:len(split)] for side in sides}
    split.add_columns(columns)
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial.npz"
        np.savez(partial, **columns)
        os.replace(partial, path)
