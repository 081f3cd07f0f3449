"""A converted run directory is an ordinary run: every reader of checkpoints works on it.

One tiny Hugging Face `VideoMAEModel` (random init) is converted once per module; then the
probe CLI, `python -m vrl.checkpoint`, fine-tuning's `init_from` and a SALT teacher all read it.
The per-format parity tests are in test_convert_{videomae,vjepa,torchvision}.py.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from test_probe_cli import probe_cli

from vrl import api, convert, weights
from vrl import checkpoint as ckpt_lib
from vrl.convert import common
from vrl.objectives import base

transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}


def tiny_videomae_folder(folder, image_size=32, patch_size=16, num_frames=4) -> str:
    """A randomly initialised Hugging Face VideoMAE, saved as `save_pretrained` does."""
    config = transformers.VideoMAEConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_frames=num_frames,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    transformers.VideoMAEModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = tiny_videomae_folder(tmp_path_factory.mktemp("hf"))
    workdir = str(tmp_path_factory.mktemp("run") / "videomae")
    result = subprocess.run(
        [sys.executable, "-m", "vrl.convert", "--format=hf_videomae", f"--src={src}",
         f"--workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout
    return src, workdir


def test_dry_run_lists_the_mapping_and_writes_nothing(converted, tmp_path):
    src, _ = converted
    result = subprocess.run(
        [sys.executable, "-m", "vrl.convert", "--format=hf_videomae", f"--src={src}",
         f"--workdir={tmp_path / 'w'}", "--dry_run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embeddings.patch_embeddings.projection.weight" in result.stdout
    assert "params/encoder/embed/projection/kernel" in result.stdout
    assert "nothing written" in result.stdout
    assert not (tmp_path / "w").exists()


def test_refuses_a_workdir_that_holds_checkpoints(converted):
    src, workdir = converted
    with pytest.raises(common.ConversionError, match="already holds checkpoints"):
        convert.convert("hf_videomae", src, workdir)


def test_unknown_format_and_missing_source_are_one_line_errors(tmp_path):
    with pytest.raises(common.ConversionError, match="allowed: hf_videomae"):
        convert.read("onnx", str(tmp_path))
    with pytest.raises(common.ConversionError, match="missing"):
        convert.read("hf_videomae", str(tmp_path / "missing"))
    with pytest.raises(common.ConversionError, match="no such file"):
        convert.read("torchvision", str(tmp_path / "missing.pth"))
    result = subprocess.run(
        [sys.executable, "-m", "vrl.convert", "--format=videomae_pth",
         f"--src={tmp_path / 'x.pth'}", f"--workdir={tmp_path / 'w'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_checkpoint_cli_lists_step_0(converted):
    _, workdir = converted
    result = subprocess.run(
        [sys.executable, "-m", "vrl.checkpoint", workdir],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = result.stdout.strip().splitlines()[-1].split()
    params = api.load_encoder(workdir).variables["params"]
    count, sha = ckpt_lib.digest({"encoder": params})  # encoder_only: the encoder is all
    assert row == ["0", f"{count:,}", sha]


def test_linear_probe_cli_runs_on_the_converted_run(converted):
    _, workdir = converted
    result = probe_cli(
        "configs/probe/linear.py:source=synthetic",
        workdir,
        "--config.probe.epochs=5",
        "--config.data.source.num_videos=16",
        "--config.data.source.frames=8",
        "--config.data.source.size=32",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for encoder in ("pretrained", "random"):
        with open(os.path.join(workdir, "probe", f"linear_motion_{encoder}.json")) as f:
            assert 0.0 <= json.load(f)["top1"] <= 100.0


def test_fine_tuning_and_salt_start_from_the_converted_weights(converted):
    _, workdir = converted
    loaded = api.load_encoder(workdir)
    meta, _ = ckpt_lib.load_meta(workdir)
    batch = common.init_batch(base.build(meta["config"]), (4, 32, 32))

    finetune = base.build({**meta["config"], "objective": {
        "name": "supervised", "num_classes": 3, "init_from": workdir}})  # fmt: skip
    params, extra = jax.jit(lambda r: nn.meta.unbox(finetune.init(r, batch)))(jax.random.key(0))
    params, _ = weights.initial_variables(finetune, jax.device_get(params), jax.device_get(extra))
    np.testing.assert_array_equal(
        params["encoder"]["embed"]["projection"]["kernel"],
        loaded.variables["params"]["embed"]["projection"]["kernel"],
    )

    student = dict(meta["config"]["model"], depth=1)
    salt = weights.build_objective({"model": student, "objective": {
        "name": "salt", "teacher_checkpoint": workdir, "num_blocks": (1,),
        "block_scale": (0.3,), "predictor_depth": 1, "predictor_width": 16,
        "predictor_heads": 2}})  # fmt: skip
    salt_batch = common.init_batch(salt, (4, 32, 32))
    params, extra = jax.jit(lambda r: nn.meta.unbox(salt.init(r, salt_batch)))(jax.random.key(0))
    _, extra = weights.initial_variables(salt, jax.device_get(params), jax.device_get(extra))
    teacher = jax.tree.leaves(extra["teacher"])
    assert all(np.array_equal(a, b) for a, b in zip(teacher, jax.tree.leaves(loaded.variables)))
