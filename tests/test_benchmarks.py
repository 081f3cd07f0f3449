"""Benchmarks run at tiny sizes and print their tables; the analytic TokenLearner FLOP count.

Each benchmark runs as a user runs it (`python -m benchmarks.<name>`), in a subprocess with one
CPU device, so its absl flags and XLA settings are its own.
"""

import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from vrl import flops
from vrl.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(name: str, *args: str) -> str:
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # benchmarks time their own compiles
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"benchmarks.{name} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def tables(out: str) -> list[list[list[str]]]:
    """Every markdown table in the output: header and rows as lists of cells."""
    found, rows = [], []
    for line in [*out.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            found.append([rows[0], *rows[2:]])  # without the |---| line
            rows = []
    assert found, f"no table printed:\n{out}"
    return found


def table(out: str) -> list[list[str]]:
    """The first markdown table in the output."""
    return tables(out)[0]


def test_train_step_vs_torch_prints_its_table():
    pytest.importorskip(
        "torch", reason="PyTorch is an optional benchmark requirement (benchmarks/requirements.txt)"
    )
    out = run_benchmark("train_step_vs_torch", "--tiny", "--steps=1", "--cases=vit_s")
    header, *rows = table(out)
    assert "vrl / PyTorch" in header
    (row,) = rows
    assert row[0] == "vit_s"
    # Both sides ran: their step times, the ratio and the CPU seconds are all printed.
    assert float(row[header.index("PyTorch step (s)")]) > 0
    assert re.match(r"\*\*[\d.]+\*\* \([\d.]+ to [\d.]+\)", row[header.index("vrl / PyTorch")])
    vrl_params, torch_params = row[header.index("parameters vrl / PyTorch")].split(" / ")
    assert vrl_params == torch_params  # the same model on both sides
    assert row[header.index("goal <= 0.8")] in ("met", "NOT met")


def test_masked_speedup_prints_its_table():
    args = ("--size=Ti", "--batch=2", "--steps=1", "--frames=4", "--resolution=64")
    out = run_benchmark("masked_speedup", *args)
    header, unmasked, masked = table(out)
    assert header[:2] == ["variant", "tokens in encoder"]
    # 4x64x64 clip, tubelets 2x16x16: 2 x 4 x 4 = 32 tokens; the baseline hides one (a loss
    # needs a hidden token), a 90% tube mask keeps 4 of them.
    assert (unmasked[1], masked[1]) == ("31", "4")
    assert float(masked[2]) < float(unmasked[2])  # fewer GFLOP per step
    assert re.search(r"measured speedup [\d.]+x = [\d.]+ of the FLOP ratio", out)


def test_tokenlearner_speedup_prints_its_table():
    out = run_benchmark("tokenlearner_speedup", "--tiny", "--rounds=1", "--steps=1")
    header, plain, learned = table(out)
    assert header[:2] == ["variant", "tokens in last block"]
    # Tiny clip 4x32x32, patch 2x8x8: 2 x 4 x 4 = 32 tokens; 8 learned tokens per frame: 16.
    assert (plain[0], plain[1]) == ("ViT", "32")
    assert (learned[0], learned[1]) == ("ViT + TokenLearner", "16")
    flop_ratio = float(re.search(r"Analytic FLOP ratio ([\d.]+)x", out).group(1))
    assert flop_ratio == pytest.approx(float(plain[2]) / float(learned[2]), rel=0.05)
    assert re.search(r"measured speedup [\d.]+x", out)


def test_checkpointing_prints_its_table():
    out = run_benchmark("checkpointing", "--tiny", "--rounds=1")
    header, sync, async_, first, restore = table(out)
    names = [row[0] for row in (sync, async_, first, restore)]
    assert names == [
        "synchronous save",
        "async save",
        "first async save of a run",
        "restore (strict)",
    ]
    for row in (sync, async_, restore):
        assert float(row[header.index("MB/s")]) > 0
    # An async save cannot block for longer than it takes to finish.
    for row in (async_, first):
        assert float(row[1]) <= float(row[2])


@pytest.mark.slow
def test_prepare_beam_prints_local_and_beam_times_and_their_ratio():
    out = run_benchmark("prepare_beam", "--videos=4", "--seconds=1", "--rounds=1")
    header, *rows = table(out)
    assert header[0] == "runner" and [row[0] for row in rows] == ["local", "beam"], out
    assert re.search(r"Beam/local = \d+\.\d\d", out), out


def test_end_to_end_accounts_for_every_phase(tmp_path):
    out = run_benchmark("end_to_end", "--quick", f"--workdir={tmp_path}")
    (header, *rows), (_, *probes) = tables(out)
    assert sorted(name for name, _ in probes) == [
        f"linear_{labels}_{encoder}"
        for labels in ("appearance", "motion")
        for encoder in ("pretrained", "random")
    ]
    assert "Peak resident memory" in out
    assert header == ["phase", "metric", "seconds", "share"]
    recorded = {row[1]: row[2] for row in rows}
    for metric in (
        "time/setup",
        "time/compile",
        "time/steps",
        "time/data_wait",
        "time/ckpt",
        "time/eval",
    ):
        assert float(recorded[metric]) >= 0, f"{metric} was not recorded: {recorded[metric]}"
    total = float(rows[-1][2].strip("*"))
    assert sum(float(v) for v in recorded.values() if v.replace(".", "").isdigit()) <= total + 1


def tokenlearner_vit(layer: int | None, fuser: bool = False) -> vit.ViT:
    return vit.ViT(
        width=64,
        depth=4,
        heads=2,
        patch=(2, 8, 8),
        tokenlearner_layer=layer,
        tokenlearner_tokens=4,
        tokenfuser=fuser,
    )


def test_tokenlearner_flops_count_the_blocks_on_learned_tokens():
    grid = (4, 6, 6)  # t, h, w
    n, t, width, mlp, s = math.prod(grid), grid[0], 64, 256, 4
    plain = flops.vit_flops(tokenlearner_vit(None), n, n)
    embed = 2 * n * 2 * 8 * 8 * 3 * width
    learner = t * flops.tokenlearner_flops("1.1", 36, width, s)
    # After 2 of 4 blocks the last two run on t * S = 16 tokens.
    expected = (
        embed
        + 2 * flops.vit_block_flops(n, width, mlp)
        + learner
        + 2 * flops.vit_block_flops(t * s, width, mlp)
    )
    assert flops.tokenlearner_vit_flops(tokenlearner_vit(2), grid) == pytest.approx(expected)
    assert flops.tokenlearner_vit_flops(tokenlearner_vit(2), grid) < plain
    # Learning tokens after the last block adds the learner to the plain ViT.
    assert flops.tokenlearner_vit_flops(tokenlearner_vit(4), grid) == pytest.approx(plain + learner)
    # TokenFuser: a learner, a block on learned tokens and a fuser per later block.
    fused = flops.tokenlearner_vit_flops(tokenlearner_vit(2, fuser=True), grid)
    fuser = t * flops.tokenfuser_flops(36, width, s)
    assert fused == pytest.approx(expected + learner + 2 * fuser)


# The CPU fast path found by benchmarks/train_step_vs_torch.py computes the same attention.


@pytest.mark.parametrize("kv_length", [5, 7], ids=["self", "cross"])
def test_cpu_attention_matches_jax_reference(kv_length):
    q = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
    k, v = (jax.random.normal(jax.random.key(i), (2, kv_length, 3, 8)) for i in (1, 2))

    def loss(attention, q, k, v):
        return (attention(q, k, v) ** 2).sum()

    assert jax.default_backend() == "cpu"
    np.testing.assert_allclose(
        vit.dot_product_attention(q, k, v), jax.nn.dot_product_attention(q, k, v), atol=1e-5
    )
    ours = jax.grad(lambda *a: loss(vit.dot_product_attention, *a), argnums=(0, 1, 2))(q, k, v)
    reference = jax.grad(lambda *a: loss(jax.nn.dot_product_attention, *a), argnums=(0, 1, 2))(
        q, k, v
    )
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, atol=1e-4)
