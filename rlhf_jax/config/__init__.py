"""Frozen, validated configuration dataclasses, each field with its default and a one-line doc.

Experiment configs are ml_collections ``ConfigDict`` files (``configs/*.py``) that set only what differs
from these defaults; where they meet the code they become the dataclasses, so a bad value fails at start
with a message that names the field instead of deep inside a jitted function.

  core.py        ConfigError, field(default, doc), the checks
  model.py       ModelConfig (one transformer), MeshConfig (devices and sharding rules)
  experiment.py  the sections of an experiment: ModelSpec, DataConfig, TrainConfig, FeedbackConfig, RLConfig
  comparison.py  CompareConfig: the arms and seeds of a comparison (configs/compare_*.py)
  loading.py     load_config, load_run_config (file + overrides), experiment_from_dict, to_dict, describe
"""

from rlhf_jax.config.comparison import CompareConfig
from rlhf_jax.config.core import ConfigError, field
from rlhf_jax.config.experiment import (
                                        FEEDBACK_KINDS,
                                        SECTIONS,
    TASK_HEADS,
                                        DataConfig,
                                        ExperimentConfig,
                                        FeedbackConfig,
                                        ModelSpec,
                                        RLConfig,
                                        TrainConfig,
)
from rlhf_jax.config.loading import (
                                        added_at_default,
    check_same_run,
                                        describe,
                                        experiment_from_dict,
    first_difference,
                                        json_ready,
                                        load_config,
                                        load_run_config,
                                        parse_override,
                                        same_config,
                                        to_dict,
)
from rlhf_jax.config.model import DTYPES, FAMILIES, HEADS, POOLINGS, MeshConfig, ModelConfig

__all__ = [
    "CompareConfig",
    "ConfigError",
    "field",
    "FEEDBACK_KINDS",
    "SECTIONS",
    "TASK_HEADS",
    "DataConfig",
    "ExperimentConfig",
    "FeedbackConfig",
    "ModelSpec",
    "RLConfig",
    "TrainConfig",
    "added_at_default",
    "check_same_run",
    "describe",
    "first_difference",
    "experiment_from_dict",
    "json_ready",
    "load_config",
    "load_run_config",
    "parse_override",
    "same_config",
    "to_dict",
    "DTYPES",
    "FAMILIES",
    "HEADS",
    "POOLINGS",
    "MeshConfig",
    "ModelConfig",
]
