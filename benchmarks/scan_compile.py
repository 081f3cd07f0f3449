"""Compile time of a ViT train step, blocks unrolled vs scanned (`model.scan_layers=True`).

    python -m benchmarks.scan_compile [--sizes=B,L,H,g] [--batch=1] [--remat] [--record]
    python -m benchmarks.scan_compile --tiny      # a quick check of the script

Unrolled, XLA traces, optimises and emits code for every block (compile time grows with depth);
scanned, the blocks are one `nn.scan` over stacked parameters and the body is compiled once.
For each size: vrl's supervised train step (AdamW) at the published width/depth/heads, lowered
from abstract shapes (no parameter is allocated, nothing runs) and compiled with
`jax.jit(...).lower(...).compile()` on the default backend, both layouts in one run.
Reported: trace + lower seconds, compile seconds, their sum and the unrolled / scanned ratio.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from vrl import config as config_lib
from vrl import optim, sharding, state
from vrl.durations import RunLength
from vrl.models import vit
from vrl.objectives import base

_SIZES = flags.DEFINE_list("sizes", ["B", "L", "H", "g"], "ViT sizes (vrl.models.vit.SIZES).")
_BATCH = flags.DEFINE_integer("batch", 1, "Clips per step.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip.")
_RES = flags.DEFINE_integer("resolution", 224, "Clip height and width.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise each block (policy 'full').")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny ViTs on tiny clips: a quick check of the script.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

NUM_CLASSES = 400
TINY = {
    "depths": (2, 4),
    "model": {"width": 32, "heads": 2, "patch": (2, 8, 8)},
    "clip": (4, 32, 32),
}


def objective(model: dict) -> base.Objective:
    encoder = config_lib.component("model", {"name": "vit", **model}, "model", dtype=jnp.float32)
    return config_lib.component(
        "objective",
        {"name": "supervised", "num_classes": NUM_CLASSES},
        "objective",
        encoder=encoder,
    )


def compile_seconds(obj: base.Objective, clip, batch_size: int) -> dict:
    """(trace + lower, compile) seconds of the train step for abstract state and batch."""
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1), jax.devices()[:1])
    rules = sharding.RULES["data"]
    length = RunLength(steps_per_epoch=100, batch_size=batch_size, total_steps=1000)
    tx, lr = optim.make(optim.OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05), length)
    shape = (*clip, 3)
    init_batch = {
        "video": np.zeros((2, *shape), np.uint8),
        "label/label": np.zeros((2,), np.int32),
    }
    abstract, shardings = state.abstract_init_state(obj, tx, init_batch, mesh, rules)
    step_fn = state.make_train_step(obj, tx, lr, seed=0, accum=1, skip_nonfinite=False)
    batch = {
        k: jax.ShapeDtypeStruct(
            (batch_size, *v.shape[1:]), v.dtype, sharding=sharding.batch_sharding(mesh, v.ndim)
        )
        for k, v in init_batch.items()
    }
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jitted = jax.jit(
            step_fn,
            in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, batch)),
            out_shardings=(shardings, None),
            donate_argnums=0,
        )
        t0 = time.perf_counter()
        lowered = jitted.lower(abstract, batch)
        lower_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowered.compile()
        compile_s = time.perf_counter() - t0
    return {"lower_s": lower_s, "compile_s": compile_s}


def measure(cases, clip, batch_size: int, remat: bool, verbose: bool = True) -> list[list]:
    """One table row per (name, model dict): both layouts, compiled one after the other."""
    rows = []
    for name, model in cases:
        width, depth, *_ = vit.ViT(**model).dims
        got = {}
        for scan in (False, True):
            got[scan] = compile_seconds(
                objective({**model, "remat": remat, "scan_layers": scan}), clip, batch_size
            )
            total = got[scan]["lower_s"] + got[scan]["compile_s"]
            if not verbose:
                continue
            print(
                f"  {name} {'scanned' if scan else 'unrolled'}: lower {got[scan]['lower_s']:.1f} s,"
                f" compile {got[scan]['compile_s']:.1f} s, total {total:.1f} s",
                flush=True,
            )
        totals = {s: g["lower_s"] + g["compile_s"] for s, g in got.items()}
        rows.append(
            [
                name,
                depth,
                width,
                f"{got[False]['lower_s']:.1f} / {got[True]['lower_s']:.1f}",
                f"{got[False]['compile_s']:.1f} / {got[True]['compile_s']:.1f}",
                f"{totals[False]:.1f} / {totals[True]:.1f}",
                f"{totals[False] / totals[True]:.1f}x",
            ]
        )
    return rows


def main(argv):
    del argv
    if _TINY.value:
        cases = [(f"tiny-{d}", {**TINY["model"], "size": "Ti", "depth": d}) for d in TINY["depths"]]
        clip = TINY["clip"]
    else:
        cases = [(f"ViT-{s}", {"size": s}) for s in _SIZES.value]
        clip = (_FRAMES.value, _RES.value, _RES.value)
    print(
        f"Train step compile time, unrolled vs scanned blocks: supervised, AdamW, batch "
        f"{_BATCH.value}, clip {clip[0]}x{clip[1]}x{clip[2]}, remat={_REMAT.value}",
        flush=True,
    )
    # One throwaway compile of each layout first: XLA's one-time start-up would otherwise be
    # charged to whichever case comes first.
    warmup = [("warmup", {**TINY["model"], "size": "Ti", "depth": 1})]
    measure(warmup, TINY["clip"], 1, _REMAT.value, verbose=False)
    rows = measure(cases, clip, _BATCH.value, _REMAT.value)
    header = [
        "model",
        "depth",
        "width",
        "trace+lower s (unrolled / scanned)",
        "compile s (unrolled / scanned)",
        "total s (unrolled / scanned)",
        "unrolled / scanned",
    ]
    table = common.markdown_table(header, rows)
    body = (
        f"`python -m benchmarks.scan_compile --sizes={','.join(_SIZES.value)} "
        f"--batch={_BATCH.value}{' --remat' if _REMAT.value else ''}` "
        f"(clip {clip[0]}x{clip[1]}x{clip[2]})\n\n{common.machine()}\n\n{table}\n"
    )
    print(f"\n{common.machine()}\n\n{table}")
    if _RECORD.value and not _TINY.value:
        common.record("Scanned ViT blocks: train-step compile time", body)


if __name__ == "__main__":
    app.run(main)
