"""Weights & Biases as an option (RLHF_JAX_WANDB): a tiny run logged in offline mode holds every metric of its
metrics.jsonl, its config, and a report attached afterwards; read back from W&B's own transaction log."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest
from conftest import CONFIGS

from rlhf_jax import metrics

pytest.importorskip("wandb")


def wandb_records(run_file: str) -> list:
    """The protobuf records of a ``run-*.wandb`` file: a 7-byte header, then LevelDB-log blocks of 32 KiB,
    each record chunk behind a 7-byte header (crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block = open(run_file, "rb").read(), 32768
    position, chunks, pending = 7, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        position += 7
        if kind == 0 and length == 0:  # the zero-filled end of a block
            position += left - 7
            continue
        chunk, position = data[position:position + length], position + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            chunks.append(pending)
    records = []
    for chunk in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        records.append(record)
    return records


def logged(directory: str) -> tuple[list[dict], list[str], dict]:
    """(history rows, attached file names, config) of every offline run under ``directory/wandb``."""
    rows, files, config = [], [], {}
    for run_file in sorted(glob.glob(os.path.join(directory, "wandb", "offline-run-*", "run-*.wandb"))):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            elif kind == "files":
                files += [f.path for f in record.files.files]
            elif kind == "config":
                config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                               for item in record.config.update})
    return rows, files, config


def test_an_offline_run_holds_every_metric_its_config_and_the_report(tmp_path):
    env = {**os.environ, metrics.WANDB: "offline", "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, "-m", "rlhf_jax.cli", "train", "--config",
                             os.path.join(CONFIGS, "tiny_cls.py"), "--workdir", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, files, config = logged(str(tmp_path))
    expected = metrics.read_metrics(str(tmp_path))
    assert len(expected) >= 4 and {r["split"] for r in expected} >= {"train", "validation", "test"}
    for row in expected:  # every number of metrics.jsonl, at its step, under split/name
        assert any(r.get("step") == row["step"] and all(r.get(f"{row['split']}/{k}") == pytest.approx(v)
                                                          for k, v in row.items() if k not in ("step", "split"))
                   for r in rows), row
    assert "config.json" in files and config["train"]["steps"] == 8 and config["model"]["head"] == "classification"
    (tmp_path / "report.md").write_text("# report\n")
    os.environ[metrics.WANDB] = "offline"
    try:
        metrics.attach(str(tmp_path), str(tmp_path / "report.md"))
    finally:
        del os.environ[metrics.WANDB]
    assert "report.md" in logged(str(tmp_path))[1]
    ids = {os.path.basename(p).split("-")[-1] for p in glob.glob(str(tmp_path / "wandb" / "offline-run-*"))}
    assert len(ids) == 1  # one W&B run for the workdir, resumed: its id is the workdir's


def test_without_the_variable_nothing_is_logged_to_wandb(tmp_path, monkeypatch):
    monkeypatch.delenv(metrics.WANDB, raising=False)
    writer = metrics.MetricsWriter(str(tmp_path))
    writer.write(0, "train", {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "wandb").exists() and metrics.read_metrics(str(tmp_path))[0]["loss"] == 1.0


def test_a_bad_mode_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(metrics.WANDB, "sometimes")
    with pytest.raises(ValueError, match="RLHF_JAX_WANDB='sometimes'"):
        metrics.wandb_mode()
