"""Drivers: each runs one kind of experiment end to end (data, jitted steps, metrics, checkpoints,
plots), built on the maths and models below them. Only the command line imports them.

  supervised.py    the supervised trainer: SFT, classification, masked LM, reward-model tasks
  reward_training.py  collect feedback -> train a reward model -> evaluate it against labels and gold
  policy_training.py  RL of the policy against a reward (the algorithms of rlhf_jax.algorithms), its evaluation
  pipeline.py      rlhf-jax run: feedback -> reward model -> RL -> evaluation -> report.md
  rounds.py        rlhf-jax loop: rounds of sample -> label -> reward model on all feedback -> RL
"""
