"""Experiment configs: each file's ``get_config()`` returns an ml_collections ConfigDict that sets only what
differs from the defaults of ``rlhf_jax.config`` (``base.get_config()`` is the empty root) and builds on
other configs with ``from . import NAME``. ``rlhf-jax config show --config configs/X.py`` prints the
resolved values with their docs."""
