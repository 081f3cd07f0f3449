"""Train-step speed and model FLOP utilisation (MFU) per model and objective, on one accelerator.

    python -m benchmarks.mfu                 # full sizes, bf16, on the default device
    python -m benchmarks.mfu --tiny          # tiny sizes: checks the script on a CPU
    python -m benchmarks.mfu --cases=vit_b_supervised,r3d50_cvrl --steps=10

Each case times vrl's own jitted train step (`vrl.state.make_train_step`: forward, backward,
AdamW, EMA) on a batch that lives on the device, and prints one table: step time, clips/s,
achieved TFLOP/s and MFU = model FLOPs per second / peak bf16 FLOP/s of the chip
(`vrl.metrics.PEAK_FLOPS`, dense, from the vendor data sheets).

Model FLOPs are analytic, counted as 2 x multiply-accumulates of the matrix products and
convolutions (norms, softmax and elementwise work are ignored, as in the MFU literature):

  ViT block on n tokens, width D, MLP width M:  2n(4D^2 + 2DM) + 4n^2 D
  tubelet embedding of n tokens:                 2n (pt ph pw 3) D
  convolution:                                   2 kt kh kw C_in C_out T' H' W'
  training = 3 x forward for trained parts (the backward pass is twice the forward),
             1 x forward for frozen parts (V-JEPA's EMA target, SALT's teacher)

Per objective: supervised = 3 ViT(N); VideoMAE = 3 [embed(N) + ViT blocks(K) + decoder(N)];
V-JEPA = sum over mask types 3 [embed(N) + blocks(K_m) + predictor(N)] + 1 ViT(N) target;
SALT = the same with the teacher's ViT(N) as target; CVRL = 3 R3D(2 views) (+ the MLP head).
XLA's own count of the compiled step is printed beside the analytic one as a check.

Imports only jax, flax, optax, einops, numpy, PIL and absl (through vrl's models, objectives,
optimiser and the numpy mask ops): no input pipeline libraries are needed.
"""

import dataclasses
import json
import math
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vrl import config as config_lib
from vrl import metrics, optim, registry, sharding, state
from vrl.models import r3d, vit
from vrl.objectives import base, jepa

_CASES = flags.DEFINE_list("cases", None, "Cases to run (default: all).")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny shapes, float32: a CPU check of the script.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per case (after 2 warm-up steps).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")

VIT_B = {"name": "vit", "size": "B"}
VIT_L = {"name": "vit", "size": "L"}
CASES = {
    "vit_b_supervised": dict(
        model=VIT_B, objective={"name": "supervised", "num_classes": 400}, batch=32
    ),
    "videomae_b": dict(
        model=VIT_B,
        objective={"name": "videomae", "decoder_width": 384, "decoder_depth": 4, "decoder_heads": 6},
        batch=64,
    ),
    "vjepa_l": dict(model=VIT_L, objective={"name": "vjepa"}, batch=24),
    "salt_l_teacher_b": dict(model=VIT_L, objective={"name": "salt"}, teacher=VIT_B, batch=24),
    "r3d50_cvrl": dict(
        model={"name": "r3d", "depth": 50}, objective={"name": "cvrl"}, views=2, batch=16
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


def make_batch(objective, case: dict, clip: tuple[int, int, int], batch: int) -> dict:
    """Random uint8 clips, labels and the objective's own masks (made by its numpy ops)."""
    rng = np.random.default_rng(0)
    views = case.get("views", 1)
    spec = base.ClipSpec(*clip, views=views)
    ops = [op for _, op in objective.batch_ops(spec)]
    shape = (views, *clip, 3) if views > 1 else (*clip, 3)
    examples = []
    for _ in range(batch):
        example = {"video": rng.integers(0, 256, shape, dtype=np.uint8)}
        for op in ops:
            example = op(example, rng)
        example["label/label"] = np.int32(rng.integers(0, getattr(objective, "num_classes", 1)))
        examples.append(example)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def vit_block_flops(n: float, width: int, mlp: int) -> float:
    return 2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width


def vit_flops(encoder: vit.ViT, n_total: int, n_kept: int) -> float:
    """Forward FLOPs of the ViT: embedding of every tubelet, blocks on the kept ones."""
    width, depth, _, mlp = encoder.dims
    pt, ph, pw = encoder.patch
    return 2 * n_total * pt * ph * pw * 3 * width + depth * vit_block_flops(n_kept, width, mlp)


def head_transformer_flops(n: int, k: int, enc_width: int, width: int, depth: int, out: int) -> float:
    """Decoder / predictor: embed K tokens, blocks on all N, project N tokens out."""
    return 2 * k * enc_width * width + depth * vit_block_flops(n, width, 4 * width) + 2 * n * width * out


def r3d_flops(model: r3d.R3D, frames: int, height: int, width: int) -> float:
    """Forward FLOPs of the convolutions of R3D, walking the same layout as the model."""
    block_type, counts = model._spec()
    total = 0.0
    t, h, w = math.ceil(frames / 2), math.ceil(height / 2), math.ceil(width / 2)
    c_in = r3d._scaled(64, model.width)
    total += 2 * 5 * 7 * 7 * 3 * c_in * t * h * w
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # max pool
    for stage, (count, base_width, kt) in enumerate(zip(counts, r3d.STAGE_WIDTHS, r3d.TEMPORAL_KERNELS)):
        features = r3d._scaled(base_width, model.width)
        for i in range(count):
            stride = 2 if (stage > 0 and i == 0) else 1
            h_out, w_out = math.ceil(h / stride), math.ceil(w / stride)
            if block_type == "basic":
                out = features
                total += 2 * kt * 9 * c_in * features * t * h_out * w_out
                total += 2 * 9 * features * features * t * h_out * w_out
            else:
                out = features * r3d.BOTTLENECK_EXPANSION
                total += 2 * kt * c_in * features * t * h * w
                total += 2 * 9 * features * features * t * h_out * w_out
                total += 2 * features * out * t * h_out * w_out
            if c_in != out or stride != 1:
                total += 2 * c_in * out * t * h_out * w_out
            c_in, h, w = out, h_out, w_out
    return total


def model_flops(objective, batch: dict, clip) -> float:
    """Analytic training FLOPs of one step (see the module docstring)."""
    encoder = objective.encoder
    size = batch["video"].shape[0]
    if isinstance(encoder, r3d.R3D):
        views = batch["video"].shape[1] if batch["video"].ndim == 6 else 1
        forward = r3d_flops(encoder, *clip) * views
        head = 2 * encoder.output_dim * getattr(objective, "head_hidden", 0) * views
        return 3 * size * (forward + head)
    n = math.prod(encoder.token_grid(*clip))
    width = encoder.output_dim
    if "keep_idx" in batch:  # VideoMAE
        k = batch["keep_idx"].shape[1]
        pt, ph, pw = encoder.patch
        decoder = head_transformer_flops(
            n, k, width, objective.decoder_width, objective.decoder_depth, pt * ph * pw * 3
        )
        return 3 * size * (vit_flops(encoder, n, k) + decoder)
    if "keep_idx/0" in batch:  # V-JEPA, SALT
        target_encoder = objective.teacher if isinstance(objective, jepa.SALT) else encoder
        target_width = target_encoder.output_dim
        total = vit_flops(target_encoder, n, n)
        i = 0
        while f"keep_idx/{i}" in batch:
            k = batch[f"keep_idx/{i}"].shape[1]
            predictor = head_transformer_flops(
                n, k, width, objective.predictor_width, objective.predictor_depth, target_width
            )
            total += 3 * (vit_flops(encoder, n, k) + predictor)
            i += 1
        return size * total
    return 3 * size * vit_flops(encoder, n, n)


def run_case(name: str, case: dict, tiny: bool, steps: int) -> dict:
    dtype = jnp.float32 if tiny else jnp.bfloat16
    clip = (4, 64, 64) if tiny else (16, 224, 224)
    batch_size = 2 if tiny else case["batch"]
    objective = build(case, tiny, dtype).for_training(1000)
    batch = make_batch(objective, case, clip, batch_size)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    rules = sharding.RULES["data"]
    tx, lr = optim.make(
        optim.OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05),
        total_steps=1000, batch_size=batch_size, steps_per_epoch=100,
    )
    init_batch = {k: v[:2] for k, v in batch.items()}
    train_state, shardings = state.init_state(objective, tx, init_batch, mesh, rules, seed=0)
    step_fn = state.make_train_step(objective, tx, lr, seed=0, accum=1, skip_nonfinite=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        device_batch = sharding.to_global(batch, mesh)
        batch_shardings = jax.tree.map(lambda x: x.sharding, device_batch)
        jitted = jax.jit(
            step_fn, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
            donate_argnums=0,
        )
        t0 = time.perf_counter()
        compiled = jitted.lower(train_state, device_batch).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(2):
            train_state, out = compiled(train_state, device_batch)
        jax.block_until_ready(out)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_state, out = compiled(train_state, device_batch)
        jax.block_until_ready((train_state, out))
        step_s = (time.perf_counter() - t0) / steps
    flops = model_flops(objective, batch, clip)
    xla = metrics.compiled_flops(compiled)
    peak = metrics.peak_flops()
    achieved = flops / step_s / jax.device_count()
    return {
        "case": name,
        "batch": batch_size,
        "step_ms": 1e3 * step_s,
        "clips_per_s": batch_size / step_s,
        "model_tflop_per_step": flops / 1e12,
        "xla_tflop_per_step": (xla * jax.device_count() / 1e12) if xla else None,
        "tflops_per_device": achieved / 1e12,
        "mfu": achieved / peak if peak else None,
        "compile_s": compile_s,
        "loss": float(out["train/loss"]),
    }


def table(rows: list[dict]) -> str:
    device = jax.devices()[0]
    lines = [
        f"MFU on {jax.device_count()} x {device.device_kind} (jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| case | batch | step (ms) | clips/s | model TFLOP/step | XLA TFLOP/step | TFLOP/s/device | MFU | compile (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak for this chip)"
        xla = f"{r['xla_tflop_per_step']:.4g}" if r["xla_tflop_per_step"] else "n/a"
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['step_ms']:.1f} | {r['clips_per_s']:.1f} | "
            f"{r['model_tflop_per_step']:.4g} | {xla} | {r['tflops_per_device']:.4g} | {mfu} | "
            f"{r['compile_s']:.0f} |"
        )
    return "\n".join(lines)


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
    print(table(rows))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
