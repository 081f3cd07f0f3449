"""Train-step speed and model FLOP utilisation (MFU) per model and objective, on one accelerator.

    python -m benchmarks.mfu                 # full sizes, bf16, on the default device
    python -m benchmarks.mfu --tiny          # tiny sizes: checks the script on a CPU
    python -m benchmarks.mfu --cases=vit_b_supervised,cvrl_r3d50 --steps=10

Each case times vrl's own jitted train step (`vrl.state.make_train_step`: forward, backward,
AdamW, EMA) on a batch that lives on the device, and prints one table: step time, clips/s,
achieved TFLOP/s and MFU = model FLOPs per second / peak bf16 FLOP/s of the chip
(`vrl.metrics.PEAK_FLOPS`, dense, from the vendor data sheets).

Model FLOPs are analytic (vrl/flops.py gives the formulas); XLA's own count of the
compiled step is printed beside them as a check.

Imports only jax, flax, optax, einops, numpy, PIL and absl (through vrl's models, objectives,
optimiser and the numpy mask ops): no input pipeline libraries are needed.
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from vrl import config as config_lib
from vrl import flops as flops_lib
from vrl import metrics, registry
from vrl.objectives import base, jepa

_CASES = flags.DEFINE_list("cases", None, "Cases to run (default: all).")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny shapes, float32: a CPU check of the script.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per case (after 2 warm-up steps).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

VIT_B = {"name": "vit", "size": "B"}
VIT_L = {"name": "vit", "size": "L"}
CASES = {
    "vit_b_supervised": dict(
        model=VIT_B, objective={"name": "supervised", "num_classes": 400}, batch=32
    ),
    "videomae_b": dict(
        model=VIT_B,
        objective={
            "name": "videomae",
            "decoder_width": 384,
            "decoder_depth": 4,
            "decoder_heads": 6,
        },
        batch=64,
    ),
    "vjepa_l": dict(model=VIT_L, objective={"name": "vjepa"}, batch=24),
    "salt_l_teacher_b": dict(model=VIT_L, objective={"name": "salt"}, teacher=VIT_B, batch=24),
    "cvrl_r3d50": dict(
        model={"name": "cvrl_r3d", "depth": 50}, objective={"name": "cvrl"}, views=2, batch=16
    ),
}
TINY_VIT = {"width": 32, "depth": 2, "heads": 2, "patch": (2, 8, 8)}


@dataclasses.dataclass(frozen=True)
class BenchSALT(jepa.SALT):
    """SALT with a randomly initialised teacher of a given size (speed does not need weights)."""

    teacher_model: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        pass

    @property
    def teacher(self):
        return config_lib.component(
            "model", self.teacher_model, "teacher", dtype=self.encoder.dtype
        )

    def post_init(self, params, extra):
        return params, extra


def build(case: dict, tiny: bool, dtype):
    model = dict(case["model"])
    if tiny:
        model.update(TINY_VIT if model["name"] == "vit" else {"depth": 18, "width": 0.125})
    encoder = config_lib.component("model", model, "model", dtype=dtype)
    objective_cfg = dict(case["objective"])
    name = objective_cfg.pop("name")
    if tiny and name in ("vjepa", "salt"):
        objective_cfg.update(predictor_width=32, predictor_depth=1, predictor_heads=2)
    if tiny and name == "videomae":
        objective_cfg.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
    if tiny and name == "cvrl":
        objective_cfg.update(head_hidden=64, head_layers=2, head_out=32)
    if name == "salt":
        teacher = dict(case["teacher"], **(TINY_VIT if tiny else {}))
        return BenchSALT(encoder=encoder, teacher_model=teacher, **objective_cfg)
    return registry.get("objective", name)(encoder=encoder, **objective_cfg)


def run_case(name: str, case: dict, tiny: bool, steps: int) -> dict:
    dtype = jnp.float32 if tiny else jnp.bfloat16
    clip = (4, 64, 64) if tiny else (16, 224, 224)
    batch_size = 2 if tiny else case["batch"]
    objective = build(case, tiny, dtype).for_training(1000)
    batch = common.make_batch(
        objective, base.ClipSpec(*clip, views=case.get("views", 1)), batch_size
    )
    timing = common.time_train_step(objective, batch, steps)
    flops = flops_lib.model_flops(objective, batch, clip)
    xla = metrics.compiled_flops(timing["compiled"])
    peak = metrics.peak_flops()
    achieved = flops / timing["step_s"] / jax.device_count()
    return {
        "case": name,
        "batch": batch_size,
        "step_ms": 1e3 * timing["step_s"],
        "clips_per_s": batch_size / timing["step_s"],
        "model_tflop_per_step": flops / 1e12,
        "xla_tflop_per_step": (xla * jax.device_count() / 1e12) if xla else None,
        "tflops_per_device": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "compile_s": timing["compile_s"],
        "loss": timing["loss"],
    }


def table(rows: list[dict]) -> str:
    header = [
        "case",
        "batch",
        "step (ms)",
        "clips/s",
        "model TFLOP/step",
        "XLA TFLOP/step",
        "TFLOP/s/device",
        "MFU",
        "compile (s)",
    ]
    body = []
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak for this chip)"
        xla = f"{r['xla_tflop_per_step']:.4g}" if r["xla_tflop_per_step"] else "n/a"
        body.append(
            [
                r["case"],
                r["batch"],
                f"{r['step_ms']:.1f}",
                f"{r['clips_per_s']:.1f}",
                f"{r['model_tflop_per_step']:.4g}",
                xla,
                f"{r['tflops_per_device']:.4g}",
                mfu,
                f"{r['compile_s']:.0f}",
            ]
        )
    return common.machine() + "\n\n" + common.markdown_table(header, body)


def main(argv):
    del argv
    names = _CASES.value or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown cases {unknown}; allowed: {', '.join(CASES)}")
    rows = []
    for name in names:
        rows.append(run_case(name, CASES[name], _TINY.value, _STEPS.value))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    if _RECORD.value:
        common.record("MFU (benchmarks/mfu.py)", text)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
