"""Online RL of a causal LM (PPO, the GRPO and REINFORCE families: the registry of ``rlhf_jax.rl.algorithms``)
as pure jitted functions: the actor-critic, its state, rollout and update.

One iteration is two XLA programs with a host step between them:

1. ``rollout(params, ref_params, prompt_ids_BxP, prompt_mask_BxP, key)``: sample N tokens with the
   KV-cache sampler, then (in M chunks of the update's minibatch shape) the policy's log-probs,
   entropies and values and the frozen reference's log-probs of those tokens.
2. host: decode the tokens, re-tokenise prompt and response for the reward model (its vocabulary
   may differ), score them (``rlhf_jax.scoring``), normalise with the reward model's gain and bias.
3. ``update(state, rollout, scores_B)``: per-token KL, the configured algorithm's advantages (PPO:
   KL-shaped rewards, GAE, whitening over the whole sharded batch; see ``rlhf_jax.rl.algorithms``), then
   ``epochs`` x ``minibatches`` Adam steps on its loss as a nested ``lax.scan``, and the KL
   controller's update. The state is donated.

Both are module-level functions of a static ``Programs`` (graphdefs, config, sampling) and arrays.

The log-probs of step 1 and of the update come from the same function on the same rows and shapes,
so with a learning rate of 0 the ratio is 1 up to float32 rounding (XLA compiles the two programs
separately; tests/test_ppo.py measures it) and the parameters do not move at all.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from rlhf_jax import sharding
from rlhf_jax.config import RLConfig
from rlhf_jax.models import lora
from rlhf_jax.models.heads import Model
from rlhf_jax.models.transformer import dense
from rlhf_jax.optim import clipped_adam
from rlhf_jax.rl import maths
from rlhf_jax.rl.algorithms import ALGORITHMS, Algorithm, Minibatch, PolicyOutputs
from rlhf_jax.sampling import SamplingConfig, sample
from rlhf_jax.steps import optimizer_shardings


class ActorCritic(nnx.Module):
    """The policy (a causal LM) and a value V(context) at every position.

    value_model None: a zero-initialised linear value head on the policy's own trunk (shared);
    otherwise a separate ``scalar`` model with per-token pooling ('none'), its head zeroed too, so
    V = 0 before training either way.
    """

    def __init__(self, policy: Model, value_model: Model | None = None, *, rngs: nnx.Rngs):
        self.policy = policy
        self.value_model = nnx.data(value_model)
        cfg = policy.config
        # Its [D, 1] kernel whole on every device, as the norms' [D] scales are ("norm"): split along D as the
        # trunk's weights are ("embed"), it drew the response positions' hidden states (a slice of the
        # batch-split residual stream) into a split along D, which XLA could only reach by replicating them.
        self.value_head = nnx.data(None if value_model is not None else dense(
            cfg.hidden_size, 1, ("norm", None), cfg, rngs=rngs, kernel_init=nnx.initializers.zeros_init()))
        if value_model is not None:
            value_model.head.score.kernel[...] = jnp.zeros_like(value_model.head.score.kernel[...])

    def response_outputs(self, ids_BxT, mask_BxT, prompt_len: int):
        """Logits and values at the positions that predict the response tokens ids[:, P:]: the
        hidden state at P - 1 + j predicts response token j. Returns (logits_BxNxV, values_BxN)."""
        hidden_BxTxD = self.policy.hidden_states(ids_BxT, mask_BxT)
        hidden_BxNxD = hidden_BxTxD[:, prompt_len - 1:-1]
        logits_BxNxV = self.policy.head(hidden_BxNxD, mask_BxT[:, prompt_len:], self.policy.backbone.token_embed)
        if self.value_head is not None:
            values_BxN = self.value_head(hidden_BxNxD)[..., 0]
        else:
            values_BxN = self.value_model(ids_BxT, mask_BxT)[:, prompt_len - 1:-1]
        return logits_BxNxV, values_BxN.astype(jnp.float32)


def reference_logits(reference: Model, ids_BxT, mask_BxT, prompt_len: int):
    hidden_BxTxD = reference.hidden_states(ids_BxT, mask_BxT)
    return reference.head(hidden_BxTxD[:, prompt_len - 1:-1], mask_BxT[:, prompt_len:], reference.backbone.token_embed)


def policy_outputs(model: ActorCritic, ids_BxT, mask_BxT, prompt_len: int, temperature: float):
    """(log pi of the response tokens, per-token entropy, values), each [B, N]: the one function that
    both the rollout and the update call, so that both compute the same numbers."""
    logits_BxNxV, values_BxN = model.response_outputs(ids_BxT, mask_BxT, prompt_len)
    logp_BxNxV = maths.log_softmax(logits_BxNxV, temperature)
    return maths.token_logprobs(logp_BxNxV, ids_BxT[:, prompt_len:]), maths.entropy(logp_BxNxV), values_BxN


@struct.dataclass
class PolicyState:
    step: jax.Array  # int32: iterations done (= prompt batches consumed)
    params: nnx.State  # the ActorCritic's parameters
    opt_state: optax.OptState
    kl_coef: jax.Array  # float32 beta, moved by the adaptive controller
    rng: jax.Array  # raw PRNG key, split every iteration

    @classmethod
    def create(cls, params, tx, cfg: RLConfig, trainable: lora.Trainable | None = None) -> PolicyState:
        """Adam's moments for the ``trainable`` parameters only (all of them when None)."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(lora.split(params, trainable)[0]),
                   kl_coef=jnp.asarray(cfg.kl_coef, jnp.float32), rng=jax.random.PRNGKey(cfg.seed))


@struct.dataclass
class Rollout:
    """One batch of experience; every array has the batch axis first (sharded like a batch)."""

    ids_BxT: jax.Array  # prompt (left-padded, P) then response (N)
    mask_BxT: jax.Array
    response_mask_BxN: jax.Array
    logp_BxN: jax.Array  # log pi_old(token)
    ref_logp_BxN: jax.Array
    values_BxN: jax.Array  # V_old
    entropy_BxN: jax.Array
    sampler_logp_BxN: jax.Array  # the sampler's own log-probs of the tokens (KV-cache decode), beside logp_BxN's

    def check_shapes(self, scores_B=None) -> None:
        """Trace-time (free) checks that every array has the batch axis B and [B, T] or [B, N] shapes."""
        rows, length = self.ids_BxT.shape
        chex.assert_shape(self.mask_BxT, (rows, length))
        chex.assert_equal_shape([self.response_mask_BxN, self.logp_BxN, self.ref_logp_BxN, self.values_BxN,
                                 self.entropy_BxN, self.sampler_logp_BxN])
        chex.assert_shape(self.response_mask_BxN, (rows, None))
        if scores_B is not None:
            chex.assert_shape(scores_B, (rows,))


def trainable_parameters(cfg: RLConfig) -> lora.Trainable | None:
    """With adapters: they, the value head and a separate value model train; None (all) otherwise."""
    return None if cfg.adapters is None else lora.Trainable(prefixes=(("value_head",), ("value_model",)))


def make_optimizer(cfg: RLConfig) -> optax.GradientTransformation:
    return clipped_adam(cfg.learning_rate, max_norm=cfg.grad_clip, eps=1e-5, fused=cfg.fused_optimizer)


def sampling_config(cfg: RLConfig, eos_token_id, pad_token_id) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.response_tokens, temperature=cfg.temperature, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id, logprobs=True)


def _chunked(fn, minibatches: int, *arrays):
    """fn over the batch in ``minibatches`` sequential chunks (``lax.map``), outputs re-joined."""
    chunks = [a.reshape((minibatches, a.shape[0] // minibatches) + a.shape[1:]) for a in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), chunks)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


@dataclasses.dataclass(frozen=True)
class Programs:
    """What the rollout and update programs are specialised on (static under ``jax.jit``)."""

    graphdef: object  # the ActorCritic's
    ref_graphdef: object  # None: the reference is the policy with its adapters off (LoRA)
    cfg: RLConfig
    sampling: SamplingConfig
    trainable: lora.Trainable | None = None  # None: every parameter trains

    def reference(self, params, ref_params) -> Model:
        """The frozen reference: its own model, or (LoRA) the policy's base with the adapters zeroed, which
        shares the base's arrays with the policy (one copy in memory)."""
        if self.ref_graphdef is None:
            return nnx.merge(self.graphdef, lora.adapters_off(params)).policy
        return nnx.merge(self.ref_graphdef, ref_params)

    @property
    def algorithm(self) -> Algorithm:
        return ALGORITHMS[self.cfg.algorithm]

    @property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(self.cfg)


def rollout(programs: Programs, params, ref_params, prompt_ids_BxP, prompt_mask_BxP, key) -> Rollout:
    """Sample the responses, then score them with the policy, its value function and the reference
    (in the update's minibatch chunks, so the update recomputes the same numbers)."""
    cfg = programs.cfg
    model: ActorCritic = nnx.merge(programs.graphdef, params)
    reference = programs.reference(params, ref_params)
    generation = sample(model.policy, prompt_ids_BxP, prompt_mask_BxP, key, programs.sampling)
    ids_BxT = jnp.concatenate([prompt_ids_BxP, generation.tokens_BxN], axis=1)
    mask_BxT = jnp.concatenate([prompt_mask_BxP, generation.response_mask_BxN], axis=1)
    prompt_len = prompt_ids_BxP.shape[1]

    def score(ids, mask):
        logp, entropy, values = policy_outputs(model, ids, mask, prompt_len, cfg.temperature)
        ref_logp_BxNxV = maths.log_softmax(reference_logits(reference, ids, mask, prompt_len), cfg.temperature)
        return logp, values, entropy, maths.token_logprobs(ref_logp_BxNxV, ids[:, prompt_len:])

    logp, values, entropy, ref_logp = _chunked(score, cfg.minibatches, ids_BxT, mask_BxT)
    mask_BxN = generation.response_mask_BxN.astype(jnp.float32)
    experience = Rollout(ids_BxT=ids_BxT, mask_BxT=mask_BxT, response_mask_BxN=mask_BxN, logp_BxN=logp * mask_BxN,
                         ref_logp_BxN=ref_logp * mask_BxN, values_BxN=values * mask_BxN, entropy_BxN=entropy,
                         sampler_logp_BxN=generation.logp_BxN * mask_BxN)
    experience.check_shapes()
    return experience


def minibatch_loss(programs: Programs, params, batch: Minibatch):
    """The configured algorithm's loss of one minibatch under ``params``; returns (loss, metrics)."""
    batch.check_shapes()
    model: ActorCritic = nnx.merge(programs.graphdef, params)
    prompt_len = batch.ids_BxT.shape[1] - batch.mask_BxN.shape[1]
    logp, entropy_BxN, values = policy_outputs(model, batch.ids_BxT, batch.mask_BxT, prompt_len,
                                               programs.cfg.temperature)
    outputs = PolicyOutputs(logp_BxN=logp, entropy_BxN=entropy_BxN, values_BxN=values)
    return programs.algorithm.loss(programs.cfg, outputs, batch)


def loss_mask_of(programs: Programs, experience: Rollout, scores_B):
    """(the mask of the tokens the loss sees, metrics): the response mask, less the groups of equal scores
    (``rl.dynamic_sampling``) and the truncated responses (``rl.mask_truncated``)."""
    cfg, mask = programs.cfg, experience.response_mask_BxN
    keep_B, metrics = jnp.ones_like(scores_B), {}
    if cfg.dynamic_sampling:
        informative_B = maths.informative_groups(scores_B, cfg.samples_per_prompt)
        keep_B, metrics["informative_fraction"] = keep_B * informative_B, jnp.mean(informative_B)
    if cfg.mask_truncated:
        truncated_B = maths.truncated(experience.ids_BxT[:, -mask.shape[1]:], mask, programs.sampling.eos_token_id)
        keep_B, metrics["truncated_fraction"] = keep_B * (1.0 - truncated_B), jnp.mean(truncated_B)
    return mask * keep_B[:, None], metrics


def update(programs: Programs, state: PolicyState, experience: Rollout, scores_B):
    """Per-token KL, the algorithm's advantages, then ``epochs`` x ``minibatches`` Adam steps (a nested
    ``lax.scan``), then the KL controller. Returns (new state, mean metrics)."""
    cfg, algorithm, tx = programs.cfg, programs.algorithm, programs.tx
    experience.check_shapes(scores_B)
    mask = experience.response_mask_BxN
    kl_BxN = maths.kl_per_token(experience.logp_BxN, experience.ref_logp_BxN, cfg.kl_estimator) * mask
    advantages, returns = algorithm.advantages(cfg, scores_B, kl_BxN, experience.values_BxN, mask, state.kl_coef)
    loss_mask, filter_metrics = loss_mask_of(programs, experience, scores_B)
    data = Minibatch(ids_BxT=experience.ids_BxT, mask_BxT=experience.mask_BxT, mask_BxN=loss_mask,
                     old_logp_BxN=experience.logp_BxN, old_values_BxN=experience.values_BxN, advantages=advantages,
                     returns_BxN=returns, ref_logp_BxN=experience.ref_logp_BxN)
    batch = scores_B.shape[0]

    trained, frozen = lora.split(state.params, programs.trainable)  # gradients for the trainable part only

    def loss_of(trained, minibatch):
        return minibatch_loss(programs, lora.merge(trained, frozen), minibatch)

    def minibatch_step(carry, minibatch):
        trained, opt_state = carry
        grads, metrics = jax.grad(loss_of, has_aux=True)(trained, minibatch)
        updates, opt_state = tx.update(grads, opt_state, trained)
        metrics["grad_norm"] = optax.global_norm(grads)
        return (optax.apply_updates(trained, updates), opt_state), metrics

    # The minibatches are the rollout's chunks (a random partition already: prompts come shuffled),
    # visited in a new random order every epoch: the same rows in the same shapes as the rollout's
    # forward, so the recomputed log-probs match the rollout's to rounding.
    chunks = jax.tree.map(lambda x: x.reshape((cfg.minibatches, -1) + x.shape[1:]), data)

    def epoch_step(carry, epoch_key):
        order = jax.random.permutation(epoch_key, cfg.minibatches)
        return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[order], chunks))

    (trained, opt_state), metrics_ExM = jax.lax.scan(epoch_step, (trained, state.opt_state),
                                                     jax.random.split(update_key(state.rng), cfg.epochs))
    params = lora.merge(trained, frozen)
    kl_B = jnp.sum(kl_BxN, axis=1)
    kl_coef = state.kl_coef
    if cfg.kl_target is not None:
        kl_coef = maths.adaptive_kl_coef(kl_coef, jnp.mean(kl_B), batch, cfg.kl_target, cfg.kl_horizon)
    metrics = {name: jnp.mean(value) for name, value in metrics_ExM.items()}
    metrics.update(
        score=jnp.mean(scores_B), kl=jnp.mean(kl_B), kl_coef=state.kl_coef,
        non_score_reward=jnp.mean(jnp.sum(-state.kl_coef * kl_BxN, axis=1)),
        entropy=maths.masked_mean(experience.entropy_BxN, mask), response_length=jnp.mean(jnp.sum(mask, axis=1)),
        first_ratio=metrics_ExM["ratio"][0, 0], **filter_metrics,
        **maths.logprob_mismatch(experience.sampler_logp_BxN, experience.logp_BxN, mask))
    if algorithm.uses_critic:
        metrics.update(value=maths.masked_mean(experience.values_BxN, mask), returns=maths.masked_mean(returns, mask),
                       explained_variance=maths.explained_variance(experience.values_BxN, returns, mask))
    new_state = PolicyState(step=state.step + 1, params=params, opt_state=opt_state, kl_coef=kl_coef,
                         rng=jax.random.fold_in(state.rng, 2))
    return new_state, metrics


@dataclasses.dataclass(frozen=True)
class CompiledPrograms:
    """The compiled rollout and update of one setup."""

    rollout: callable
    update: callable


def state_shardings(state: PolicyState, tx, layout: sharding.Layout, trainable: lora.Trainable | None = None):
    replicated = layout.replicated
    params = layout.shardings(state.params)
    return PolicyState(
        step=replicated,
        params=params,
        opt_state=optimizer_shardings(tx, state.opt_state, lora.split(params, trainable)[0], layout),
        kl_coef=replicated,
        rng=replicated,
    )


def jit_functions(programs: Programs, state_sharding: PolicyState, ref_sharding,
                  layout: sharding.Layout) -> CompiledPrograms:
    """Compile rollout and update with explicit shardings: parameters by logical axes, experience along
    the batch axis, the policy state donated to the update."""
    batch, replicated = layout.batch, layout.replicated
    return CompiledPrograms(
        rollout=layout.jit(functools.partial(rollout, programs), out_shardings=batch,
                           in_shardings=(state_sharding.params, ref_sharding, batch, batch, replicated)),
        update=layout.jit(functools.partial(update, programs), in_shardings=(state_sharding, batch, batch),
                          out_shardings=(state_sharding, replicated), donate_argnums=0))


def with_seed_axis(shardings):
    """Shardings of a leading seed axis (replicated along it) on top of each of ``shardings``."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), shardings)


def jit_seed_functions(programs: Programs, state_sharding: PolicyState, ref_sharding,
                       layout: sharding.Layout) -> CompiledPrograms:
    """``jit_functions`` for S seeds as one program (PureJaxRL-style): the state, prompts, keys, experience
    and scores carry a leading seed axis S and both steps are ``jax.vmap``-ed over it; the frozen reference
    is shared. Seed s computes what a run of seed s alone does, to float32 rounding (batched matmuls)."""
    batch, replicated = with_seed_axis(layout.batch), layout.replicated
    seeded_state = with_seed_axis(state_sharding)
    return CompiledPrograms(
        rollout=layout.jit(functools.partial(rollout, programs), vmap_axes=(0, None, 0, 0, 0), out_shardings=batch,
                           in_shardings=(seeded_state.params, ref_sharding, batch, batch, with_seed_axis(replicated))),
        update=layout.jit(functools.partial(update, programs), vmap_axes=0, in_shardings=(seeded_state, batch, batch),
                          out_shardings=(seeded_state, replicated), donate_argnums=0))


def rollout_key(rng):
    """The iteration's sampling key; the update takes ``update_key`` and moves the state's key on."""
    return jax.random.fold_in(rng, 0)


def update_key(rng):
    return jax.random.fold_in(rng, 1)
