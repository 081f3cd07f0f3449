"""metrics.jsonl after a resume has one row per step: the rows a killed run wrote past its last
checkpoint are moved to metrics.superseded.jsonl when the run resumes, not repeated.
"""

import json
import os
import signal

import pytest
import runs

from vrl import metrics


def rows(path: str) -> list[dict]:
    """The complete rows of a JSONL file (a line being written is left out)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_rows_past_the_restored_step_are_moved_and_a_torn_line_dropped(tmp_path):
    path = tmp_path / metrics.METRICS
    lines = [json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n" for s in range(1, 9)]
    path.write_text("".join(lines) + '{"step": 9, "train/lo')  # the kill cut the last line
    assert metrics.drop_rows_after(str(tmp_path), 5) == [6, 7, 8]
    assert path.read_text() == "".join(lines[:5])
    superseded = rows(str(tmp_path / metrics.SUPERSEDED))
    assert [r["step"] for r in superseded] == [6, 7, 8]
    assert all(r["superseded_at_resume_from"] == 5 for r in superseded)
    assert metrics.drop_rows_after(str(tmp_path), 5) == []  # nothing left to move
    assert metrics.drop_rows_after(str(tmp_path / "absent"), 0) == []


def test_the_writer_sets_rows_aside_only_when_resuming(tmp_path):
    path = tmp_path / metrics.METRICS
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    metrics.Writer(str(tmp_path), enabled=True).close()  # probes append: nothing moved
    assert len(rows(str(path))) == 3
    writer = metrics.Writer(str(tmp_path), enabled=True, resume_step=1)
    writer.write(2, {"train/loss": 0.5})
    writer.close()
    assert rows(str(path)) == [{"step": 1}, {"step": 2, "train/loss": 0.5}]


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_resumes_with_one_row_per_step(tmp_path):
    workdir = str(tmp_path / "w")
    path = os.path.join(workdir, metrics.METRICS)
    every, steps = 4, 24
    overrides = (f"--config.ckpt.every_steps={every}",)

    def mid_interval() -> bool:  # rows 1-2 steps past a complete checkpoint (saves are async)
        logged = [r["step"] for r in rows(path) if "train/loss" in r]
        if not logged or logged[-1] % every not in (1, 2):
            return False
        done = runs.complete_steps(workdir)
        return bool(done) and done[-1] == logged[-1] - logged[-1] % every

    first = runs.Run(workdir, *overrides, steps=steps)
    first.until(mid_interval, poll_s=0.01)
    first.signal(signal.SIGKILL)
    first.wait()
    saved = runs.complete_steps(workdir)[-1]
    written = max(r["step"] for r in rows(path) if "train/loss" in r)
    assert written > saved, "no rows past the last checkpoint: nothing to test"

    resumed = runs.finish(workdir, *overrides, steps=steps)
    assert f"past the restored step {saved} (step" in resumed.output()
    logged = [r["step"] for r in rows(path) if "train/loss" in r]
    assert logged == list(range(1, steps + 1))  # each step once
    superseded = [r["step"] for r in rows(os.path.join(workdir, metrics.SUPERSEDED))]
    assert superseded and min(superseded) == saved + 1 and max(superseded) >= written
