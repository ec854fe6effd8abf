"""Drivers: each runs one kind of experiment end to end (data, jitted steps, metrics, checkpoints,
plots), built on the maths and models below them. Only the command line imports them.

  drivers.py          which driver ``rlhf-jax run`` runs for a config, and what its sections mean to it
  supervised.py       the supervised trainer: SFT, classification, masked LM, reward-model tasks
  reward_training.py  collect feedback -> train a reward model -> evaluate it against labels and gold
  policy_training.py  RL of the policy against a reward (the algorithms of rlhf_jax.rl.algorithms), its evaluation
  pipeline.py         rlhf-jax run: feedback -> reward model -> RL -> evaluation -> report.md
  preference_training.py  rlhf-jax run with train.task dpo / ipo: feedback -> DPO / IPO -> evaluation
  comparison.py       rlhf-jax run on a compare config: every arm from one start, seeds, the frontier
  parallel_seeds.py   an online arm's seeds as one vmapped program
  best_of_n.py        rlhf-jax best-of-n
  rounds.py           rlhf-jax loop: rounds of sample -> label -> reward model on all feedback -> RL
"""
