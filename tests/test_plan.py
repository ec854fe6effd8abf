"""``rlhf-jax plan``: per-device bytes of compiled steps from abstract shapes, checked against the bytes a
real run holds, and the 8B table on a 64-device mesh."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax import plan
from rlhf_jax.config import ConfigError, load_config
from rlhf_jax.feeding import Feed

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
FSDP8 = "--config.mesh.shape={'data': 1, 'fsdp': 8, 'tensor': 1}"


def held_on(device, tree) -> int:
    """Bytes of ``tree``'s arrays that ``device`` holds."""
    return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree) for shard in leaf.addressable_shards
               if shard.device == device)


def test_the_135m_plan_matches_the_bytes_a_real_8_device_run_holds(tmp_path, smollm2_dir):
    from rlhf_jax.runs import supervised

    exp = load_config(os.path.join(CONFIGS, "sft_smollm2_rt.py"), [FSDP8])
    _, (step,) = plan.plan(exp)
    run = supervised.prepare(exp, str(tmp_path), with_data=False)  # SmolLM2-135M's real weights on 8 devices
    run.checkpoints.close()
    batch = Feed.of(run.layout, exp.train.batch_size).put(
        jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), plan.abstract_batch(exp, exp.train.batch_size)))
    state, _ = run.train_step(run.state, batch)  # one real step: the state it leaves on each device
    for device in jax.devices():
        assert held_on(device, state.params) == pytest.approx(step.parameters, rel=0.1)
        assert held_on(device, state.opt_state) == pytest.approx(step.optimizer, rel=0.1)
    # The compiled step of the real run: the same temporaries as planned.
    real = run.train_step.lower(state, batch).compile().memory_analysis()
    assert real.temp_size_in_bytes == pytest.approx(step.temporaries, rel=0.1)
    assert step.parameters == pytest.approx(134_515_008 * 4 / 8, rel=0.01)  # SmolLM2-135M's parameters, float32


@pytest.mark.long
def test_the_lora_plan_matches_a_real_lora_run_and_drops_adam_for_the_base(tmp_path, smollm2_dir):
    """With model.lora the plan counts the adapters and Adam's moments of the adapters alone, as the real run
    on 8 devices holds them."""
    from rlhf_jax.models import lora
    from rlhf_jax.runs import supervised

    exp = load_config(os.path.join(CONFIGS, "sft_smollm2_rt.py"), [FSDP8, "--config.model.lora={'rank': 8}"])
    _, (step,) = plan.plan(exp)
    run = supervised.prepare(exp, str(tmp_path), with_data=False)
    run.checkpoints.close()
    trained = lora.split(run.state.params, lora.Trainable())[0]
    assert lora.parameter_count(trained) == 30 * 8 * (2 * (576 + 576) + 2 * (576 + 192) + 2 * (576 + 1536)
                                                      + (1536 + 576))
    for device in jax.devices():
        assert held_on(device, run.state.params) == pytest.approx(step.parameters, rel=0.1)
        assert held_on(device, run.state.opt_state) == pytest.approx(step.optimizer, rel=0.1)
    # A is split like the kernel's input axis (embed: fsdp), B like its output axis (heads / mlp: tensor, 1
    # here), so B is whole on every device of this mesh: the adapters' bytes per device are their own
    adapter_bytes = held_on(jax.devices()[0], trained)
    assert step.parameters == pytest.approx(134_515_008 * 4 / 8 + adapter_bytes, rel=0.01)
    assert step.optimizer == pytest.approx(2 * adapter_bytes, rel=0.01)  # Adam's moments: adapters only


def test_plan_prints_the_8b_table_on_64_simulated_devices():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "plan", "--config",
                          os.path.join(CONFIGS, "sft_smollm2_rt.py"), "--mesh", "data=1,fsdp=64,tensor=1",
                          "--shape", "llama3-8b", "--hbm", "95", "--config.train.batch_size=64",
                          "--config.data.max_length=256", "--config.model.config={'scan_layers': True}"],
                         env=env, capture_output=True, text=True, timeout=300)  # scanned: one block to compile
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("llama3-8b (causal_lm): 8.030 B parameters")
    assert any(line.startswith("| parameters |") for line in lines) and "fits 95 GiB" in out.stdout
    (train,) = json.loads(lines[-1])["steps"]
    assert train["parameters"] == pytest.approx(8.03e9 * 4 / 64, rel=0.01)  # float32, each device 1/64
    assert train["optimizer"] == pytest.approx(2 * train["parameters"], rel=0.01)  # Adam's two moments
    assert train["total"] >= train["parameters"] + train["optimizer"] + train["temporaries"]
    load = json.loads(lines[-1])["load"]  # one host: it reads every shard of its 64 devices, each once
    assert load["hosts"] == 1 and load["host_reads"] == load["model_bytes"] == pytest.approx(8.03e9 * 4, rel=0.01)
    assert load["per_chip"] == train["parameters"] and any(line.startswith("load (born sharded)") for line in lines)


def test_a_bad_mesh_or_shape_names_the_flag():
    with pytest.raises(ConfigError, match="--mesh 'data:2'"):
        plan.parse_mesh("data:2")
    exp = load_config(os.path.join(CONFIGS, "sft_smollm2_rt.py"), [FSDP8])
    with pytest.raises(ConfigError, match="--shape 'gpt5'"):
        plan.model_config(exp, "gpt5")


@pytest.mark.parametrize("remat", ["none", "full"])
def test_activations_stay_split_along_the_batch_as_devices_are_added(remat):
    """At a fixed batch per device, what one device computes on must not grow with the device count: the
    residual stream is pinned to the batch split (``sharding.constrain``). Without the pin XLA followed the
    parameters' FSDP split onto the activations (measured: SmolLM2-135M's temporaries 7.9 GiB on 8 devices,
    12.3 GiB on 16; pinned, 4.6 and 4.6)."""
    temporaries = []
    for devices in (4, 8):
        exp = load_config(
            os.path.join(CONFIGS, "tiny_sft.py"),
            [
                f"--config.mesh.shape={{'data': 1, 'fsdp': {devices}, 'tensor': 1}}",
                f"--config.train.batch_size={devices}",
                "--config.data.max_length=64",
                f"--config.model.config.remat={remat}",
            ],
        )
        temporaries.append(plan.plan(exp)[1][0].temporaries)
    assert temporaries[1] <= 1.1 * temporaries[0], temporaries


def test_plan_selects_the_cpu_platform_although_jax_is_already_imported():
    """`plan` compiles on simulated CPU devices: the platform is set through jax.config (the environment
    variable would be read too late, at jax's import), and JAX_PLATFORMS unset is not left to chance."""
    code = (
        "import jax, sys\nfrom rlhf_jax import cli\n"
        f"cli.main(['plan', '--config', {os.path.join(CONFIGS, 'tiny_cls.py')!r}, "
        "'--mesh', 'data=2,fsdp=1,tensor=1'])\n"
        "print('platforms', jax.config.jax_platforms, len(jax.devices('cpu')))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "platforms cpu 2"
