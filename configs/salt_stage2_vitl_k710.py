"""SALT stage 2: a student encoder + predictor regress a frozen teacher's latents.

    python -m vrl.main --config=configs/salt_stage2_vitl_k710.py --workdir=STUDENT_DIR \
        --config.objective.teacher_checkpoint=TEACHER_DIR

The teacher is the encoder of a stage-1 run (configs/salt_stage1_vitl_k710.py), loaded
strictly from its checkpoint and never updated; its size may differ from the student's
(`:size=` sets the student). L1 on layer-normed teacher features of hidden tokens under V-JEPA's
masks, no EMA; data, optimiser and schedule as V-JEPA's. `:runlocal,teacher=DIR` runs on
synthetic data with a runlocal stage-1 teacher.
"""

import os

from vrl.config import defaults, load_file, parse_arg

VJEPA = os.path.join(os.path.dirname(__file__), "vjepa_vitl_k710.py")


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="L", teacher="")
    c = load_file(VJEPA, f"size={args.size}" + (",runlocal" if args.runlocal else ""))
    predictor = {
        k: c.objective[k] for k in ("predictor_width", "predictor_depth", "predictor_heads")
    }
    c.objective = defaults(
        "objective",
        "salt",
        teacher_checkpoint=args.teacher,
        num_blocks=(8, 2),
        block_scale=(0.15, 0.7),
        block_aspect=(0.75, 1.5),
        **predictor,
    )
    return c
