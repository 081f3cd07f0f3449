"""Does a masked step cost what its FLOPs say? VideoMAE with 90% tube masking vs no masking.

    python -m benchmarks.masked_speedup [--size=S] [--batch=4] [--steps=5] [--record]

Both steps are vrl's jitted VideoMAE train step on the same model, clip and batch, measured side
by side in one run; the only difference is the mask ratio (0.9 vs hiding a single token, the
least a reconstruction loss needs: every other token enters the encoder). Only kept tokens are
gathered into the encoder, so its cost should fall with the kept fraction while the decoder (all
positions) stays. Goal: measured speedup >= 0.6 x the analytic FLOP ratio (vrl/flops.py).
"""

import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from vrl import config as config_lib
from vrl import flops
from vrl.objectives import base

_SIZE = flags.DEFINE_enum("size", "S", ["Ti", "S", "B"], "ViT size.")
_BATCH = flags.DEFINE_integer("batch", 4, "Clips per step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per variant (median reported).")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip.")
_RES = flags.DEFINE_integer("resolution", 112, "Clip height and width.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

DECODER = {"Ti": (192, 3), "S": (192, 3), "B": (384, 6)}
GOAL = 0.6


def videomae(size: str, ratio: float, mask: str):
    encoder = config_lib.component(
        "model", {"name": "vit", "size": size}, "model", dtype=jnp.float32
    )
    width, heads = DECODER[size]
    return config_lib.component(
        "objective",
        {
            "name": "videomae",
            "mask": mask,
            "mask_ratio": ratio,
            "decoder_width": width,
            "decoder_depth": 4,
            "decoder_heads": heads,
        },
        "objective",
        encoder=encoder,
    )


def measure(size: str, batch: int, steps: int, frames: int, resolution: int) -> list[dict]:
    clip = base.ClipSpec(frames, resolution, resolution)
    tokens = (frames // 2) * (resolution // 16) ** 2  # 2x16x16 tubelets
    rows = []
    for label, ratio, mask in (("unmasked", 1 / tokens, "random"), ("tube 90%", 0.9, "tube")):
        objective = videomae(size, ratio, mask)
        data = common.make_batch(objective, clip, batch)
        timing = common.time_train_step(objective, data, steps)
        count = flops.model_flops(objective, data, (frames, resolution, resolution))
        rows.append({"variant": label, "kept": data["keep_idx"].shape[1], "flops": count, **timing})
    return rows


def main(argv):
    del argv
    rows = measure(_SIZE.value, _BATCH.value, _STEPS.value, _FRAMES.value, _RES.value)
    full, masked = rows
    flop_ratio = full["flops"] / masked["flops"]
    speedup = full["step_s"] / masked["step_s"]
    body = [
        [r["variant"], r["kept"], f"{r['flops'] / 1e9:.1f}", f"{1e3 * r['step_s']:.0f}"]
        for r in rows
    ]
    text = "\n".join(
        [
            f"VideoMAE ViT-{_SIZE.value}, batch {_BATCH.value}, {_FRAMES.value}x{_RES.value}x"
            f"{_RES.value} clips, float32. {common.machine()}",
            "",
            common.markdown_table(
                ["variant", "tokens in encoder", "GFLOP/step", "step (ms)"], body
            ),
            "",
            common.flop_ratio_verdict(speedup, flop_ratio, GOAL),
        ]
    )
    print(text)
    if _RECORD.value:
        common.record("Masked speedup (benchmarks/masked_speedup.py)", text)


if __name__ == "__main__":
    app.run(main)
