"""Pure jitted steps of the supervised trainer: ``train_step(graphdef, tx, loss_fn, state, batch) -> (state,
metrics)`` and ``eval_step(graphdef, loss_fn, params, batch, rng) -> sums``.

The leading arguments (the model's graphdef, the optimiser, the task's loss) are static, bound with
``functools.partial``; everything that changes is an array argument. ``jit_steps`` compiles them as
``rlhf_jax.rl.online`` compiles the rollout and update, through ``sharding.Layout.jit``: the mesh's
shardings, the training state donated, one XLA program on 1 CPU or many devices alike.
"""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from rlhf_jax import sharding
from rlhf_jax.config import TrainConfig
from rlhf_jax.models import lora
from rlhf_jax.optim import clipped_adam
from rlhf_jax.train_state import TrainState


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping (optax's chain, or fused: rlhf_jax/optim.py); linear warm-up to
    learning_rate, cosine decay to 0 at ``steps``; weight decay on matrices only."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                                  max(cfg.steps, cfg.warmup_steps + 1))
    return clipped_adam(schedule, max_norm=cfg.grad_clip, weight_decay=cfg.weight_decay,
                        decay_mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params), fused=cfg.fused_optimizer)


def train_step(graphdef, tx: optax.GradientTransformation, loss_fn, state: TrainState, batch: dict,
               trainable: lora.Trainable | None = None):
    """One optimiser step on ``loss_fn(model, batch, rng) -> (loss, metrics)`` of the ``trainable``
    parameters (None: all; else LoRA's adapters and a new head, the rest frozen); returns (state, metrics)."""
    rng, step_rng = jax.random.split(state.rng)
    trained, frozen = lora.split(state.params, trainable)

    def loss_of(trained):
        return loss_fn(nnx.merge(graphdef, lora.merge(trained, frozen)), batch, step_rng)

    (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trained)
    updates, opt_state = tx.update(grads, state.opt_state, trained)
    params = lora.merge(optax.apply_updates(trained, updates), frozen)
    metrics = {name: value for name, value in metrics.items() if name != "confusion"}
    metrics["grad_norm"] = optax.global_norm(grads)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics


def eval_step(graphdef, loss_fn, params, batch: dict, rng):
    """The loss's summed metrics on one batch (``losses.summarize`` turns their totals into means)."""
    _, metrics = loss_fn(nnx.merge(graphdef, params), batch, rng)
    return {name: value for name, value in metrics.items() if name != "loss"}


def optimizer_shardings(tx: optax.GradientTransformation, opt_state, params_sharding, layout: sharding.Layout):
    """Optimizer moments sharded like their parameters; counts and other non-parameter leaves replicated."""
    return optax.tree_map_params(tx, lambda _, s: s, opt_state, params_sharding,
                                 transform_non_params=lambda _: layout.replicated,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))


def train_state_shardings(state: TrainState, tx: optax.GradientTransformation, layout: sharding.Layout,
                          trainable: lora.Trainable | None = None) -> TrainState:
    """Parameters by their logical axes; optimizer moments like their (trainable) parameters; the rest
    replicated."""
    params = layout.shardings(state.params)
    return TrainState(step=layout.replicated, params=params, rng=layout.replicated,
                      opt_state=optimizer_shardings(tx, state.opt_state, lora.split(params, trainable)[0], layout))


def jit_steps(graphdef, tx, loss_fn, state_sharding: TrainState, layout: sharding.Layout,
              trainable: lora.Trainable | None = None):
    """(train_step, eval_step) compiled with explicit shardings, traced with the residual stream pinned to
    the batch split; the train state is donated."""
    batch, replicated = layout.batch, layout.replicated
    return (layout.jit(functools.partial(train_step, graphdef, tx, loss_fn, trainable=trainable),
                       in_shardings=(state_sharding, batch),
                       out_shardings=(state_sharding, replicated), donate_argnums=0),
            layout.jit(functools.partial(eval_step, graphdef, loss_fn),
                       in_shardings=(state_sharding.params, batch, replicated), out_shardings=replicated))

