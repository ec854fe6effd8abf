"""Pure jitted steps: ``train_step(state, batch) -> (state, metrics)``, ``eval_step(params, batch, rng) -> sums``.

The model's graphdef is closed over (static); everything that changes is in the arguments. Jitted
with the shardings of the mesh, and the training state donated, so one step is one XLA program on
1 CPU or many devices alike.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax import sharding
from rlhf_jax.config import TrainConfig
from rlhf_jax.optim import clipped_adam
from rlhf_jax.train_state import TrainState


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping (optax's chain, or fused: rlhf_jax/optim.py); linear warm-up to
    learning_rate, cosine decay to 0 at ``steps``; weight decay on matrices only."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                                  max(cfg.steps, cfg.warmup_steps + 1))
    return clipped_adam(schedule, max_norm=cfg.grad_clip, weight_decay=cfg.weight_decay,
                        decay_mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params), fused=cfg.fused_optimizer)


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_fn):
    def train_step(state: TrainState, batch: dict):
        rng, step_rng = jax.random.split(state.rng)

        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params), batch, step_rng)

        (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {name: value for name, value in metrics.items() if name != "confusion"}
        metrics["grad_norm"] = optax.global_norm(grads)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    return train_step


def make_eval_step(graphdef, loss_fn):
    def eval_step(params, batch: dict, rng):
        _, metrics = loss_fn(nnx.merge(graphdef, params), batch, rng)
        return {name: value for name, value in metrics.items() if name != "loss"}

    return eval_step


def optimizer_shardings(tx: optax.GradientTransformation, opt_state, params_sharding, mesh: Mesh):
    """Optimizer moments sharded like their parameters; counts and other non-parameter leaves replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, s: s, opt_state, params_sharding,
                                 transform_non_params=lambda _: replicated,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))


def train_state_shardings(state: TrainState, tx: optax.GradientTransformation, mesh: Mesh, rules: dict) -> TrainState:
    """Parameters by their logical axes; optimizer moments like their parameters; the rest replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = sharding.state_shardings(state.params, mesh, rules)
    return TrainState(step=replicated, params=params, opt_state=optimizer_shardings(tx, state.opt_state, params, mesh),
                      rng=replicated)


def jit_steps(graphdef, tx, loss_fn, state_sharding: TrainState, mesh: Mesh, rules: dict):
    """(train_step, eval_step) compiled with explicit shardings; the train state is donated."""
    batch = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def on_mesh(step):  # traced with the residual stream pinned to the batch split
        return sharding.with_activation_sharding(step, mesh, rules)

    train_step = jax.jit(on_mesh(make_train_step(graphdef, tx, loss_fn)), in_shardings=(state_sharding, batch),
                         out_shardings=(state_sharding, replicated), donate_argnums=0)
    eval_step = jax.jit(on_mesh(make_eval_step(graphdef, loss_fn)),
                        in_shardings=(state_sharding.params, batch, replicated), out_shardings=replicated)
    return train_step, eval_step

