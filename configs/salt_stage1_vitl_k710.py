"""SALT stage 1: a pixel-reconstruction teacher under V-JEPA's multi-block masks.

"Rethinking JEPA" (SALT), 2025.

    python -m vrl.main --config=configs/salt_stage1_vitl_k710.py --workdir=TEACHER_DIR
    python -m vrl.main --config=configs/salt_stage2_vitl_k710.py --workdir=STUDENT_DIR \
        --config.objective.teacher_checkpoint=TEACHER_DIR

The VideoMAE loss (MSE on per-tubelet normalised pixels of hidden tubelets) with V-JEPA's two
mask types instead of tube masking, at the `vjepa_masks` op's defaults (stage 2 reads the same
values: blocks, scales, aspect, keep_batch, keep_quantile, drop, truncate_targets; by default
the V-JEPA reference's batch-minimum context and target sizes with tail truncation, so the
loss scores the first K_pred hidden tubelets); model, data, optimiser and schedule as
V-JEPA's (configs/vjepa_vitl_k710.py). SALT reports that the student is robust to a small
teacher, so `:size=B` is a sensible choice here when compute is short.
"""

import os

from configs.common import defaults
from vrl.config import load_file, parse_arg

VJEPA = os.path.join(os.path.dirname(__file__), "vjepa_vitl_k710.py")


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="L")
    c = load_file(VJEPA, f"size={args.size}" + (",runlocal" if args.runlocal else ""))
    c.objective = defaults(
        "objective", "videomae", mask="vjepa", decoder_width=512, decoder_heads=8
    )
    if args.runlocal:
        c.objective.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
    return c
