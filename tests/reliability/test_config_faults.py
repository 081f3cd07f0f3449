"""Misconfigurations stop at start-up, before anything is compiled, with one line that names
the key and what is allowed.

The table of messages in docs/RELIABILITY.md is generated from CASES, with the messages the code
produces now, so the two cannot drift apart; regenerate it with
    VRL_UPDATE_DOCS=1 python -m pytest tests/reliability/test_config_faults.py
"""

import contextlib
import copy
import os
import subprocess
import sys

import jax
import pytest
import runs

from vrl import config as config_lib
from vrl import evaluators, sharding
from vrl import state as state_lib

DOC = os.path.join(runs.ROOT, "docs", "RELIABILITY.md")
TABLE_START, TABLE_END = "<!-- misconfig-table:start -->", "<!-- misconfig-table:end -->"
DELETE = object()
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

MASKED = {  # a VideoMAE setup that is valid, for the cases that break one of its parts
    "data.train_pp": "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)",
    "objective": {"name": "videomae", "decoder_width": 16, "decoder_depth": 1, "decoder_heads": 1},
}

LINEAR = {"probe": {"name": "linear", "solver": "ridge"}}  # an eval that is valid on tiny_run
TEST_PP = "center_clip(frames=4, stride=2)|resize_short(size=16)|center_crop(size=16)"

# (what is wrong, {dotted key: value}, how the one-line message starts)
CASES = [
    (
        "unknown top-level key",
        {"totl_steps": 3},
        "config.totl_steps: unknown key; allowed: ",
    ),
    ("unknown nested key", {"optim.lrr": 0.1}, "config.optim.lrr: unknown key; allowed: b1, b2,"),
    ("unknown model key", {"model.widht": 64}, "config.model.widht: unknown key; allowed:"),
    ("string for a float", {"optim.lr": "fast"}, "config.optim.lr: expected float, got str 'fast'"),
    (
        "float for an int",
        {"data.batch_size": 8.5},
        "config.data.batch_size: expected int, got float 8.5",
    ),
    (
        "optimizer not in the enumeration",
        {"optim.name": "adam"},
        "config.optim.name: 'adam' is not allowed; allowed: 'sgd', 'lars', 'adamw'",
    ),
    (
        "unsupported compute dtype",
        {"compute_dtype": "float16"},
        "config.compute_dtype: 'float16' is not allowed; allowed: 'float32', 'bfloat16'",
    ),
    (
        "unknown non-finite policy",
        {"on_nonfinite": "ignore"},
        "config.on_nonfinite: 'ignore' is not allowed; allowed: 'stop', 'skip'",
    ),
    ("unknown model", {"model.name": "r4d"}, "config.model.name: unknown model 'r4d'; allowed:"),
    (
        "unknown objective",
        {"objective.name": "simclr"},
        "config.objective.name: unknown objective 'simclr'; allowed:",
    ),
    (
        "unknown source",
        {"data.source.name": "youtube"},
        "config.data.source.name: unknown source 'youtube'; allowed:",
    ),
    (
        "unknown transform",
        {"data.train_pp": "cvrl_clips(frames=4)|crop(size=16)"},
        "config.data.train_pp: unknown transform 'crop'; allowed:",
    ),
    (
        "spatial op before the temporal op",
        {"data.train_pp": "random_resized_crop(size=16)|cvrl_clips(frames=4)"},
        "config.data.train_pp: temporal op 'cvrl_clips' after a spatial op",
    ),
    (
        "both run lengths",
        {"total_epochs": 3.0},
        "config.total_steps / config.total_epochs / config.total_examples: set exactly one",
    ),
    (
        "no run length",
        {"total_steps": DELETE},
        "config.total_steps / config.total_epochs / config.total_examples: set exactly one",
    ),
    ("zero steps", {"total_steps": 0}, "config.total_steps: 0 is not allowed; allowed: >= 1"),
    (
        "zero logging interval",
        {"log_every_steps": 0},
        "config.log_every_steps: 0 is not allowed; allowed: >= 1",
    ),
    (
        "zero checkpoint interval",
        {"ckpt.every_steps": 0},
        "config.ckpt.every_steps: 0 is not allowed; allowed: >= 1",
    ),
    (
        "no preemption grace",
        {"preemption_grace_s": 0.0},
        "config.preemption_grace_s: 0.0 is not allowed; allowed: > 0",
    ),
    (
        "skip fraction above 1",
        {"data.max_skip_fraction": 1.5},
        "config.data.max_skip_fraction: 1.5 is not allowed; allowed: in [0, 1]",
    ),
    (
        "negative learning rate",
        {"optim.lr": -0.1},
        "config.optim.lr: -0.1 is not allowed; allowed: >= 0",
    ),
    (
        "batch not divisible by the devices",
        {"data.batch_size": 6},
        "config.data.batch_size=6 must be a multiple of the data-parallel size 8",
    ),
    (
        "micro-batches not divisible by the devices",
        {"optim.grad_accum_steps": 3},
        "config.optim.grad_accum_steps=3: each micro-batch of config.data.batch_size=8 must split",
    ),
    (
        "mesh that does not fit the devices",
        {"mesh.model": 3},
        "config.mesh: 8 devices do not divide by the fixed axes' product 3",
    ),
    (
        "clip longer than every video",
        {"data.train_pp": "cvrl_clips(frames=16, stride=2)"},
        "config.data.train_pp: a clip spans 31 frames (16 frames, 2 apart), longer than every "
        "video",
    ),
    (
        "mask ratio out of range",
        {**MASKED, "objective.mask_ratio": 1.5},
        "config.objective.mask: tube_mask.ratio: must be in (0, 1)",
    ),
    (
        "mask ratio that hides nothing (loss 0 at every step)",
        {**MASKED, "objective.mask_ratio": 0.0},
        "config.objective.mask: tube_mask.ratio: must be in (0, 1), hide at least one of the "
        "16 tokens",
    ),
    (
        "zero contrastive temperature",
        {"objective.temperature": 0.0},
        "config.objective.temperature: 0.0 is not allowed; allowed: > 0",
    ),
    (
        "negative contrastive temperature",
        {"objective.temperature": -0.1},
        "config.objective.temperature: -0.1 is not allowed; allowed: > 0",
    ),
    (
        "negative parameter-norm bound",
        {"max_param_norm": -1.0},
        "config.max_param_norm: -1.0 is not allowed; allowed: > 0, or 0 / None for no check",
    ),
    (
        "patch that does not divide the clip",
        {"model.patch": (2, 8, 5)},
        "config.model.patch=(2, 8, 5): does not divide the clip (frames, height, width)=(4, 16, "
        "16)",
    ),
    (
        "heads that do not divide the width",
        {"model.heads": 3},
        "config.model.heads=3: does not divide the width 32; allowed: 1, 2, 4, 8, 16, 32",
    ),
    (
        "TokenLearner with no tokens",
        {"model.tokenlearner_layer": 1, "model.tokenlearner_tokens": 0},
        "config.model.tokenlearner_tokens=0: allowed: >= 1",
    ),
    (
        "TokenLearner after the last block",
        {"model.tokenlearner_layer": 5},
        "config.model.tokenlearner_layer=5: allowed: 0 to 1 (depth=1)",
    ),
    (
        "single-view objective on a multi-view pipeline",
        {"objective": {"name": "supervised", "num_classes": 4, "label_set": "motion"}},
        "config.objective (supervised) takes one clip per video, the train ops make 2 views",
    ),
    (
        "eval label set that the data does not have",
        {"evals": {"linear": {**LINEAR, "label_sets": ("motionn",)}}},
        "config.evals.linear.label_sets: 'motionn' not in the data; allowed: motion, appearance",
    ),
    (
        "eval test pipeline with a typo",
        {"evals": {"linear": {**LINEAR, "test_pp": TEST_PP.replace("center_crop", "centre_crop")}}},
        "config.evals.linear.test_pp: unknown transform 'centre_crop'; allowed:",
    ),
    (
        "eval test pipeline with a positional argument",
        {"evals": {"linear": {**LINEAR, "test_pp": "center_clip(frames=4)|center_crop(64)"}}},
        "config.evals.linear.test_pp: op 'center_crop(64)': cannot parse",
    ),
    (
        "eval crop larger than the frames",
        {"evals": {"linear": {**LINEAR, "test_pp": "center_clip(frames=4)|center_crop(size=64)"}}},
        "config.evals.linear.test_pp='center_clip(frames=4)|center_crop(size=64)': center_crop: "
        "crop 64 is larger than the 32x32 frames",
    ),
    (
        "eval of an encoder the objective does not have",
        {"evals": {"linear": {**LINEAR, "encoders": ("pretrained", "teacher")}}},
        "config.evals.linear.encoders: 'teacher' is not an encoder of this run's objective; "
        "allowed: pretrained, random",
    ),
    (
        "eval probe that trains for no epochs",
        {"evals": {"linear": {"probe": {"name": "linear", "epochs": 0}}}},
        "config.evals.linear.probe.epochs: 0 is not allowed; allowed: >= 1",
    ),
    (
        "masked objective on a convolutional backbone",
        {**MASKED, "model": {"name": "cvrl_r3d", "depth": 18, "width": 0.125}},
        "config.objective (videomae) needs an encoder that takes keep_idx (vit); "
        "got config.model.name='cvrl_r3d'",
    ),
    (
        "contrastive objective with one view",
        {"data.train_pp": "uniform_clip(frames=4, stride=2)|random_resized_crop(size=16)"},
        "config.objective (cvrl) needs 2 views per video, the train ops make 1",
    ),
    (
        "second stage without its teacher",
        {**MASKED, "objective": {"name": "salt"}},
        "config.objective.teacher_checkpoint: required",
    ),
    (
        "missing video folder",
        {"data.source": {"name": "video_folder", "root": "/nonexistent/videos"}},
        "config.data.source (video_folder, split 'train'): video_folder: root /nonexistent/videos "
        "is not a directory",
    ),
    (
        "empty synthetic dataset",
        {"data.source.num_videos": 0},
        "config.data.source (synthetic, split 'train'): synthetic: num_videos must be >= 1",
    ),
]


def base_config() -> dict:
    return config_lib.to_dict(config_lib.load_file(os.path.join(runs.ROOT, runs.CONFIG)))


def with_changes(changes: dict) -> dict:
    config = copy.deepcopy(base_config())
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return config


class _Compiled(Exception):
    pass


@contextlib.contextmanager
def compilations():
    """Collects the XLA compilations that happen inside the block."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def error_of(changes: dict, workdir: str, monkeypatch) -> str:
    """The message train_and_evaluate stops with; fails if anything was compiled first."""

    def refuse(*args, **kwargs):
        raise _Compiled("the config was accepted: init_state was reached")

    monkeypatch.setattr(state_lib, "init_state", refuse)
    with compilations() as compiled:
        with pytest.raises((config_lib.ConfigError, sharding.MeshError)) as error:
            evaluators.train_and_evaluate(with_changes(changes), workdir)
    assert not compiled, f"{len(compiled)} compilation(s) before the error"
    return str(error.value)


def test_compilations_are_seen():
    with compilations() as compiled:
        jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(5.0)).block_until_ready()
    assert compiled


def test_there_are_at_least_20_cases():
    assert len(CASES) >= 20
    assert len({what for what, _, _ in CASES}) == len(CASES)


def test_the_base_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.setattr(state_lib, "init_state", lambda *a, **k: (_ for _ in ()).throw(_Compiled()))
    with pytest.raises(_Compiled):
        evaluators.train_and_evaluate(base_config(), str(tmp_path))


@pytest.mark.parametrize("what, changes, message", CASES, ids=[c[0] for c in CASES])
def test_misconfiguration_is_one_line_before_compilation(
    what, changes, message, tmp_path, monkeypatch
):
    text = error_of(changes, str(tmp_path), monkeypatch)
    assert text.startswith(message), text
    assert "\n" not in text


def render_table(monkeypatch, tmp_path) -> str:
    rows = ["| # | What is wrong | Config | Message (one line, at start-up) |", "|---|---|---|---|"]
    for i, (what, changes, _) in enumerate(CASES, start=1):
        text = error_of(changes, str(tmp_path / str(i)), monkeypatch)
        shown = ", ".join(
            f"`{k}` deleted" if v is DELETE else f"`{k}={v!r}`" for k, v in changes.items()
        )
        rows.append(f"| {i} | {what} | {_cell(shown)} | `{_cell(text)}` |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def test_doc_table_is_current(monkeypatch, tmp_path):
    table = render_table(monkeypatch, tmp_path)
    with open(DOC) as f:
        doc = f.read()
    head, rest = doc.split(TABLE_START)
    _, tail = rest.split(TABLE_END)
    current = f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}"
    if os.environ.get("VRL_UPDATE_DOCS"):
        with open(DOC, "w") as f:
            f.write(current)
        doc = current
    assert doc == current, (
        "docs/RELIABILITY.md's table differs from the messages; regenerate it with "
        "VRL_UPDATE_DOCS=1 python -m pytest tests/reliability/test_config_faults.py"
    )


def test_command_line_prints_the_line_and_exits_2_without_compiling(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrl.main",
            f"--config={runs.CONFIG}",
            f"--workdir={tmp_path}",
            "--config.ckpt.every_steps=0",
            f"--cpu_devices={runs.DEVICES}",
        ],
        cwd=runs.ROOT,
        env=runs.environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("config error: ")]
    assert errors == ["config error: config.ckpt.every_steps: 0 is not allowed; allowed: >= 1"]
    assert "Compiled" not in result.stderr


def test_a_valid_eval_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setattr(state_lib, "init_state", lambda *a, **k: (_ for _ in ()).throw(_Compiled()))
    evals = {"linear": {**LINEAR, "label_sets": ("motion",), "test_pp": TEST_PP}}
    with pytest.raises(_Compiled):
        evaluators.train_and_evaluate(with_changes({"evals": evals}), str(tmp_path))


def _cli(*args: str, cwd: str = runs.ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vrl.main", *args, f"--cpu_devices={runs.DEVICES}"],
        cwd=cwd,
        env=runs.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SYNTAX_ERROR = "def get_config(:\n    pass\n"

# Mistakes on the command line itself: (what, arguments after --workdir, how the line starts).
# "{T}" is tests/reliability/tiny_run.py, "{bad}" a config file with a syntax error.
CLI_CASES = [
    (
        "unknown override key",
        ["--config={T}", "--config.optim.lrr=1"],
        "config.optim.lrr: unknown key; allowed: lr, name, warmup_steps, weight_decay",
    ),
    (
        "override value of the wrong type",
        ["--config={T}", "--config.optim.lr=abc"],
        "config.optim.lr: expected float, got 'abc'",
    ),
    (
        "override below a value that is not a section",
        ["--config={T}", "--config.seed.x=1"],
        "config.seed.x: unknown key; config.seed is int, not a section",
    ),
    (
        "config file with a syntax error",
        ["--config={bad}"],
        "--config={bad}: {bad} line 1: invalid syntax",
    ),
    (
        "unknown config arg",
        ["--config={T}:runlcal"],
        "--config={T}:runlcal: config arg 'runlcal': unknown; allowed: steps, videos, tfds",
    ),
    (
        "config arg that is not an int",
        ["--config={T}:steps=abc"],
        "--config={T}:steps=abc: config arg steps='abc': expected int",
    ),
    (
        "recipe config arg that is not an int",
        ["--config=configs/tokenlearner_vitb_k400.py:runlocal,tokens=abc"],
        "--config=configs/tokenlearner_vitb_k400.py:runlocal,tokens=abc: config arg "
        "tokens='abc': expected int",
    ),
    (
        "recipe size that does not exist",
        ["--config=configs/videomae_vitb_k400.py:runlocal,size=Q"],
        "--config=configs/videomae_vitb_k400.py:runlocal,size=Q: config arg size='Q': not "
        "allowed; allowed: S, B, L, H",
    ),
    (
        "config file that does not exist",
        ["--config=configs/nonexistent.py"],
        "--config=configs/nonexistent.py: no such config file 'configs/nonexistent.py'",
    ),
    (
        "no config at all",
        [],
        "--config is required: a config file, e.g. --config=configs/quickstart.py",
    ),
]


@pytest.mark.slow  # a process each: ~10 s apiece on two busy cores
@pytest.mark.parametrize("what, args, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_line_mistake_is_one_line_and_exit_2(what, args, message, tmp_path):
    bad = tmp_path / "bad_config.py"
    bad.write_text(SYNTAX_ERROR)
    fill = {"T": runs.CONFIG, "bad": str(bad)}
    result = _cli(f"--workdir={tmp_path / 'run'}", *(a.format(**fill) for a in args))
    assert result.returncode == 2, result.stderr[-3000:]
    line = result.stderr.splitlines()[-1]
    assert line.startswith(f"config error: {message.format(**fill)}"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_parameters_past_the_bound_stop_the_run_and_the_bound_switches_off(tmp_path):
    """lr=1e6 keeps every number finite while the weights grow to ~1e12: exit 3 naming
    train/param_norm, nothing of the diverged run saved; with the bound off it finishes (0)."""
    overrides = ["--config.optim.lr=1e6", "--config.total_steps=3"]
    stopped = _cli(f"--config={runs.CONFIG}", f"--workdir={tmp_path / 'a'}", *overrides)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    line = stopped.stderr.splitlines()[-1]
    assert line.startswith("training stopped: parameters diverged at step 2 (train/param_norm)")
    assert "> config.max_param_norm=1e+06" in line
    assert runs.complete_steps(str(tmp_path / "a")) == [1]  # step 1 (warm-up, lr 0) only
    off = _cli(
        f"--config={runs.CONFIG}",
        f"--workdir={tmp_path / 'b'}",
        *overrides,
        "--config.max_param_norm=0",
    )
    assert off.returncode == 0, off.stderr[-3000:]
    assert runs.complete_steps(str(tmp_path / "b"))[-1] == 3
