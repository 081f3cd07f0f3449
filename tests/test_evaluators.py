"""Evaluators during training: `config.evals` every N steps on the live parameters, curves in
metrics.jsonl, result files for the final evaluation only, a rerun that re-evaluates, and the
start-up checks of how often an eval may run."""

import json
import os
import subprocess
import sys

import pytest
from test_probe_checkpoint import tiny_run_config

from vrl import config as config_lib
from vrl import evaluators, setup
from vrl.probe import features, results


def read_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_config(total_steps: int, evals: dict) -> dict:
    return {**tiny_run_config(total_steps), "evals": evals}


KNN = {"probe": {"name": "knn", "k": 3}, "label_sets": ("motion",), "plots": False}


def test_evals_run_every_n_steps_and_at_the_end_then_again_on_a_rerun(tmp_path, monkeypatch):
    """kNN every 2 steps of 5 (pretrained and random encoders) and a linear probe at the end
    only: features are extracted once per encoder and split at each step and shared by both
    probes, the random encoder's once for the whole run; only the final step writes files."""
    extracted, written = [], []
    extract, write = features.extract, results.write
    monkeypatch.setattr(
        features, "extract", lambda *a, **k: extracted.append(a[2]) or extract(*a, **k)
    )
    monkeypatch.setattr(
        results, "write", lambda d, r, *a: written.append(r["step"]) or write(d, r, *a)
    )
    evals = {
        "knn": {**KNN, "encoders": ("pretrained", "random"), "every_steps": 2},
        "lin": {"probe": {"name": "linear", "solver": "ridge"}, "label_sets": ("motion",)},
    }
    workdir = str(tmp_path / "run")
    final = evaluators.train_and_evaluate(run_config(5, evals), workdir)

    names = ("knn_motion_pretrained", "knn_motion_random", "lin_motion_pretrained")
    assert list(final) == list(names)
    rows = read_rows(workdir)
    steps = {name: [r["step"] for r in rows if f"{name}/top1" in r] for name in names}
    assert steps == {names[0]: [2, 4, 5], names[1]: [2, 4, 5], names[2]: [5]}
    random_top1 = {r["knn_motion_random/top1"] for r in rows if "knn_motion_random/top1" in r}
    assert len(random_top1) == 1  # the random encoder does not train
    assert [r["step"] for r in rows if "time/eval" in r][-1] == 5
    # pretrained: train + test at steps 2, 4 and 5; random: train + test once.
    assert sorted(extracted) == ["test"] * 4 + ["train"] * 4
    assert written == [5, 5, 5]
    for name in names:
        with open(os.path.join(workdir, "probe", f"{name}.json")) as f:
            record = json.load(f)
        assert record["step"] == 5 and record["checkpoint"] == os.path.abspath(workdir)
        assert record["metrics"] == json.loads(json.dumps(final[name]))
    assert os.path.exists(os.path.join(workdir, "probe", "lin_motion_pretrained_pca.png"))
    assert not os.path.exists(os.path.join(workdir, "probe", "knn_motion_pretrained_pca.png"))

    again = evaluators.train_and_evaluate(run_config(5, evals), workdir)
    assert again["knn_motion_pretrained"]["top1"] == final["knn_motion_pretrained"]["top1"]
    rerun = read_rows(workdir)[len(rows) :]
    assert not any("train/loss" in r for r in rerun)  # nothing trained
    assert [r["step"] for r in rerun if "lin_motion_pretrained/top1" in r] == [5]


def build(evals: dict, **changes):
    return evaluators.build(setup.setup({**run_config(4, evals), **changes}), "/runs/unused")


def test_periods_in_steps_or_epochs_share_one_evaluator():
    """16 videos at batch 8: an epoch is 2 steps; entries every 4 and every 6 steps are due
    at multiples of 2, when the evaluator runs those whose period divides the step."""
    (evaluator,) = build({"a": {**KNN, "every_epochs": 2}, "b": {**KNN, "every_steps": 6}})
    assert [every for _, every in evaluator.plans.values()] == [4, 6]
    assert evaluator.every_steps == 2
    assert build({"a": KNN})[0].every_steps == 0  # at the end only
    assert build({}) == []


@pytest.mark.parametrize(
    "evals, message",
    [
        (
            {"ft": {"probe": {"name": "finetune"}, "every_steps": 2}},
            "config.evals.ft.every_steps / every_epochs: probe 'finetune' trains from the final "
            "checkpoint, so it runs at the end only; allowed: 0 or unset",
        ),
        (
            {"a": {**KNN, "every_steps": 2, "every_epochs": 1.0}},
            "config.evals.a.every_steps / config.evals.a.every_epochs: set one of them, not 2",
        ),
        (
            {"a": {**KNN, "every_steps": -2}},
            "config.evals.a.every_steps: -2 is not allowed; allowed: >= 0",
        ),
        (
            {"cls": {"probe": {"name": "classification"}}},
            "config.evals.cls.probe.name: 'classification' tests a classifier the run trains; "
            "this run's objective VideoMAE has none (use supervised)",
        ),
    ],
    ids=["finetune_every_steps", "steps_and_epochs", "negative", "classification_no_head"],
)
def test_eval_periods_are_checked_at_start_up(evals, message):
    with pytest.raises(config_lib.ConfigError) as error:
        build(evals)
    assert str(error.value) == message


def test_classification_evals_need_the_heads_label_set():
    supervised = {"name": "supervised", "num_classes": 8, "label_set": "motion"}
    cls = {"probe": {"name": "classification"}, "every_steps": 2}
    (evaluator,) = build({"cls": {**cls, "label_sets": ("motion",)}}, objective=supervised)
    assert evaluator.every_steps == 2
    with pytest.raises(config_lib.ConfigError, match=r"label_sets: the classifier predicts the 8"):
        build({"cls": cls}, objective=supervised)  # every label set of the data by default


@pytest.mark.slow
def test_two_processes_evaluate_what_one_process_does(tmp_path):
    """2 processes x 4 CPU devices (launch/local.sh) measure every step's evals as 1 process x
    8 devices does: each process reads its share of a split (16 videos, multi-view for kNN,
    in batches of 32 and 24), the outputs are gathered and the padding is dropped."""
    evals = {
        "knn": {
            **KNN,
            "encoders": ("pretrained", "random"),
            "every_steps": 2,
            "test_views": (2, 1),
        },
        "att": {
            "probe": {"name": "attentive", "epochs": 2, "batch_size": 8, "eval_batch_size": 4},
            "label_sets": ("motion",),
            "every_steps": 2,
            "batch_size": 24,
        },
    }
    config = run_config(4, evals)
    path = tmp_path / "config.py"
    body = f"    return ml_collections.ConfigDict({config!r})\n"
    path.write_text("import ml_collections\n\n\ndef get_config():\n" + body)
    evaluators.train_and_evaluate(config, str(tmp_path / "one"))
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    command = [
        "bash", "launch/local.sh", "--cpu_devices=4", "--grace_s=10", "2", "--",
        f"--config={path}", f"--workdir={tmp_path / 'two'}",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        command, cwd=root, env={**env, "PYTHON": sys.executable}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    def evals_of(workdir: str) -> dict:
        rows = read_rows(str(workdir))
        return {(r["step"], k): v for r in rows for k, v in r.items() if "_motion_" in k}

    one = evals_of(tmp_path / "one")
    assert {step for step, _ in one} == {2, 4}
    assert (
        one[(4, "knn_motion_pretrained/num_test")]
        == one[(4, "att_motion_pretrained/num_test")]
        == 16
    )
    assert evals_of(tmp_path / "two") == one
