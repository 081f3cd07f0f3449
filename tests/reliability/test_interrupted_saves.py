"""A checkpoint that was never completely written is never restored: the previous complete one
is used, and the incomplete one is named in the log and kept aside, not deleted.

Orbax writes `commit_success.txt` last; a step directory without it is incomplete. Here the
incomplete steps are made by hand on top of a real run: a copy of the latest step without its
marker and with a truncated array file, and an Orbax temporary directory.
"""

import os
import shutil
import signal

import pytest
import runs

from vrl import checkpoint as ckpt_lib


def make_partial_step(workdir: str, source_step: int, step: int) -> str:
    """`step` as a copy of `source_step` with the marker gone and one file cut in half."""
    root = ckpt_lib.directory(workdir)
    partial = os.path.join(root, str(step))
    shutil.copytree(os.path.join(root, str(source_step)), partial)
    os.remove(os.path.join(partial, ckpt_lib.COMMIT_MARKER))
    metadata = os.path.join(partial, "state", "_METADATA")
    with open(metadata, "r+b") as f:
        f.truncate(os.path.getsize(metadata) // 2)
    return partial


def test_complete_steps_and_is_complete(tmp_path):
    root = tmp_path / "checkpoints"
    for name, marker in (("1", True), ("2", False), ("3.orbax-checkpoint-tmp", True), ("x", True)):
        (root / name).mkdir(parents=True)
        if marker:
            (root / name / ckpt_lib.COMMIT_MARKER).write_text("done")
    assert ckpt_lib.complete_steps(str(tmp_path)) == [1]
    assert not ckpt_lib.is_complete(str(root / "3.orbax-checkpoint-tmp"))


@pytest.mark.slow
def test_a_hand_made_partial_step_and_a_torn_save_are_set_aside_and_reported(tmp_path, capsys):
    version = runs.code_version()
    workdir = str(tmp_path / "run")
    first = runs.Run(workdir)
    first.until(lambda: len(runs.complete_steps(workdir)) >= 3)
    first.signal(signal.SIGKILL)
    first.wait()
    for name in runs.saves_in_flight(workdir):  # a save the kill tore: not what this test is about
        shutil.rmtree(os.path.join(ckpt_lib.directory(workdir), name))
    good = runs.complete_steps(workdir)[-1]
    assert good < runs.STEPS - 2
    make_partial_step(workdir, good, good + 1)
    torn = os.path.join(ckpt_lib.directory(workdir), f"{good + 2}{ckpt_lib.TMP_MARKER}")
    shutil.copytree(os.path.join(ckpt_lib.directory(workdir), str(good)), torn)

    # Loaders that only read (probes, vrl.api, python -m vrl.checkpoint) skip the partial step.
    assert ckpt_lib.load_meta(workdir)[1] == good
    assert ckpt_lib.main(["vrl.checkpoint", workdir]) == 0
    listed = capsys.readouterr()
    assert f"step {good + 1}: incomplete (no commit_success.txt), skipped" in listed.err
    assert [int(line.split()[0]) for line in listed.out.splitlines()[1:]][-1] == good

    rerun = runs.finish(workdir)
    log = rerun.output()
    assert f"Checkpoint step {good + 1} is incomplete (no commit_success.txt): not restored" in log
    assert f"Deleted {torn}: a checkpoint save that was interrupted." in log
    assert f"Resumed from step {good} in" in log
    aside = os.listdir(os.path.join(workdir, ckpt_lib.INCOMPLETE))
    assert len(aside) == 1 and aside[0].startswith(f"{good + 1}-")
    kept = os.path.join(workdir, ckpt_lib.INCOMPLETE, aside[0])
    assert os.path.isdir(os.path.join(kept, "state")) and not ckpt_lib.is_complete(kept)
    runs.assert_same_run(workdir, version)
