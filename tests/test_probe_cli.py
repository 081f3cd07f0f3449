"""`python -m vrl.probe` runs each frozen-feature probe kind from its config file."""

import json
import os
import subprocess
import sys

import pytest
from test_probe_checkpoint import fresh_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe_cli(config: str, workdir: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vrl.probe",
            f"--config={config}",
            f"--config.checkpoint={workdir}",
            "--config.label_sets=('motion',)",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"},
    )


@pytest.mark.parametrize(
    "kind,overrides,encoders",
    [
        ("linear", ["--config.probe.epochs=10"], ("pretrained", "random")),
        (
            "knn",
            ["--config.encoders=('pretrained',)", "--config.test_views=(2, 1)"],
            ("pretrained",),
        ),
        (
            "attentive",
            [
                "--config.probe.epochs=2",
                "--config.probe.lrs=(1e-3, 1e-2)",
                "--config.probe.weight_decays=(0.01,)",
            ],
            ("pretrained",),
        ),
    ],
)
def test_cli_runs_each_kind(tmp_path, kind, overrides, encoders):
    workdir = fresh_copy(tmp_path)
    result = probe_cli(f"configs/probe/{kind}.py", workdir, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Probe results" in result.stdout
    for encoder in encoders:
        name = f"{kind}_motion_{encoder}"
        assert name in result.stdout
        with open(os.path.join(workdir, "probe", f"{name}.json")) as f:
            record = json.load(f)
        metrics = record["metrics"]
        assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0
        assert metrics["num_test"] == 16
        assert os.path.exists(os.path.join(workdir, "probe", f"{name}_confusion.png"))
    if kind == "attentive":
        assert [p["lr"] for p in metrics["probes"]] == [1e-3, 1e-2]
    if kind == "knn":
        assert record["test_pp"].startswith("multiview_clips(num_clips=2")


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    result = probe_cli("configs/probe/knn.py", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("vrl.probe: no checkpoint directory")


def test_cli_override_mistakes_are_one_line_and_exit_2(tmp_path):
    result = probe_cli("configs/probe/linear.py", str(tmp_path), "--config.probe.epochz=3")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("vrl.probe: config.probe.epochz: unknown key; allowed: batch_size")
    assert "Traceback" not in result.stderr
