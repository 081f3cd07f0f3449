"""An unwritable workdir or a save that fails (disk full, permissions changed mid-run) is one
clear line and exit code 4; the checkpoints already written stay usable, and rerunning the
same command ends with the parameters of an uninterrupted run.

Both failures are real: "disk full" is the kernel's file-size limit lowered on the running
process (writes fail with EFBIG, as on a full quota), "read-only" is the checkpoint directory's
mode changed under it. Root ignores file modes, so as root the runs that need them are started
without the capabilities that let it (runs.WITHOUT_ROOT_OVERRIDE).
"""

import os
import resource
import stat

import pytest
import runs

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators

needs_file_modes = pytest.mark.skipif(
    not runs.can_drop_root_override(), reason="cannot drop root's file-mode override here"
)


def check_line(run: runs.Run, *parts: str) -> str:
    # Stripped: Orbax's threads may still be writing tracebacks to stderr as the line is printed.
    output = [ln.strip() for ln in run.output().splitlines()]
    lines = [ln for ln in output if ln.startswith("checkpoint error: ")]
    errors = [ln for ln in run.output().splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, "\n".join(errors[-20:]) or run.tail()
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@needs_file_modes
def test_unwritable_workdir_is_one_line_before_compiling(tmp_path):
    workdir = tmp_path / "readonly"
    workdir.mkdir()
    workdir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    run = runs.Run(str(workdir), obey_file_modes=True)
    assert run.wait() == 4, run.tail()
    check_line(run, f"workdir {workdir} is not writable (Permission denied)")
    assert "Compiled" not in run.output()


def test_a_workdir_under_a_file_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    workdir = str(tmp_path / "file" / "run")
    config = config_lib.load_file(os.path.join(runs.ROOT, runs.CONFIG))
    with pytest.raises(ckpt_lib.CheckpointError, match=r"is not writable \(Not a directory\)"):
        evaluators.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_disk_full_during_a_save_stops_cleanly_and_the_rerun_resumes(tmp_path):
    version = runs.code_version()
    workdir = str(tmp_path / "run")
    run = runs.Run(workdir)
    run.until(lambda: len(runs.complete_steps(workdir)) >= 3)
    # From now on no file of the process may grow past 8 KiB: the next checkpoint cannot be
    # written (its metadata files are larger), the small metrics lines still can.
    resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
    assert run.wait() == 4, run.tail()
    line = check_line(run, "saving a checkpoint in", "File too large", "a restart resumes from")
    resumed_from = runs.complete_steps(workdir)[-1]
    assert f"a restart resumes from step {resumed_from}" in line
    assert resumed_from < runs.STEPS

    again = runs.finish(workdir)
    assert f"Resumed from step {resumed_from}" in again.output()
    runs.assert_same_run(workdir, version)


@pytest.mark.slow
@needs_file_modes
def test_checkpoint_directory_made_read_only_mid_run(tmp_path):
    version = runs.code_version()
    workdir = str(tmp_path / "run")
    run = runs.Run(workdir, obey_file_modes=True)
    run.until(lambda: len(runs.complete_steps(workdir)) >= 3)
    checkpoints = ckpt_lib.directory(workdir)
    os.chmod(checkpoints, 0o555)
    try:
        assert run.wait() == 4, run.tail()
    finally:
        os.chmod(checkpoints, 0o755)
    check_line(run, "saving a checkpoint in", "Permission denied", "a restart resumes from step")
    saved = runs.complete_steps(workdir)
    assert saved and saved[-1] < runs.STEPS

    again = runs.finish(workdir, obey_file_modes=True)
    assert f"Resumed from step {saved[-1]}" in again.output()
    runs.assert_same_run(workdir, version)
