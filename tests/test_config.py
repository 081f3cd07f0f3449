"""Bad configs stop at start-up with one line naming the key and what is allowed."""

import os
import subprocess
import sys

import pytest

from vrl import config as config_lib
from vrl import train
from vrl.data import pipeline

ROOT = os.path.join(os.path.dirname(__file__), "..")

UNKNOWN_MODEL = "config.model.name: unknown model 'r4d'; allowed: cvrl_r3d, r3d, video_resnet, vit"


def base_config() -> dict:
    return {
        "total_steps": 2,
        "data": {
            "source": {"name": "synthetic", "num_videos": 8},
            "batch_size": 8,
            "train_pp": "cvrl_clips(frames=4, stride=2)|random_resized_crop(size=32)",
        },
        "model": {"name": "cvrl_r3d", "depth": 18, "width": 0.125},
        "objective": {"name": "cvrl"},
        "optim": {"name": "adamw", "lr": 1e-3},
    }


def with_change(path: str, value) -> dict:
    config = base_config()
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("totl_steps", 3, "config.totl_steps: unknown key; allowed: allow_config_change, ckpt,"),
        ("optim.lrr", 0.1, "config.optim.lrr: unknown key; allowed: b1, b2,"),
        ("optim.lr", "fast", "config.optim.lr: expected float, got str 'fast'"),
        (
            "optim.name",
            "adam",
            "config.optim.name: 'adam' is not allowed; allowed: 'sgd', 'lars', 'adamw'",
        ),
        ("model.name", "r4d", UNKNOWN_MODEL),
        ("model.depth", 19, "config.model.depth: 19 is not allowed; allowed: 18, 34, 50, 101, 152"),
        ("model.widht", 1.0, "config.model.widht: unknown key; allowed:"),
        ("objective.name", "simclr", "config.objective.name: unknown objective 'simclr'; allowed:"),
        ("objective.temperature", "hot", "config.objective.temperature: expected float, got str"),
        (
            "compute_dtype",
            "float16",
            "config.compute_dtype: 'float16' is not allowed; allowed: 'float32', 'bfloat16'",
        ),
        (
            "data.source.name",
            "youtube",
            "config.data.source.name: unknown source 'youtube'; allowed:",
        ),
        ("data.batchsize", 8, "config.data.batchsize: unknown key; allowed:"),
        ("total_epochs", 3.0, "config.total_steps / config.total_epochs: set exactly one"),
    ],
)
def test_setup_rejects_bad_config(path, value, message):
    with pytest.raises(config_lib.ConfigError) as error:
        train.setup(with_change(path, value))
    text = str(error.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize(
    "pp, message",
    [
        (
            "cvrl_clips(frames=4)|crop(size=3)",
            "config.data.train_pp: unknown transform 'crop'; allowed:",
        ),
        ("cvrl_clips(frames=4)|flip(q=1)", "config.data.train_pp[flip].q: unknown key; allowed: p"),
        (
            "flip|cvrl_clips(frames=4)",
            "config.data.train_pp: temporal op 'cvrl_clips' after a spatial op",
        ),
        ("flip", "config.data.train_pp: needs a temporal op first"),
        (
            "cvrl_clips(frames=4)|flip(p=0.5",
            "config.data.train_pp: op 'flip(p=0.5': cannot parse",
        ),
    ],
)
def test_bad_pipeline_strings(pp, message):
    with pytest.raises(config_lib.ConfigError) as error:
        pipeline.make_ops(pp, "config.data.train_pp")
    assert str(error.value).startswith(message), str(error.value)


def test_parse_pp_values():
    assert pipeline.parse_pp("a(x=1, y=(2, 3))|b| c(z='s')") == [
        ("a", {"x": 1, "y": (2, 3)}),
        ("b", {}),
        ("c", {"z": "s"}),
    ]


def test_parse_arg():
    args = config_lib.parse_arg("runlocal,size=S", runlocal=False, size="B", steps=10)
    assert args.runlocal is True and args.size == "S" and args.steps == 10
    with pytest.raises(config_lib.ConfigError, match="config arg 'sizes': unknown; allowed"):
        config_lib.parse_arg("sizes=S", size="B")


def test_parse_arg_refuses_values_it_cannot_read():
    assert config_lib.parse_arg("runlocal=off", runlocal=True).runlocal is False
    assert config_lib.parse_arg("runlocal=ON", runlocal=False).runlocal is True
    with pytest.raises(config_lib.ConfigError, match="runlocal='maybe': not a boolean; allowed"):
        config_lib.parse_arg("runlocal=maybe", runlocal=False)
    with pytest.raises(config_lib.ConfigError, match="tokens='abc': expected int"):
        config_lib.parse_arg("tokens=abc", tokens=8)


def test_command_line_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrl.main",
            "--config=configs/quickstart.py:runlocal",
            f"--workdir={tmp_path}",
            "--config.model.name=r4d",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert errors == [f"config error: {UNKNOWN_MODEL}"]
