"""Published weights converted into a bucket, probed there and taught from there (the Cloud
Storage emulator): a job on a pod reads its checkpoint from gs:// and leaves its results next to
it, with the numbers the same job gives on a local copy; bad paths are one line.

One tiny Hugging Face VideoMAE (random init, 2x8x8 tubelets on 8 frames of 64x64: the token
grid of the SALT :runlocal student) is converted from gs:// into gs://; a kNN probe job runs on
it and on a local copy, and SALT stage 2 trains two steps with it as the teacher.
"""

import json
import os
import subprocess
import sys

import jax
import pytest
from test_convert_cli import tiny_videomae_folder
from test_probe_cli import probe_cli

from vrl import api, convert, storage
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl.probe import data as probe_data
from vrl.probe import main as probe_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = "knn_motion_pretrained"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
SOURCE = {"name": "synthetic", "num_videos": 16, "frames": 16, "size": 64}


def hf_folder(folder) -> str:
    """A tiny VideoMAE that fits the SALT `:runlocal` student (64 px, 8 frames, 8x8 patches)."""
    return tiny_videomae_folder(folder, image_size=64, patch_size=8, num_frames=8)


def knn_job(workdir: str) -> None:
    """The probe job as a pod runs it (`python -m vrl.probe`, in a process of its own)."""
    result = probe_cli(
        "configs/probe/knn.py:source=synthetic",
        workdir,
        "--config.encoders=('pretrained',)",
        *(f"--config.data.source.{k}={v}" for k, v in SOURCE.items() if k != "name"),
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_bucket_run_is_converted_probed_and_teaches_salt(gcs_dir, tmp_path):
    src, teacher = f"{gcs_dir}/hf", f"{gcs_dir}/teacher"
    storage.copy(hf_folder(tmp_path / "hf"), src)
    convert.convert("hf_videomae", src, teacher)
    assert ckpt_lib.complete_steps(teacher) == [0]
    local = str(tmp_path / "teacher")
    storage.copy(teacher, local)

    # The probe job gives the same numbers from the bucket as from the local copy and leaves
    # its results in the bucket; the run's metrics.jsonl keeps its rows (objects are rewritten
    # whole, never appended to).
    earlier = {"step": 0, "earlier/row": 1.0}
    storage.write_atomic(f"{teacher}/metrics.jsonl", json.dumps(earlier) + "\n")
    knn_job(teacher)
    knn_job(local)
    out = storage.path(teacher) / "probe"
    record = json.loads((out / f"{PROBE}.json").read_text())
    with open(os.path.join(local, "probe", f"{PROBE}.json")) as f:
        assert record["metrics"] == json.load(f)["metrics"]
    assert record["checkpoint"] == teacher
    for picture in ("per_class", "confusion", "pca"):
        assert (out / f"{PROBE}_{picture}.png").read_bytes().startswith(b"\x89PNG")
    rows = storage.path(f"{teacher}/metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[0]) == earlier
    assert json.loads(rows[-1])[f"{PROBE}/top1"] == record["top1"]
    other = {**SOURCE, "size": 32}
    with pytest.raises(config_lib.ConfigError, match=f"{out}/{PROBE}.json holds results on other"):
        probe_data.check_results_kept(out, [PROBE], other, refuse=True)

    # SALT stage 2 with the bucket run as its teacher, which it holds unchanged.
    student = str(tmp_path / "student")
    result = subprocess.run(
        [sys.executable, "-m", "vrl.main", "--config=configs/salt_stage2_vitl_k710.py:runlocal",
         f"--config.objective.teacher_checkpoint={teacher}", "--config.total_steps=2",
         f"--workdir={student}", "--cpu_devices=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    held = jax.device_get(api.load_encoder(student, which="teacher").variables)
    original = jax.device_get(api.load_encoder(teacher).variables)
    assert ckpt_lib.digest(held) == ckpt_lib.digest(original)


def test_bad_bucket_paths_are_one_line(gcs_server, tmp_path):
    result = probe_cli("configs/probe/knn.py", "gs://no-such-bucket/run")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "vrl.probe: --config.checkpoint gs://no-such-bucket/run: bucket gs://no-such-bucket "
        "does not exist"
    ), result.stderr[-3000:]
    with pytest.raises(storage.StorageError, match="--config.checkpoint 'gs:/vrl-test/run'"):
        probe_main.run_job({"checkpoint": "gs:/vrl-test/run"})
    with pytest.raises(storage.StorageError, match="--workdir 'gs:/vrl-test/w' is not a valid"):
        convert.convert("hf_videomae", str(tmp_path), "gs:/vrl-test/w")
    with pytest.raises(convert.ConversionError, match="gs://vrl-test/none: no such file"):
        convert.read("hf_videomae", "gs://vrl-test/none")
