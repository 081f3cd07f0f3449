"""`python -m vrl.compile`: a recipe's train step compiled for a TPU topology on this CPU machine
(libtpu's compile-only client, requirements-tpu.txt)."""

import json
import os
import subprocess
import sys

import pytest

from vrl import compile as compile_lib

pytest.importorskip(
    "libtpu", reason="libtpu is not installed (pip install -r requirements-tpu.txt)"
)

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.mark.parametrize(
    "name, chips, topology_name",
    [
        ("v4-8", 4, "v4:2x2x1"),
        ("v5p-8", 4, "v5:2x2x1"),
        ("v5p-32", 16, "v5:2x2x4"),
        ("v5p-256", 128, "v5:4x4x8"),
        ("v5e-16", 16, "v5e:4x4"),
        ("v5litepod-16", 16, "v5e:4x4"),
        ("v5e-4", 4, "v5e:2x2"),
        ("v6e-8", 8, "v6e:2x4"),
        ("v6e-256", 256, "v6e:16x16"),
    ],
)
def test_topology_names_map_to_chip_grids(name, chips, topology_name):
    topology = compile_lib.parse_topology(name)
    assert topology.chips == chips
    assert topology.topology_name == topology_name


@pytest.mark.parametrize(
    "name, message",
    [
        ("v5p-12", "v5p slices come in powers of two cores"),
        ("v5p-1", "v5p slices come in powers of two cores"),
        ("v3-8", "expected <type>-<size>"),
        ("tpu", "expected <type>-<size>"),
    ],
)
def test_bad_topology_names_are_one_line_errors(name, message):
    with pytest.raises(compile_lib.TopologyError, match=message):
        compile_lib.parse_topology(name)


def test_collectives_are_counted_with_their_result_bytes():
    hlo = """
  %all-reduce.3 = f32[1024,256]{1,0} all-reduce(f32[1024,256]{1,0} %p), replica_groups={}
  %all-reduce.4 = (f32[8]{0:T(128)}, bf16[4,4]{1,0}, /*index=2*/s32[2]{0}) all-reduce(%a, %b, %c)
  %ag = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(bf16[8,128]{1,0} %x)
  %done = bf16[32,128]{1,0} all-gather-done(%ag)
  ROOT %rs = bf16[4,16]{1,0} reduce-scatter(bf16[16,16]{1,0} %y), dimensions={0}
  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b), metadata={op_name="all-reduce(x)"}
"""
    assert compile_lib.collectives(hlo) == {
        "all-reduce": {"count": 2, "bytes": 1024 * 256 * 4 + 8 * 4 + 16 * 2 + 2 * 4},
        "all-gather": {"count": 1, "bytes": 32 * 128 * 2},  # once, at the -done op
        "reduce-scatter": {"count": 1, "bytes": 4 * 16 * 2},
    }


def compile_cli(tmp_path, *args, timeout=600):
    out = tmp_path / "plan.json"
    result = subprocess.run(
        [sys.executable, "-m", "vrl.compile", f"--json={out}", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    return result, out


def test_a_recipe_compiles_for_a_v5p_8_and_reports_its_plan(tmp_path):
    # A ViT recipe: XLA compiles tiny 3-D convolutions for TPU slowly (a minute for R3D).
    result, out = compile_cli(
        tmp_path, "--config=configs/videomae_vitb_k400.py:runlocal", "--topology=v5p-8"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "v5p-8 (v5:2x2x1, 1 slice(s), 4 chips)" in result.stdout
    assert "HBM per chip:" in result.stdout and "Roofline step time >=" in result.stdout
    plan = json.loads(out.read_text())
    assert plan["fits"] and plan["chips"] == 4
    assert plan["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
    hbm = plan["per_chip_hbm_bytes"]
    assert 0 < hbm["total"] < hbm["capacity"] == 95 * 2**30
    assert hbm["arguments"] > 0 and hbm["temporaries"] > 0
    # The data-parallel step all-reduces its gradients (about 0.6 MB here) across the chips.
    assert plan["collectives"]["all-reduce"]["bytes"] > 100_000
    assert plan["flops_per_chip"]["xla"] > 0 and plan["flops_per_chip"]["analytic"] > 0
    assert 0 < plan["roofline"]["best_mfu"] <= 1


def test_a_step_too_big_for_hbm_is_one_line_and_exit_1(tmp_path):
    result, _ = compile_cli(
        tmp_path,
        "--config=configs/quickstart.py:runlocal",  # R3D: XLA runs out of HBM before it compiles
        "--topology=v5e-4",
        "--config.data.batch_size=65536",
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("does not fit on v5e-4: ") and "RESOURCE_EXHAUSTED" in last


def test_a_bad_topology_is_a_config_error(tmp_path):
    result, _ = compile_cli(tmp_path, "--config=configs/quickstart.py:runlocal", "--topology=v9-8")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("config error: --topology='v9-8'")
