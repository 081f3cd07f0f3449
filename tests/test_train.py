"""The training loop end to end: every config's :runlocal variant, exact resume, checkpoints."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import RECIPES
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators
from vrl import setup as setup_lib

CONFIGS = list(RECIPES)


def load_config(path: str, arg: str | None = "runlocal"):
    return config_lib.load_file(path, arg)


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_params(workdir: str, step: int):
    meta = ckpt_lib.tree_metadata(ckpt_lib.manager(workdir, read_only=True), step)
    abstract = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
    return ckpt_lib.restore_partial(workdir, step, {"params": abstract})["params"]


def runlocal_arg(path: str, tmp_path) -> str:
    """`runlocal`, plus a freshly trained stage-1 teacher for configs that need one."""
    if "salt_stage2" not in path:
        return "runlocal"
    teacher = str(tmp_path / "teacher")
    stage1 = load_config(path.replace("salt_stage2", "salt_stage1"))
    stage1.evals = {}
    evaluators.train_and_evaluate(stage1, teacher)
    return f"runlocal,teacher={teacher}"


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_runlocal_config_trains_three_steps(path, tmp_path):
    config = load_config(path, runlocal_arg(path, tmp_path))
    config.total_steps = 3
    config.evals = {}
    workdir = str(tmp_path / "run")
    evaluators.train_and_evaluate(config, workdir)
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    assert rows[-1]["step"] == 3
    assert all(np.isfinite(r["train/loss"]) for r in rows)
    assert ckpt_lib.manager(workdir, read_only=True).all_steps() == [3]


def quick_config():
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"))
    config.total_steps = 4
    config.evals = {}
    config.ckpt.every_steps = 2
    config.ckpt.keep = 5
    return config


def test_resume_is_the_same_run(tmp_path):
    """Kill after step 2 (simulated by deleting later checkpoints), rerun: same final params."""
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    evaluators.train_and_evaluate(quick_config(), full)
    assert ckpt_lib.manager(full, read_only=True).all_steps() == [2, 4]

    shutil.copytree(full, resumed)
    shutil.rmtree(os.path.join(ckpt_lib.directory(resumed), "4"))
    evaluators.train_and_evaluate(quick_config(), resumed)

    count, digest_full = ckpt_lib.digest(final_params(full, 4))
    _, digest_resumed = ckpt_lib.digest(final_params(resumed, 4))
    assert count > 0
    assert digest_full == digest_resumed


def test_restored_iterator_continues_with_the_next_batch(tmp_path):
    workdir = str(tmp_path)
    evaluators.train_and_evaluate(quick_config(), workdir)
    setup = setup_lib.setup(quick_config())

    def fresh():
        return iter(setup.train_data.iterator(seed=0, process_index=0, process_count=1))

    uninterrupted = fresh()
    for _ in range(2):
        next(uninterrupted)
    expected = next(uninterrupted)

    restored = fresh()
    ckpt_lib.restore_data(ckpt_lib.manager(workdir, read_only=True), 2, restored)
    actual = next(restored)
    assert expected.keys() == actual.keys()
    for key in expected:
        np.testing.assert_array_equal(expected[key], actual[key], err_msg=key)


def test_checkpoint_cli_lists_steps_with_digests(tmp_path, capsys):
    workdir = str(tmp_path)
    evaluators.train_and_evaluate(quick_config(), workdir)
    assert ckpt_lib.main(["vrl.checkpoint", workdir]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["step", "parameters", "sha256(params)"]
    steps = [int(line.split()[0]) for line in lines[1:]]
    assert steps == [2, 4]
    _, digest = ckpt_lib.digest(final_params(workdir, 4))
    assert lines[-1].split()[-1] == digest


@pytest.mark.slow
def test_quickstart_pretraining_beats_random_init_on_motion(tmp_path):
    """The quickstart itself (about two CPU minutes): its linear probes, pretrained vs random."""
    config = config_lib.load_file(
        os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"), None
    )
    workdir = str(tmp_path / "run")
    evaluators.train_and_evaluate(config, workdir)

    def top1(name: str) -> float:
        with open(os.path.join(workdir, "probe", f"linear_{name}.json")) as f:
            return json.load(f)["top1"]

    chance = 100 / 8
    assert top1("motion_random") < chance + 6
    # 13.7 points on the machine the README's table comes from; some slack for other CPUs.
    assert top1("motion_pretrained") > top1("motion_random") + 8


def test_the_data_wait_is_reported_and_warned_about_over_20_percent(caplog):
    from vrl import train as train_lib

    timers = {"time/steps": 6.0, "time/data_wait": 3.0, "time/ckpt": 1.0, "time/eval": 0.0}
    with caplog.at_level("INFO"):
        assert train_lib._report_data_wait(timers, 0) == pytest.approx(0.3)
    assert "waited for data 30% of the loop" in caplog.text
    assert "config.data.num_workers=0" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        assert train_lib._report_data_wait({**timers, "time/data_wait": 1.0}, 4) == 0.125
    assert "Waited for data 12% of the loop" in caplog.text and "bottleneck" not in caplog.text
