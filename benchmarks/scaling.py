"""Scaling out on 8 fake CPU devices: FSDP memory, multi-process equivalence, re-sharding
restores, gradient accumulation, remat.

    python -m benchmarks.scaling [--size=S] [--multiprocess] [--record]

Every figure is measured from real arrays and runs:
  - per-device parameter + optimizer bytes of a ViT (+ AdamW) under each rules preset, summed
    over the shards each device actually holds (goal for FSDP: <= 1/8 + 5% of replicated);
  - a 2-process x 4-device run (launch/local.sh, gloo, a 2-group DCN data axis) against the same
    config on 1 process x 8 devices: losses and parameters after 3 steps, and restores of each
    run's step-2 checkpoint in the other layout (1 -> 2 processes on 2 x 2 devices with FSDP);
  - 4 micro-batches of 8 against one step on 32 clips (supervised and VideoMAE losses);
  - the compiled step's temporary memory per device with and without per-block remat.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import optim, sharding, state
from vrl.durations import RunLength
from vrl.objectives import base

_SIZE = flags.DEFINE_enum("size", "S", ["Ti", "S", "B"], "ViT size for the memory figures.")
_MULTIPROCESS = flags.DEFINE_bool("multiprocess", True, "Run the 2-process comparisons (minutes).")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RUN_CONFIG = os.path.join(REPO, "configs", "videomae_vitb_k400.py")
STEPS = 3
FSDP_GOAL = 1 / 8 + 0.05
PRESETS = {  # preset -> mesh sizes on 8 devices
    "data": dict(data=8),
    "fsdp": dict(fsdp=8),
    "tensor": dict(data=4, model=2),
    "fsdp_tensor": dict(fsdp=4, model=2),
}
NOTES = """\
Data parallel, FSDP and tensor parallel are presets of `config.mesh` (`--config.mesh.fsdp=8
--config.mesh.rules=fsdp`), not code paths; a parameter dimension that does not divide its mesh
axes is kept whole. Gradient accumulation (`config.optim.grad_accum_steps`) is exact for losses
that are means over examples (supervised, VideoMAE with a fixed mask ratio); contrastive losses
(CVRL's negatives) and batch norm statistics see each micro-batch only, i.e. a smaller batch.
Figures below come from `python -m benchmarks.scaling --record` on fake CPU devices: they check
layouts and equivalences, not speed. Per-block remat (`config.model.remat`) gives the same loss
and gradients (tests/test_sharding.py) but XLA:CPU does not lower a step's peak memory with it:
its buffer assignment keeps the recomputed values live (a plain 8-block MLP under
`jax.checkpoint` shows the same, 277 -> 336 MB); the memory saving is a GPU/TPU figure."""


# ----------------------------------------------------------------------------------- helpers


def supervised(model: dict, opt: str = "adamw"):
    config = {"model": model, "objective": {"name": "supervised", "num_classes": 400}}
    objective = base.build(config)
    tx, schedule = optim.make(
        optim.OptimConfig(name=opt, lr=0.1, schedule="constant"),
        RunLength(steps_per_epoch=10, batch_size=32, total_steps=10),
    )
    return objective, tx, schedule


def clips(n: int, frames=8, size=112, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8),
        "label/label": rng.integers(0, 400, n).astype(np.int32),
    }


def mesh_for(preset: str, devices=None):
    cfg = sharding.MeshConfig(**{"data": 1, **PRESETS[preset]}, rules=preset)
    return sharding.make_mesh(cfg, devices), cfg.axis_rules()


def state_bytes_per_device(train_state) -> int:
    counts = sharding.bytes_per_device({"params": train_state.params, "opt": train_state.opt_state})
    return max(counts.values())


def max_abs_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# ------------------------------------------------------------------------------------ memory


def memory_rows(size: str) -> list[list]:
    objective, tx, _ = supervised({"name": "vit", "size": size})
    init = clips(2)
    per_device = {}
    for preset in PRESETS:
        mesh, rules = mesh_for(preset)
        train_state, _ = state.init_state(objective, tx, init, mesh, rules, seed=0)
        per_device[preset] = state_bytes_per_device(train_state)
        del train_state
    base_bytes = per_device["data"]
    rows = []
    for preset, sizes in PRESETS.items():
        ratio = per_device[preset] / base_bytes
        goal = f"<= {FSDP_GOAL:.3f}" if preset == "fsdp" else ""
        ok = ("yes" if ratio <= FSDP_GOAL else "NO") if preset == "fsdp" else ""
        rows.append(
            [
                f"params + AdamW per device, {preset}",
                f"ViT-{size}, mesh {sizes}",
                f"{per_device[preset] / 1e6:.1f} MB ({ratio:.3f} of replicated)",
                goal,
                ok,
            ]
        )
    return rows


def remat_rows(size: str) -> list[list]:
    """Temporary (activation) memory of the compiled FSDP step, per device, remat off / on."""
    rows = []
    batch = clips(8)
    temps = {}
    for remat in (False, True):
        objective, tx, schedule = supervised({"name": "vit", "size": size, "remat": remat})
        mesh, rules = mesh_for("fsdp")
        train_state, shardings = state.init_state(objective, tx, clips(2), mesh, rules, seed=0)
        step = state.make_train_step(objective, tx, schedule, 0, 1, False)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            device_batch = sharding.to_global(batch, mesh)
            compiled = (
                jax.jit(
                    step,
                    in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, device_batch)),
                    out_shardings=(shardings, None),
                )
                .lower(train_state, device_batch)
                .compile()
            )
        temps[remat] = compiled.memory_analysis().temp_size_in_bytes
    on_cpu = jax.default_backend() == "cpu"
    rows.append(
        [
            "compiled step temp memory per device",
            f"ViT-{size}, fsdp=8, 8 x 8x112x112 clips, remat off / on",
            f"{temps[False] / 1e6:.1f} / {temps[True] / 1e6:.1f} MB",
            "informative only (see note)" if on_cpu else "on < off",
            "" if on_cpu else ("yes" if temps[True] < temps[False] else "NO"),
        ]
    )
    return rows


# ---------------------------------------------------------------------- gradient accumulation


def accumulation_rows() -> list[list]:
    tiny = {"name": "vit", "width": 96, "depth": 2, "heads": 3, "patch": (2, 8, 8)}
    rows = []
    for name in ("supervised", "videomae"):
        if name == "supervised":
            objective, tx, schedule = supervised(tiny, opt="sgd")
        else:
            objective = base.build(
                {
                    "model": tiny,
                    "objective": {
                        "name": "videomae",
                        "mask_ratio": 0.75,
                        "decoder_width": 32,
                        "decoder_depth": 1,
                        "decoder_heads": 2,
                    },
                }
            )
            tx, schedule = optim.make(
                optim.OptimConfig(name="sgd", lr=0.1, schedule="constant"),
                RunLength(steps_per_epoch=10, batch_size=32, total_steps=10),
            )
        batch = common.make_batch(objective, base.ClipSpec(4, 32, 32), 32, seed=1)
        mesh, rules = mesh_for("data")
        train_state, _ = state.init_state(
            objective, tx, {k: v[:2] for k, v in batch.items()}, mesh, rules, seed=0
        )
        out = {}
        for accum in (1, 4):
            step = state.make_train_step(objective, tx, schedule, 0, accum, False)
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                after, metrics = jax.jit(step)(train_state, sharding.to_global(batch, mesh))
            out[accum] = jax.device_get((after.params, metrics["train/loss"]))
        diff = max_abs_diff(out[1][0], out[4][0])
        loss_rel = abs(out[4][1] - out[1][1]) / abs(out[1][1])
        ok = diff <= 1e-5 and loss_rel <= 1e-5
        rows.append(
            [
                f"grad accumulation, {name}",
                "4 x 8 clips vs 1 x 32 clips, SGD",
                f"params max abs diff {diff:.1e}, loss rel diff {loss_rel:.1e}",
                "<= 1e-5",
                "yes" if ok else "NO",
            ]
        )
    return rows


# ------------------------------------------------------------------------------ multi-process


WITH_MESH = f"""
from configs.common import section
from vrl import sharding
from vrl.config import load_file


def get_config(arg=None):
    c = load_file({RUN_CONFIG!r}, "runlocal")
    c.mesh = section(sharding.MeshConfig)
    c.total_steps = {STEPS}
    c.ckpt.every_steps = 1
    c.ckpt.keep = 5
    c.evals = {{}}
    return c
"""


def run_local(root: str, workdir: str, processes: int, devices: int, *flags: str) -> None:
    config = os.path.join(root, "config.py")
    with open(config, "w") as f:
        f.write(WITH_MESH)
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["PYTHON"] = sys.executable
    out = subprocess.run(
        [
            "bash",
            os.path.join(REPO, "launch", "local.sh"),
            f"--cpu_devices={devices}",
            str(processes),
            "--",
            f"--config={config}",
            f"--workdir={workdir}",
            *flags,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"local.sh failed ({out.returncode}):\n{out.stdout[-3000:]}")


def run_in_process(workdir: str) -> None:
    from vrl import evaluators  # noqa: PLC0415 - the data stack is only needed here

    config = config_lib.load_file(RUN_CONFIG, "runlocal")
    config.total_steps = STEPS
    config.ckpt.every_steps = 1
    config.ckpt.keep = 5
    config.evals = {}
    evaluators.train_and_evaluate(config, workdir)


def losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def params_at(workdir: str, step: int):
    meta = ckpt_lib.tree_metadata(ckpt_lib.manager(workdir, read_only=True), step)
    abstract = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
    return ckpt_lib.restore_partial(workdir, step, {"params": abstract})["params"]


def truncated_copy(source: str, target: str, keep_through: int) -> str:
    shutil.copytree(source, target)
    for step in ckpt_lib.manager(target, read_only=True).all_steps():
        if step > keep_through:
            shutil.rmtree(os.path.join(ckpt_lib.directory(target), str(step)))
    os.remove(os.path.join(target, "metrics.jsonl"))
    return target


def multiprocess_rows() -> list[list]:
    root = tempfile.mkdtemp(prefix="vrl_scaling_")
    one, two = os.path.join(root, "one"), os.path.join(root, "two")
    run_in_process(one)
    run_local(root, two, 2, 4, "--config.mesh.dcn_data=2")
    ref_losses, two_losses = losses(one), losses(two)
    loss_rel = max(abs(two_losses[s] - v) / abs(v) for s, v in ref_losses.items())
    reference = params_at(one, STEPS)
    rows = [
        [
            "2 proc x 4 dev vs 1 x 8: losses",
            f"VideoMAE :runlocal, {STEPS} steps, dcn_data=2",
            f"max rel diff {loss_rel:.1e} ({len(two_losses)} steps)",
            "<= 1e-5",
            "yes" if loss_rel <= 1e-5 and sorted(two_losses) == sorted(ref_losses) else "NO",
        ],
    ]
    diff = max_abs_diff(params_at(two, STEPS), reference)
    rows.append(
        [
            "2 proc x 4 dev vs 1 x 8: params",
            f"after {STEPS} steps",
            f"params max abs diff {diff:.1e}",
            "<= 5e-5",
            "yes" if diff <= 5e-5 else "NO",
        ]
    )

    two_on_one = truncated_copy(two, os.path.join(root, "two_on_one"), STEPS - 1)
    run_in_process(two_on_one)
    diff = max_abs_diff(params_at(two_on_one, STEPS), reference)
    rows.append(
        [
            "restore 2x4 step-2 checkpoint on 1x8",
            "resume to step 3",
            f"params max abs diff {diff:.1e}",
            "<= 5e-5",
            "yes" if diff <= 5e-5 else "NO",
        ]
    )

    one_on_two = truncated_copy(one, os.path.join(root, "one_on_two"), STEPS - 1)
    run_local(root, one_on_two, 2, 2, "--config.mesh.fsdp=4", "--config.mesh.rules=fsdp")
    diff = max_abs_diff(params_at(one_on_two, STEPS), reference)
    rows.append(
        [
            "restore 1x8 step-2 checkpoint on 2x2 (fsdp=4)",
            "resume to step 3",
            f"params max abs diff {diff:.1e}",
            "<= 5e-5",
            "yes" if diff <= 5e-5 else "NO",
        ]
    )
    shutil.rmtree(root, ignore_errors=True)
    return rows


# -------------------------------------------------------------------------------------- main


def main(argv):
    del argv
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 8)
    jnp.zeros(())  # start the backend with 8 devices
    rows = memory_rows(_SIZE.value) + remat_rows(_SIZE.value) + accumulation_rows()
    if _MULTIPROCESS.value:
        rows += multiprocess_rows()
    header = ["measurement", "setting", "result", "goal", "ok"]
    table = common.markdown_table(header, rows)
    print(table)
    if _RECORD.value:
        common.record("Scaling", f"{NOTES}\n\n{common.machine()}\n\n{table}")


if __name__ == "__main__":
    app.run(main)
