"""Does TokenLearner save what its FLOPs say? A ViT with TokenLearner at the mid layer vs without.

    python -m benchmarks.tokenlearner_speedup [--size=S] [--resolution=160] [--batch=2] [--record]
    python -m benchmarks.tokenlearner_speedup --tiny --rounds=1 --steps=1    # a quick check

Both are vrl's jitted supervised train step on the same clip and batch, timed in alternating
rounds in one run. With TokenLearner after half of the blocks, each frame's h*w tokens become
`tokens` learned ones, so the second half of the network runs on t*S tokens; the analytic FLOP
ratio (vrl/flops.py, TokenLearner and TokenFuser included) says what that should save.
Reported: the measured speedup (median of the per-round ratios) and the fraction of the FLOP
ratio it realises (goal >= 0.6, as for masked pretraining in benchmarks/masked_speedup.py).
"""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from vrl import config as config_lib
from vrl import flops
from vrl.models import vit
from vrl.objectives import base

_SIZE = flags.DEFINE_enum("size", "S", list(vit.SIZES), "ViT size.")
_BATCH = flags.DEFINE_integer("batch", 2, "Clips per step.")
_FRAMES = flags.DEFINE_integer("frames", 16, "Frames per clip.")
_RES = flags.DEFINE_integer("resolution", 160, "Clip height and width.")
_TOKENS = flags.DEFINE_integer("tokens", 8, "Learned tokens per frame.")
_VERSION = flags.DEFINE_enum("version", "1.1", ["1.1", "1.0"], "TokenLearner version.")
_FUSER = flags.DEFINE_bool("fuser", False, "Add TokenFuser after every later block.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds of the two variants.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per variant per round (median kept).")
_TINY = flags.DEFINE_bool("tiny", False, "A tiny ViT on tiny clips: a quick check of the script.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

GOAL = 0.6
TINY = dict(model={"width": 32, "depth": 2, "heads": 2, "patch": (2, 8, 8)}, clip=(4, 32, 32))
NUM_CLASSES = 400


def objective(model: dict, tokenlearner: dict | None):
    encoder = config_lib.component(
        "model", {"name": "vit", **model, **(tokenlearner or {})}, "model", dtype=jnp.float32
    )
    return config_lib.component(
        "objective",
        {"name": "supervised", "num_classes": NUM_CLASSES},
        "objective",
        encoder=encoder,
    )


def measure(model: dict, clip, batch_size: int, tokenlearner: dict, rounds: int, steps: int):
    """Rows for the plain ViT and the ViT with TokenLearner, timed in alternating rounds."""
    variants = {"ViT": objective(model, None), "ViT + TokenLearner": objective(model, tokenlearner)}
    batch = common.make_batch(variants["ViT"], base.ClipSpec(*clip), batch_size)
    times = {name: [] for name in variants}
    order = list(variants)
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            timing = common.time_train_step(variants[name], batch, steps, warmup=1)
            times[name].append(timing["step_s"])
    rows = []
    for name, obj in variants.items():
        rows.append(
            {
                "variant": name,
                "tokens": _tokens_after(obj.encoder, clip),
                "flops": flops.model_flops(obj, batch, clip),
                "step_s": float(np.median(times[name])),
                "times": times[name],
            }
        )
    return rows


def _tokens_after(encoder: vit.ViT, clip) -> int:
    """Tokens the last block sees."""
    t, h, w = vit.token_grid_of(clip, encoder.patch)
    if encoder.tokenlearner_layer is None:
        return t * h * w
    return t * encoder.tokenlearner_tokens


def main(argv):
    del argv
    model = {"size": _SIZE.value, "patch": (2, 16, 16)}
    clip = (_FRAMES.value, _RES.value, _RES.value)
    if _TINY.value:
        model, clip = dict(TINY["model"]), TINY["clip"]
    depth = config_lib.component("model", {"name": "vit", **model}, "model").dims[1]
    tokenlearner = dict(
        tokenlearner_layer=depth // 2,
        tokenlearner_tokens=_TOKENS.value,
        tokenlearner_version=_VERSION.value,
        tokenfuser=_FUSER.value,
    )
    # Rounds after the first load each compiled step from this cache instead of recompiling.
    with tempfile.TemporaryDirectory() as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        rows = measure(model, clip, _BATCH.value, tokenlearner, _ROUNDS.value, _STEPS.value)
    plain, learned = rows
    flop_ratio = plain["flops"] / learned["flops"]
    per_round = [p / q for p, q in zip(plain["times"], learned["times"])]
    speedup = float(np.median(per_round))
    body = [
        [r["variant"], r["tokens"], f"{r['flops'] / 1e9:.4g}", f"{1e3 * r['step_s']:.0f}"]
        for r in rows
    ]
    name = "x".join(map(str, clip))
    text = "\n".join(
        [
            f"Supervised step, ViT-{model.get('size', 'tiny')} "
            f"{'(tiny) ' if _TINY.value else ''}batch {_BATCH.value}, {name} clips, float32; "
            f"TokenLearner v{_VERSION.value} after block {depth // 2} of {depth}, {_TOKENS.value} "
            f"tokens per frame{', TokenFuser' if _FUSER.value else ''}. {common.machine()}",
            "",
            common.markdown_table(
                ["variant", "tokens in last block", "GFLOP/step", "step (ms)"], body
            ),
            "",
            common.flop_ratio_verdict(speedup, flop_ratio, GOAL, per_round),
        ]
    )
    print(text)
    if _RECORD.value:
        common.record("TokenLearner speedup (benchmarks/tokenlearner_speedup.py)", text)


if __name__ == "__main__":
    app.run(main)
