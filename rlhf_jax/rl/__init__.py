"""Reinforcement learning from human feedback, past the reward model's data: one folder.

  maths.py        pure functions of arrays: GAE, whitening, KL estimators, clipped losses, group baselines
  algorithms.py   the registry of policy-gradient algorithms: advantages, loss, whether a critic trains
  online.py       the actor-critic and its state; the rollout and update programs, jitted with shardings
  preference.py   DPO / IPO: pair sequences and the stored reference log-probs (tasks of rlhf_jax.tasks)
  reward.py       reward models on preferences and ratings: data, losses, normalisation, evaluation

maths and algorithms sit on the lowest floor (nothing of rlhf_jax but each other); the others build on the
models, data and sampler (tests/test_layout.py). This file imports nothing, so importing the registry from
the config does not load the programs.
"""
