"""PPO (and REINFORCE) for a causal LM as pure jitted functions: the actor-critic, its state, rollout
and update.

One iteration is two XLA programs with a host step between them:

1. ``rollout(params, ref_params, prompt_ids_BxP, prompt_mask_BxP, key)``: sample N tokens with the
   KV-cache sampler, then (in M chunks of the update's minibatch shape) the policy's log-probs,
   entropies and values and the frozen reference's log-probs of those tokens.
2. host: decode the tokens, re-tokenise prompt and response for the reward model (its vocabulary
   may differ), score them (``rlhf_jax.scoring``), normalise with the reward model's gain and bias.
3. ``update(state, rollout, scores_B, key)``: per-token KL penalty, score at the last token, GAE,
   advantage whitening over the whole (sharded) batch, then ``epochs`` x ``minibatches`` Adam steps
   on the clipped objective as a nested ``lax.scan``, and the KL controller's update. The state is
   donated. With ``algorithm='reinforce'`` the same program uses one advantage per sequence (the
   KL-regularised return minus a leave-one-out baseline, ``rl.reinforce_advantages``) and the plain
   score-function loss; the value head is left untouched.

The log-probs of step 1 and of the update come from the same function on the same rows and shapes,
so with a learning rate of 0 the ratio is 1 up to float32 rounding (XLA compiles the two programs
separately; tests/test_ppo.py measures it) and the parameters do not move at all.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlhf_jax import rl, sharding
from rlhf_jax.config import PPOConfig
from rlhf_jax.models.heads import Model
from rlhf_jax.models.transformer import dense
from rlhf_jax.sampling import SamplingConfig, sample


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
        self.value_head = nnx.data(None if value_model is not None else dense(
            cfg.hidden_size, 1, ("embed", None), cfg, rngs=rngs, kernel_init=nnx.initializers.zeros_init()))
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
    logp_BxNxV = rl.log_softmax(logits_BxNxV, temperature)
    return rl.token_logprobs(logp_BxNxV, ids_BxT[:, prompt_len:]), rl.entropy(logp_BxNxV), values_BxN


@struct.dataclass
class PPOState:
    step: jax.Array  # int32: PPO iterations done (= prompt batches consumed)
    params: nnx.State  # the ActorCritic's parameters
    opt_state: optax.OptState
    kl_coef: jax.Array  # float32 beta, moved by the adaptive controller
    rng: jax.Array  # raw PRNG key, split every iteration

    @classmethod
    def create(cls, params, tx, cfg: PPOConfig) -> "PPOState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
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


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate, eps=1e-5))


def sampling_config(cfg: PPOConfig, eos_token_id, pad_token_id) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.response_tokens, temperature=cfg.temperature, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id)


def _chunked(fn, minibatches: int, *arrays):
    """fn over the batch in ``minibatches`` sequential chunks (``lax.map``), outputs re-joined."""
    chunks = [a.reshape((minibatches, a.shape[0] // minibatches) + a.shape[1:]) for a in arrays]
    out = jax.lax.map(lambda xs: fn(*xs), chunks)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


@dataclasses.dataclass(frozen=True)
class PPOFunctions:
    """The compiled programs of one PPO setup (graphdefs and the config are static)."""

    rollout: callable
    update: callable


def make_functions(graphdef, ref_graphdef, cfg: PPOConfig, sampling: SamplingConfig) -> PPOFunctions:
    """Pure (unjitted) rollout and update functions; ``jit_functions`` compiles them with shardings."""
    tx = make_optimizer(cfg)

    def rollout(params, ref_params, prompt_ids_BxP, prompt_mask_BxP, key) -> Rollout:
        model: ActorCritic = nnx.merge(graphdef, params)
        reference: Model = nnx.merge(ref_graphdef, ref_params)
        generation = sample(model.policy, prompt_ids_BxP, prompt_mask_BxP, key, sampling)
        ids_BxT = jnp.concatenate([prompt_ids_BxP, generation.tokens_BxN], axis=1)
        mask_BxT = jnp.concatenate([prompt_mask_BxP, generation.response_mask_BxN], axis=1)
        prompt_len = prompt_ids_BxP.shape[1]

        def score(ids, mask):
            logp, entropy, values = policy_outputs(model, ids, mask, prompt_len, cfg.temperature)
            ref_logp_BxNxV = rl.log_softmax(reference_logits(reference, ids, mask, prompt_len), cfg.temperature)
            return logp, values, entropy, rl.token_logprobs(ref_logp_BxNxV, ids[:, prompt_len:])

        logp, values, entropy, ref_logp = _chunked(score, cfg.minibatches, ids_BxT, mask_BxT)
        mask_BxN = generation.response_mask_BxN.astype(jnp.float32)
        return Rollout(ids_BxT=ids_BxT, mask_BxT=mask_BxT, response_mask_BxN=mask_BxN, logp_BxN=logp * mask_BxN,
                       ref_logp_BxN=ref_logp * mask_BxN, values_BxN=values * mask_BxN, entropy_BxN=entropy)

    def minibatch_loss(params, batch):
        model: ActorCritic = nnx.merge(graphdef, params)
        prompt_len = batch["ids_BxT"].shape[1] - batch["mask_BxN"].shape[1]
        logp, entropy_BxN, values = policy_outputs(model, batch["ids_BxT"], batch["mask_BxT"], prompt_len,
                                                   cfg.temperature)
        mask = batch["mask_BxN"]
        entropy = rl.masked_mean(entropy_BxN, mask)
        pg_loss, pg_metrics = rl.policy_loss(logp, batch["old_logp_BxN"], batch["advantages_BxN"], mask, cfg.clip_ratio)
        if cfg.algorithm == "reinforce":  # PPO's ratio diagnostics are kept; its loss is not used
            pg_loss = rl.reinforce_loss(logp, batch["advantages_BxN"][:, 0], mask)
            loss = pg_loss - cfg.entropy_coef * entropy
            return loss, {"loss": loss, "policy_loss": pg_loss, **pg_metrics}
        vf_loss, vf_metrics = rl.value_loss(values, batch["old_values_BxN"], batch["returns_BxN"], mask,
                                            cfg.clip_value)
        loss = pg_loss + cfg.value_coef * vf_loss - cfg.entropy_coef * entropy
        return loss, {"loss": loss, "policy_loss": pg_loss, "value_loss": vf_loss, **pg_metrics, **vf_metrics}

    def update(state: PPOState, experience: Rollout, scores_B):
        mask = experience.response_mask_BxN
        kl_BxN = rl.kl_per_token(experience.logp_BxN, experience.ref_logp_BxN, cfg.kl_estimator) * mask
        if cfg.algorithm == "reinforce":  # one advantage per sequence, stored at every token; no critic
            advantages = rl.reinforce_advantages(scores_B, kl_BxN, mask, state.kl_coef)[:, None] * jnp.ones_like(mask)
            returns = jnp.zeros_like(mask)
        else:
            rewards_BxN = rl.shaped_rewards(scores_B, kl_BxN, mask, state.kl_coef)
            if cfg.whiten_rewards:
                rewards_BxN = rl.masked_whiten(rewards_BxN, mask, shift_mean=False)
            advantages, returns = rl.gae(rewards_BxN, experience.values_BxN, mask, cfg.gamma, cfg.lam)
            advantages = rl.masked_whiten(advantages, mask)
        data = {"ids_BxT": experience.ids_BxT, "mask_BxT": experience.mask_BxT, "mask_BxN": mask,
                "old_logp_BxN": experience.logp_BxN, "old_values_BxN": experience.values_BxN,
                "advantages_BxN": advantages, "returns_BxN": returns}
        batch = scores_B.shape[0]

        def minibatch_step(carry, minibatch):
            params, opt_state = carry
            grads, metrics = jax.grad(minibatch_loss, has_aux=True)(params, minibatch)
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics["grad_norm"] = optax.global_norm(grads)
            return (optax.apply_updates(params, updates), opt_state), metrics

        # The minibatches are the rollout's chunks (a random partition already: prompts come shuffled),
        # visited in a new random order every epoch: the same rows in the same shapes as the rollout's
        # forward, so the recomputed log-probs match the rollout's to rounding.
        chunks = jax.tree.map(lambda x: x.reshape((cfg.minibatches, -1) + x.shape[1:]), data)

        def epoch_step(carry, epoch_key):
            order = jax.random.permutation(epoch_key, cfg.minibatches)
            return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[order], chunks))

        (params, opt_state), metrics_ExM = jax.lax.scan(epoch_step, (state.params, state.opt_state),
                                                        jax.random.split(update_key(state.rng), cfg.epochs))
        kl_B = jnp.sum(kl_BxN, axis=1)
        kl_coef = state.kl_coef
        if cfg.kl_target is not None:
            kl_coef = rl.adaptive_kl_coef(kl_coef, jnp.mean(kl_B), batch, cfg.kl_target, cfg.kl_horizon)
        metrics = {name: jnp.mean(value) for name, value in metrics_ExM.items()}
        metrics.update(
            score=jnp.mean(scores_B), kl=jnp.mean(kl_B), kl_coef=state.kl_coef,
            non_score_reward=jnp.mean(jnp.sum(-state.kl_coef * kl_BxN, axis=1)),
            entropy=rl.masked_mean(experience.entropy_BxN, mask), response_length=jnp.mean(jnp.sum(mask, axis=1)),
            first_ratio=metrics_ExM["ratio"][0, 0])
        if cfg.algorithm == "ppo":
            metrics.update(value=rl.masked_mean(experience.values_BxN, mask), returns=rl.masked_mean(returns, mask),
                           explained_variance=rl.explained_variance(experience.values_BxN, returns, mask))
        new_state = PPOState(step=state.step + 1, params=params, opt_state=opt_state, kl_coef=kl_coef,
                             rng=jax.random.fold_in(state.rng, 2))
        return new_state, metrics

    return PPOFunctions(rollout=rollout, update=update)


def state_shardings(state: PPOState, tx, mesh: Mesh, rules: dict) -> PPOState:
    from rlhf_jax.steps import optimizer_shardings

    replicated = NamedSharding(mesh, PartitionSpec())
    params = sharding.state_shardings(state.params, mesh, rules)
    return PPOState(step=replicated, params=params, opt_state=optimizer_shardings(tx, state.opt_state, params, mesh),
                    kl_coef=replicated, rng=replicated)


def jit_functions(functions: PPOFunctions, state_sharding: PPOState, ref_sharding, mesh: Mesh,
                  rules: dict) -> PPOFunctions:
    """Compile with explicit shardings: parameters by logical axes, experience along the batch axis,
    the PPO state donated to the update."""
    batch = sharding.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    rollout = jax.jit(functions.rollout, in_shardings=(state_sharding.params, ref_sharding, batch, batch, replicated),
                      out_shardings=batch)
    update = jax.jit(functions.update, in_shardings=(state_sharding, batch, batch),
                     out_shardings=(state_sharding, replicated), donate_argnums=0)
    return PPOFunctions(rollout=rollout, update=update)


def rollout_key(rng):
    """The iteration's sampling key; the update takes ``update_key`` and moves the state's key on."""
    return jax.random.fold_in(rng, 0)


def update_key(rng):
    return jax.random.fold_in(rng, 1)
