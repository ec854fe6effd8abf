"""Configs: one source of defaults (the dataclasses), every field documented, configs a package, and
``rlhf-jax config show``."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from rlhf_jax import config
from rlhf_jax.config import SECTIONS, ConfigError, ModelConfig, load_config, to_dict

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


@pytest.mark.parametrize("cls", [*SECTIONS.values(), ModelConfig, config.ExperimentConfig, config.CompareConfig],
                         ids=lambda c: c.__name__)
def test_every_field_has_a_one_line_doc(cls):
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert doc and "\n" not in doc, f"{cls.__name__}.{f.name}"


def test_base_sets_no_value_so_the_dataclasses_are_the_only_defaults():
    base = load_config(os.path.join(CONFIGS, "tiny_cls.py")).train
    assert base.weight_decay == config.TrainConfig().weight_decay  # tiny_cls does not set it
    from rlhf_jax.config.loading import _config_module

    root = _config_module(os.path.join(CONFIGS, "base.py")).get_config().to_dict()
    assert root == {section: {} for section in ("model", "data", "train", "mesh")}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))), ids=os.path.basename)
def test_configs_build_on_each_other_without_editing_sys_path(path):
    assert "sys.path" not in open(path).read()


def test_config_show_prints_resolved_values_with_their_docs():
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "config", "show", "--config",
                             os.path.join(CONFIGS, "sentiment_quick.py"), "--config.ppo.iterations=3"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "  ppo.iterations = 3  # rollout + update iterations" in lines
    assert "  ppo.kl_coef = 0.03  # initial KL coefficient beta" in lines            # set by the config
    assert "  ppo.value_coef = 0.1  # weight of the value loss" in lines             # the dataclass default
    assert "  mesh.shape = {'data': -1, 'fsdp': 1, 'tensor': 1}" in result.stdout
    total = sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())
    assert sum(" = " in line for line in lines) == total


def test_a_checkpoint_from_before_a_field_existed_is_the_same_run_at_its_default():
    """Fields added to a section after a checkpoint was made (train.beta here) are taken at their default:
    an older workdir is reused, but not when the new field is set to something else."""
    from rlhf_jax.trained import check_same_run

    current = to_dict(load_config(os.path.join(CONFIGS, "tiny_cls.py")))
    saved = json.loads(json.dumps(current))
    del saved["train"]["beta"], saved["train"]["label_smoothing"]
    check_same_run(saved, current)
    changed = json.loads(json.dumps(current))
    changed["train"]["beta"] = 0.5
    with pytest.raises(ConfigError, match="train.beta"):
        check_same_run(saved, changed)


def test_a_saved_config_from_before_a_field_existed_is_the_same_config_at_its_default():
    """What decides whether a finished stage (its evaluation.json) is reused: equal configs, or a saved one
    lacking fields added since, when they are at their default now."""
    exp = load_config(os.path.join(CONFIGS, "tiny_ppo.py"))
    saved = to_dict(exp)
    del saved["ppo"]["reference"], saved["train"]["beta"]
    assert config.same_config(saved, exp) and config.same_config(to_dict(exp), exp)
    assert not config.same_config(saved, dataclasses.replace(exp, train=dataclasses.replace(exp.train, beta=0.5)))
    assert not config.same_config(saved, dataclasses.replace(exp, ppo=dataclasses.replace(exp.ppo, iterations=3)))
    saved["ppo"]["retired_field"] = 1  # a field this version no longer has: another config
    assert not config.same_config(saved, exp)
