"""Bad configs stop at start-up with one line naming the key and what is allowed."""

import json
import os
import subprocess
import sys

import pytest

from configs import RECIPES
from vrl import config as config_lib
from vrl import registry
from vrl import setup as setup_lib
from vrl.config import __main__ as resolve_cli
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
        (
            "total_epochs",
            3.0,
            "config.total_steps / config.total_epochs / config.total_examples: set exactly one",
        ),
    ],
)
def test_setup_rejects_bad_config(path, value, message):
    with pytest.raises(config_lib.ConfigError) as error:
        setup_lib.setup(with_change(path, value))
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


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_resolved_config_lists_defaults_the_config_never_states():
    result = run_python(
        "-m",
        "vrl.config",
        "--config=configs/quickstart.py:runlocal",
        "--config.optim.b1=0.8",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    c = json.loads(result.stdout)
    assert c["total_steps"] == 3 and c["total_epochs"] is None  # the config's, then defaults
    assert c["optim"]["b1"] == 0.8 and c["optim"]["b2"] == 0.999 and c["optim"]["lr"] == 2e-3
    assert c["model"] == {
        "name": "cvrl_r3d",
        "depth": 18,
        "width": 0.125,
        "conv_impl": "auto",
        "pixel_norm": "imagenet",
    }
    assert c["objective"]["temperature"] == 0.5
    assert c["data"]["source"]["fps"] == 25.0 and c["data"]["prefetch"] == 2
    assert c["mesh"]["data"] == -1 and c["ckpt"]["async_save"] is True
    probe = c["evals"]["linear"]["probe"]
    assert probe["epochs"] == 5 and probe["batch_size"] == 256 and probe["solver"] == "sgd"


def test_resolve_cli_prints_one_line_and_exits_2():
    result = run_python(
        "-m", "vrl.config", "--config=configs/quickstart.py", "--config.optim.b3=0.9"
    )
    assert result.returncode == 2
    assert result.stderr.startswith("config error: config.optim.b3: unknown key; allowed: b1,")
    assert len(result.stderr.strip().splitlines()) == 1


def test_loading_a_run_config_does_not_import_the_trainer():
    code = (
        "import sys; from vrl import config; config.load_file('configs/quickstart.py'); "
        "print(sorted(m for m in ('vrl.train', 'vrl.evaluators', 'vrl.probe') if m in sys.modules))"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def recipe_arg(path: str) -> str:
    return "runlocal,teacher=/teacher" if "salt_stage2" in path else "runlocal"


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_every_recipe_resolves_every_key(path):
    c = resolve_cli.resolve(config_lib.load_file(path, recipe_arg(path)))
    assert set(c) == set(config_lib.parameters(setup_lib.TrainConfig))
    for kind, section in (("model", c["model"]), ("objective", c["objective"])):
        accepted = config_lib.parameters(registry.get(kind, section["name"]))
        assert set(section) == {"name"} | (set(accepted) - {"dtype", "encoder"}), kind
    for key in ("data", "optim", "mesh", "ckpt"):
        assert set(c[key]) == set(config_lib.parameters(resolve_cli.SECTIONS[key])), key
    assert "background_contrast" in c["data"]["source"]  # synthetic: every key of the source
    listing = resolve_cli.listing(c)
    assert f"  name: {c['model']['name']!r}" in listing.splitlines()


def test_salt_student_trains_and_masks_like_its_teacher():
    stage1, stage2 = (
        resolve_cli.resolve(config_lib.load_file(os.path.join(ROOT, "configs", name), arg))
        for name, arg in (
            ("salt_stage1_vitl_k710.py", "runlocal"),
            ("salt_stage2_vitl_k710.py", "runlocal,teacher=/teacher"),
        )
    )
    for key in ("data", "optim", "mesh", "ckpt", "model"):
        assert stage1[key] == stage2[key], key
    assert stage1["objective"]["mask"] == "vjepa"
    masks = config_lib.parameters(registry.get("transform", "vjepa_masks"))
    student = stage2["objective"]
    assert student["num_blocks"] == masks["num_blocks"][1]
    assert student["block_scale"] == masks["scale"][1]
    assert student["block_aspect"] == masks["aspect"][1]
