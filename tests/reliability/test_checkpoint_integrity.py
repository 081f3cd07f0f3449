"""A checkpoint whose files differ from what was saved is never trained on or probed.

Every save records the sha256 of each file it wrote (`checksums.json` in the step directory);
a resume sets aside damaged steps (one warning naming the step and the file) and continues from
the newest step that verifies; `python -m vrl.checkpoint WORKDIR --verify` lists every step; a
probe on a damaged step fails in one line. Steps saved before checksums existed restore with a
warning. The damage is real: a flipped byte in an array file, an emptied iterator state, a
deleted state folder, on checkpoints written by a real `python -m vrl.main` process.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
import runs

from vrl import checkpoint as ckpt_lib
from vrl import checksums

STEPS = 6
KEEP = ("--config.ckpt.keep=5",)  # steps 2-6 kept: three to damage, two below them


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished run of STEPS steps (steps 2..6 kept) and the digest of its final parameters."""
    workdir = str(tmp_path_factory.mktemp("integrity") / "run")
    runs.finish(workdir, *KEEP, steps=STEPS)
    return workdir, runs.digest(workdir, STEPS)


def copy(saved, tmp_path) -> str:
    target = str(tmp_path / "run")
    shutil.copytree(saved[0], target)
    return target


def step_dir(workdir: str, step: int) -> str:
    return os.path.join(ckpt_lib.directory(workdir), str(step))


def flip_byte(workdir: str, step: int) -> str:
    """Flips one bit in the largest array file of `step`; returns its path in the step."""
    files = glob.glob(os.path.join(step_dir(workdir, step), "state", "ocdbt.process_0", "d", "*"))
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    return os.path.relpath(path, step_dir(workdir, step))


def empty_iterator(workdir: str, step: int) -> str:
    name = os.path.join("data", "process_0-of-1.json")
    open(os.path.join(step_dir(workdir, step), name), "w").close()
    return name


def delete_state(workdir: str, step: int) -> str:
    shutil.rmtree(os.path.join(step_dir(workdir, step), "state"))
    return "state/"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=runs.ROOT, env=runs.environment(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def verify_cli(workdir: str) -> subprocess.CompletedProcess:
    return cli("-m", "vrl.checkpoint", workdir, "--verify")


def probe_cli(workdir: str, *overrides: str) -> subprocess.CompletedProcess:
    return cli(
        "-m", "vrl.probe", "--config=configs/probe/knn.py", f"--config.checkpoint={workdir}",
        "--config.encoders=('pretrained',)", "--config.label_sets=('motion',)",
        "--config.plots=False", *overrides,
    )  # fmt: skip


# --- The manifest itself (no training) ------------------------------------------------------


def test_manifest_names_the_first_file_that_differs(tmp_path):
    step = tmp_path / "7"
    (step / "state" / "d").mkdir(parents=True)
    (step / "state" / "d" / "a").write_bytes(b"x" * 1000)
    (step / "data").mkdir()
    (step / "data" / "it.json").write_text('{"next": 8}')
    checksums.write(str(step))
    assert checksums.verify(str(step)) == checksums.Result("ok", "2 files")
    (step / ckpt_lib.COMMIT_MARKER).write_text("written after the manifest: not covered")
    assert checksums.verify(str(step)).ok

    (step / "state" / "d" / "a").write_bytes(b"x" * 999 + b"y")
    assert checksums.verify(str(step)).detail == (
        "state/d/a: sha256 differs from the one recorded at save"
    )
    assert checksums.verify(str(step), under="data").ok  # a loader of one item reads only it
    (step / "data" / "it.json").write_text("")
    assert checksums.verify(str(step)).detail == (
        "data/it.json: 0 bytes, 11 recorded at save (and 1 more files)"
    )
    shutil.rmtree(step / "state")
    assert checksums.verify(str(step), under="state").detail == "state/d/a: missing"
    (step / checksums.MANIFEST).write_text("{")
    assert checksums.verify(str(step)) == checksums.Result(
        "damaged", "checksums.json is unreadable (JSONDecodeError)"
    )
    os.remove(step / checksums.MANIFEST)
    assert checksums.verify(str(step)).status == "unverified"


def test_the_reader_cache_notices_a_change(tmp_path):
    step = tmp_path / "3"
    step.mkdir()
    (step / "f").write_bytes(b"\0" * 64)
    checksums.write(str(step))
    assert checksums.verify_cached(str(step)).ok
    assert checksums.verify_cached(str(step)).detail == "verified earlier in this process"
    with open(step / "f", "r+b") as f:  # same size, same second: the mtime in ns differs
        f.write(b"\1")
    assert checksums.verify_cached(str(step)).status == "damaged"


def test_a_synchronous_save_gets_a_manifest_too(tmp_path):
    """Converters save synchronously through `save_items`; the step verifies after its commit."""
    workdir = str(tmp_path)
    mngr = ckpt_lib.manager(workdir, ckpt_lib.CheckpointConfig(async_save=False))
    items = {
        ckpt_lib.STATE: ocp.args.PyTreeSave({"params": {"w": np.arange(6.0)}}),
        ckpt_lib.CONFIG: ocp.args.JsonSave({"config": {}}),
    }
    assert ckpt_lib.save_items(mngr, 0, items, force=True)
    mngr.close()
    assert checksums.verify(step_dir(workdir, 0)).ok
    assert ckpt_lib.main(["vrl.checkpoint", workdir, "--verify"]) == 0


# --- Real runs -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resume_sets_damaged_steps_aside_and_continues_from_the_newest_that_verifies(
    saved, tmp_path
):
    workdir = copy(saved, tmp_path)
    damaged = {6: flip_byte(workdir, 6), 5: empty_iterator(workdir, 5), 4: delete_state(workdir, 4)}

    listed = verify_cli(workdir)
    assert listed.returncode == 1, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("step 2: ok (") and lines[1].startswith("step 3: ok (")
    assert lines[2].startswith(f"step 4: damaged ({damaged[4]}")
    assert lines[3] == f"step 5: damaged ({damaged[5]}: 0 bytes, 23 recorded at save)"
    assert (
        lines[4] == f"step 6: damaged ({damaged[6]}: sha256 differs from the one recorded at save)"
    )
    assert listed.stderr.strip().splitlines()[-1].startswith("3 of 5 steps damaged")

    rerun = runs.finish(workdir, *KEEP, steps=STEPS)
    log = rerun.output()
    warnings = [line for line in log.splitlines() if "is damaged" in line]
    assert len(warnings) == 3, warnings
    for step, name in damaged.items():
        (line,) = [w for w in warnings if f"Checkpoint step {step} is damaged" in w]
        assert name in line and "not restored; moved" in line
    assert "Resumed from step 3 in" in log
    aside = sorted(os.listdir(os.path.join(workdir, ckpt_lib.DAMAGED)))
    assert [int(n.split("-")[0]) for n in aside] == [4, 5, 6]
    # Steps 4-6 trained again from step 3: the weights of the run that was never damaged.
    assert runs.digest(workdir, STEPS) == saved[1]
    again = verify_cli(workdir)
    assert again.returncode == 0 and again.stdout.count(": ok (") == 5, again.stdout


@pytest.mark.slow
def test_a_probe_on_a_damaged_step_fails_in_one_line(saved, tmp_path):
    workdir = copy(saved, tmp_path)
    name = flip_byte(workdir, STEPS)
    probed = probe_cli(workdir)
    assert probed.returncode == 2, probed.stderr[-3000:]
    last = probed.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"vrl\.probe: checkpoint step {STEPS} in \S+ is damaged \({re.escape(name)}: sha256 "
        r"differs from the one recorded at save\); not restored; .*--verify` lists the steps "
        r"that verify",
        last,
    ), last
    assert "Traceback" not in probed.stderr
    assert os.path.isdir(step_dir(workdir, STEPS))  # a reader moves nothing


@pytest.mark.slow
def test_a_probe_job_prints_its_table_once_and_no_read_only_notice(saved, tmp_path):
    workdir = copy(saved, tmp_path)
    probed = probe_cli(workdir)
    assert probed.returncode == 0, probed.stderr[-3000:]
    output = probed.stdout + probed.stderr
    assert "Given directory is read only" not in output
    assert output.count("Probe results") == 1, output[-3000:]
    assert "Probe results" in probed.stdout


@pytest.mark.slow
def test_steps_saved_before_checksums_restore_with_one_warning(saved, tmp_path, caplog):
    """Checkpoints of earlier code have no manifest: listed as not verified, restored with one
    warning per step, never refused or set aside. (New saves of a resumed run record theirs:
    the resume test above verifies the steps it saved again.)"""
    workdir = copy(saved, tmp_path)
    for step in range(2, STEPS + 1):
        os.remove(os.path.join(step_dir(workdir, step), checksums.MANIFEST))
    listed = verify_cli(workdir)
    assert listed.returncode == 0
    assert listed.stdout.count(": not verified (no checksums.json: saved before checksums)") == 5

    # What a resume does first (process 0), then a reader of the same step: one warning.
    assert ckpt_lib.set_aside_damaged(workdir) == []
    assert ckpt_lib.load_meta(workdir)[1] == STEPS
    assert runs.digest(workdir, STEPS) == saved[1]
    unverified = [r.getMessage() for r in caplog.records if "has no checksums.json" in r.message]
    assert unverified == [
        f"Checkpoint step {STEPS} in {ckpt_lib.directory(workdir)} has no checksums.json (saved "
        "before checksums were recorded): restored without verification."
    ]
