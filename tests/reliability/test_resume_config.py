"""Resuming with another config: another model is named in one line (both models) before the
list of parameter differences; changed hyperparameters are logged; a changed seed, batch size or
training data is refused (exit 2) unless config.allow_config_change=True.
"""

import json
import os

import pytest
import runs

from vrl import config as config_lib
from vrl import resume

# --- Rules (in-process) -------------------------------------------------------------------------

SAVED = {
    "seed": 0,
    "total_steps": 2,
    "allow_config_change": False,
    "data": {"batch_size": 8, "source": {"name": "synthetic", "root": None}, "test_pp": "a"},
    "model": {"name": "vit", "size": "Ti", "width": 32, "depth": 1, "patch": (2, 8, 8)},
    "objective": {"name": "cvrl"},
    "optim": {"lr": 0.002},
    "evals": {},
}


def changed(**edits) -> dict:
    config = json.loads(json.dumps(SAVED))
    for key, value in edits.items():
        *parents, name = key.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[name] = value
    return config


def test_unchanged_config_passes_tuples_lists_and_unset_keys_alike():
    given = changed(data__source={"name": "synthetic"}, allow_config_change=True)
    given["model"]["patch"] = (2, 8, 8)
    assert resume.check_config(SAVED, given, "W", 2, allow=False) == []


def test_hyperparameter_changes_are_logged(caplog):
    with caplog.at_level("INFO"):
        out = resume.check_config(
            SAVED, changed(optim__lr=0.01, total_steps=3, data__test_pp="b"), "W", 2, allow=False
        )
    assert [k for k, _, _ in out] == ["data.test_pp", "optim.lr", "total_steps"]
    assert any(
        "Resuming step 2 of W with a changed config:" in r.message
        and "config.optim.lr: 0.002 -> 0.01" in r.message
        for r in caplog.records
    )


@pytest.mark.parametrize(
    "edits, key",
    [
        ({"seed": 1}, "config.seed: 1 given"),
        ({"data__batch_size": 4}, "config.data.batch_size: 4 given"),
        ({"data__source": {"name": "video_folder", "root": "/v"}}, "config.data.source.name:"),
    ],
    ids=["seed", "batch_size", "data"],
)
def test_changes_that_break_exact_resumption_are_refused_unless_allowed(edits, key, caplog):
    with pytest.raises(config_lib.ConfigError) as e:
        resume.check_config(SAVED, changed(**edits), "W", 2, allow=False)
    message = str(e.value)
    assert message.startswith(key) and "\n" not in message
    assert "(step 2)" in message and "config.allow_config_change=True" in message
    with caplog.at_level("WARNING"):
        resume.check_config(SAVED, changed(**edits), "W", 2, allow=True)
    assert any("break exact resumption" in r.message for r in caplog.records)


def test_describe_model():
    assert resume.describe_model(SAVED) == (
        "vit (size=Ti, width=32, depth=1, patch=[2, 8, 8]), objective cvrl"
    )


# --- Real processes ---------------------------------------------------------------------------


def last_line(run) -> str:
    return run.output().strip().splitlines()[-1]


@pytest.mark.slow
def test_resuming_with_another_config(tmp_path):
    workdir = str(tmp_path / "w")
    runs.finish(workdir, steps=2)

    # Another architecture: one line naming both models first, then the differences.
    other = runs.Run(workdir, "--config.model.depth=2", steps=2)
    assert other.wait() == 2, other.tail()
    line = last_line(other)
    assert line.startswith(
        f"config error: {workdir} holds another model: step 2 was saved by vit (size=Ti, "
        "width=32, depth=1, heads=2, patch=[2, 8, 8]), objective cvrl, this config builds vit "
        "(size=Ti, width=32, depth=2, heads=2, patch=[2, 8, 8]), objective cvrl "
        "(changed: config.model.depth: 1 -> 2)"
    ), line
    assert "does not match the model" in line and "missing " in line

    # A new learning rate (and more steps): resumes, naming the changed keys.
    lr = runs.finish(workdir, "--config.optim.lr=0.01", steps=3)
    assert (
        f"Resuming step 2 of {workdir} with a changed config: config.optim.lr: 0.002 -> 0.01; "
        "config.total_steps: 2 -> 3"
    ) in lr.output()
    assert runs.complete_steps(workdir)[-1] == 3

    # A new batch size: refused before anything is compiled ...
    batch = runs.Run(workdir, "--config.optim.lr=0.01", "--config.data.batch_size=4", steps=4)
    assert batch.wait() == 2, batch.tail()
    assert last_line(batch).startswith(
        f"config error: config.data.batch_size: 4 given, but the run in {workdir} (step 3) was "
        "trained with 8"
    )
    assert "Compiled the train step" not in batch.output()
    # ... unless allowed.
    allowed = runs.finish(
        workdir,
        "--config.optim.lr=0.01",
        "--config.data.batch_size=4",
        "--config.allow_config_change=true",
        steps=4,
    )
    assert "with changes that break exact resumption" in allowed.output()
    assert runs.complete_steps(workdir)[-1] == 4
    assert not os.path.exists(os.path.join(workdir, "lock.json"))
