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
                             os.path.join(CONFIGS, "sentiment_quick.py"), "--config.rl.iterations=3"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "  rl.iterations = 3  # rollout + update iterations" in lines
    assert "  rl.kl_coef = 0.03  # initial KL coefficient beta" in lines            # set by the config
    assert "  rl.value_coef = 0.1  # weight of the value loss" in lines             # the dataclass default
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
    del saved["rl"]["reference"], saved["train"]["beta"]
    assert config.same_config(saved, exp) and config.same_config(to_dict(exp), exp)
    assert not config.same_config(saved, dataclasses.replace(exp, train=dataclasses.replace(exp.train, beta=0.5)))
    assert not config.same_config(saved, dataclasses.replace(exp, rl=dataclasses.replace(exp.rl, iterations=3)))
    saved["rl"]["retired_field"] = 1  # a field this version no longer has: another config
    assert not config.same_config(saved, exp)


def test_the_section_once_called_ppo_still_loads(tmp_path):
    """Issue 25 renamed the ppo section rl: a config file, an override, a saved config.json and a comparison
    arm that say ppo mean rl; giving both names is an error naming them."""
    (tmp_path / "old.py").write_text(
        f"import sys; sys.path.insert(0, {os.path.dirname(CONFIGS)!r})\n"
        "from configs import tiny_ppo\n"
        "def get_config():\n"
        "    config = tiny_ppo.get_config().to_dict()\n"
        "    config['ppo'] = config.pop('rl')\n"
        "    config['ppo']['seed'] = 5\n"
        "    return config\n")
    new = load_config(os.path.join(CONFIGS, "tiny_ppo.py"), ["--config.rl.seed=7"])
    old = load_config(str(tmp_path / "old.py"), ["--config.ppo.iterations=3"])
    assert (old.rl.seed, old.rl.iterations) == (5, 3) and new.rl.seed == 7
    assert old == load_config(os.path.join(CONFIGS, "tiny_ppo.py"), ["--config.rl.seed=5", "--config.rl.iterations=3"])
    saved = to_dict(old)
    saved["ppo"] = saved.pop("rl")  # a config.json written before the rename
    assert config.same_config(saved, old) and config.experiment_from_dict(saved) == old
    saved["rl"] = saved["ppo"]
    with pytest.raises(ConfigError, match="'ppo'.*now called 'rl'"):
        config.experiment_from_dict(saved)
    compare = config.loading.comparison_from_dict({"arms": [("grpo", {"ppo": {"algorithm": "grpo"}})]})
    assert compare.arms == (("grpo", {"rl": {"algorithm": "grpo"}}),)


def test_a_workdir_from_before_the_rename_resumes_in_its_ppo_directory(tmp_path):
    from rlhf_jax.runs.policy_training import stage_dir

    assert stage_dir(str(tmp_path)) == str(tmp_path / "rl")
    (tmp_path / "ppo").mkdir()
    assert stage_dir(str(tmp_path)) == str(tmp_path / "ppo")
    (tmp_path / "rl").mkdir()
    assert stage_dir(str(tmp_path)) == str(tmp_path / "rl")


def test_every_task_has_a_head_and_every_head_a_task():
    from rlhf_jax.tasks import TASKS

    assert set(TASKS) == set(config.TASK_HEADS) and all(TASKS[n].name == n for n in TASKS)
    assert {TASKS[n].head for n in TASKS} <= set(config.HEADS)


@pytest.mark.parametrize("name,driver", [
    ("sentiment_quick.py", "rlhf"), ("dpo_quick.py", "preference"),
    ("compare_quick.py", "comparison"), ("rm_minilm_sentiment.py", "reward_model")])
def test_the_driver_follows_the_config_and_a_stated_one_must_be_it(name, driver):
    from rlhf_jax.config import load_run_config
    from rlhf_jax.runs import drivers

    exp, compare = load_run_config(os.path.join(CONFIGS, name))
    assert drivers.choose(exp, compare).name == driver == drivers.choose(exp, compare, driver).name
    other = next(d for d in drivers.DRIVERS if d != driver)
    with pytest.raises(ConfigError, match=f"--driver '{other}': this config runs the '{driver}' driver"):
        drivers.choose(exp, compare, other)
    with pytest.raises(ConfigError, match="not one of"):
        drivers.choose(exp, compare, "ppo")
