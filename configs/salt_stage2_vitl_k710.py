"""SALT stage 2: a student encoder + predictor regress a frozen teacher's latents.

    python -m vrl.main --config=configs/salt_stage2_vitl_k710.py --workdir=STUDENT_DIR \
        --config.objective.teacher_checkpoint=TEACHER_DIR

The teacher is the encoder of a stage-1 run (configs/salt_stage1_vitl_k710.py), loaded
strictly from its checkpoint and never updated; its size may differ from the student's
(`:size=` sets the student). L1 on layer-normed teacher features of the scored tokens under the
teacher's masks (stage 1's multi-block settings: context size, tail truncation and target
truncation included), no EMA; data, optimiser and schedule as stage 1's (V-JEPA's), the
predictor V-JEPA's (every `predictor_*` key of configs/vjepa_vitl_k710.py).
`:runlocal,teacher=DIR` runs on synthetic data with a runlocal stage-1 teacher.
"""

import os

from ml_collections.config_dict import placeholder

from configs.common import defaults
from vrl import registry
from vrl.config import ConfigError, load_file, parameters, parse_arg

HERE = os.path.dirname(__file__)
STAGE1 = os.path.join(HERE, "salt_stage1_vitl_k710.py")
VJEPA = os.path.join(HERE, "vjepa_vitl_k710.py")


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="L", teacher="")
    variant = f"size={args.size}" + (",runlocal" if args.runlocal else "")
    c = load_file(STAGE1, variant)
    vjepa = load_file(VJEPA, variant).objective
    c.objective = defaults(
        "objective",
        "salt",
        teacher_checkpoint=args.teacher,
        **predictor(vjepa),
        **teacher_masks(c.objective),
    )
    return c


def predictor(vjepa_objective) -> dict:
    """V-JEPA's `predictor_*` keys; unset ones (e.g. heads: the encoder's) stay unset."""
    return {
        key: placeholder(vjepa_objective.get_ref(key).get_type()) if value is None else value
        for key, value in vjepa_objective.items()
        if key.startswith("predictor_")
    }


# SALT objective key -> key of the `vjepa_masks` op that stage 1's `mask="vjepa"` makes.
MASK_KEYS = {
    "num_blocks": "num_blocks",
    "block_scale": "scale",
    "block_aspect": "aspect",
    "keep_batch": "keep_batch",
    "keep_quantile": "keep_quantile",
    "context_drop": "drop",
    "truncate_targets": "truncate_targets",
}


def teacher_masks(stage1_objective) -> dict:
    """The multi-block settings stage 1 trained the teacher under (its `vjepa_masks` op's
    defaults: the videomae objective passes none), so the student hides what its teacher
    learned to fill in, with the same context size."""
    if stage1_objective.mask != "vjepa":
        raise ConfigError(f"salt stage 2: stage 1's mask is {stage1_objective.mask!r}, not 'vjepa'")
    op = parameters(registry.get("transform", "vjepa_masks"))
    return {key: op[op_key][1] for key, op_key in MASK_KEYS.items()}
