"""`python -m vrl.probe` on other data than the run's: source keys the job leaves unset keep the
run's values (its `short_side`), the clip shapes are logged, `--config.name` names the results,
and a second job on other data never overwrites the first one's files. The run's manifest has
two label columns, so one feature extraction serves both label sets.
"""

import json
import os
import subprocess
import sys

import pytest
import runs
import videos

from vrl.data import manifests

SHORT_SIDE = 24
KNN = ["--config.encoders=('pretrained',)", "--config.probe.k=4", "--config.probe.recall_at=(1,)"]


def folder(base, name: str, columns: tuple[str, ...]) -> str:
    """16 videos of 64x48, labelled in `columns` (label sets)."""
    root = base / name
    root.mkdir()
    rows = []
    for i in range(16):
        videos.make_video(root / f"v{i}.mp4", frames=16, size=(64, 48), fps=16, gop=4)
        labels = {"motion": ["left", "right"][i % 2], "digit": str(i % 4)}
        rows.append(manifests.ManifestRow(f"v{i}.mp4", labels={c: labels[c] for c in columns}))
    manifests.write_manifest(str(root / "train.csv"), rows)
    return str(root)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run on a video folder labelled motion and digit, decoded at SHORT_SIDE; a second
    folder labelled motion only."""
    base = tmp_path_factory.mktemp("probe_data")
    first = folder(base, "first", ("motion", "digit"))
    second = folder(base, "second", ("motion",))
    workdir = str(base / "run")
    runs.finish(workdir, steps=2, arg=f"videos={first},short_side={SHORT_SIDE}")
    return {"workdir": workdir, "first": first, "second": second}


def probe_cli(workdir: str, *overrides: str, source: str = "") -> subprocess.CompletedProcess:
    config = "configs/probe/knn.py" + (f":source={source}" if source else "")
    command = [
        sys.executable, "-m", "vrl.probe", f"--config={config}",
        f"--config.checkpoint={workdir}", *KNN, *overrides,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=runs.ROOT, env=runs.environment(), capture_output=True, text=True
    )


def result(workdir: str, name: str) -> dict:
    with open(os.path.join(workdir, "probe", f"{name}.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_a_probe_job_on_other_data_keeps_the_runs_source_keys_and_the_first_results(run):
    workdir = run["workdir"]
    first = probe_cli(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Probe clips (4, 16, 16, 3)" in first.stderr
    assert "the encoder was trained on clips (2, 4, 16, 16, 3)" in first.stderr
    for label_set in ("motion", "digit"):  # both label sets from one extraction
        assert result(workdir, f"knn_{label_set}_pretrained")["source"]["short_side"] == SHORT_SIDE
    with open(os.path.join(workdir, "probe", "knn_motion_pretrained.json")) as f:
        kept = f.read()

    other = ["--config.data.source.root=" + run["second"]]
    refused = probe_cli(workdir, *other, source="video_folder")
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line == (
        f"vrl.probe: config.name: {workdir}/probe/knn_motion_pretrained.json holds results on "
        "other data (config.data.source root differ); set --config.name=<another name> to keep "
        "both, or delete that file"
    ), refused.stderr[-3000:]

    second = probe_cli(workdir, *other, "--config.name=second", source="video_folder")
    assert second.returncode == 0, second.stderr[-3000:]
    record = result(workdir, "second_motion_pretrained")
    assert record["source"]["root"] == run["second"]
    assert record["source"]["short_side"] == SHORT_SIDE  # the run's, not the source default
    assert record["source"]["manifest"] == "train.csv"
    assert f"'short_side': {SHORT_SIDE}" in second.stderr  # logged beside the clip shape
    with open(os.path.join(workdir, "probe", "knn_motion_pretrained.json")) as f:
        assert f.read() == kept
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        keys = {k for line in f for k in json.loads(line)}
    assert {"knn_motion_pretrained/top1", "second_motion_pretrained/top1"} <= keys


def test_config_name_is_accepted_on_the_probe_command_line(tmp_path):
    """Was `AttributeError: "'name'"` while parsing the flags; now the job starts (and stops at
    the missing checkpoint, one line, exit 2)."""
    done = probe_cli(str(tmp_path / "missing"), "--config.name=ucf", source="video_folder")
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("vrl.probe: no checkpoint directory")


def test_unset_source_keys_keep_the_runs_values():
    from vrl import config as config_lib
    from vrl.probe import data as probe_data

    cfg = config_lib.load_file("configs/probe/knn.py", "source=video_folder")
    cfg.data.source.root = "/other"
    job = config_lib.drop_unset(config_lib.to_dict(cfg))["data"]
    run = {"source": {"name": "video_folder", "root": "/r", "manifest": "m.csv", "short_side": 24}}
    merged = probe_data.job_data(run, job)["source"]
    assert merged == {**run["source"], "root": "/other"}
    other = probe_data.job_data(run, {"source": {"name": "synthetic", "num_videos": 4}})
    assert other["source"] == {"name": "synthetic", "num_videos": 4}  # another source: replaced
