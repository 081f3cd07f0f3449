"""V-JEPA ViT-L/16 pretraining on Kinetics-710 (Bardes et al., 2024).

    python -m vrl.main --config=configs/vjepa_vitl_k710.py --workdir=WORKDIR
    python -m vrl.main --config=configs/vjepa_vitl_k710.py:runlocal --workdir=/tmp/vjepa

16 frames at frame step 4, 224x224, 2x16x16 tubelets; two multi-block mask types per clip
(short-range 8 blocks x 0.15, long-range 2 blocks x 0.7, aspect [0.75, 1.5], spanning all frames);
a 12-block 384-wide predictor; targets from an EMA encoder (momentum 0.998 -> 1.0), layer-normed;
L1 loss averaged over mask types. AdamW (0.9, 0.999), lr 2e-4 -> 6.25e-4 over 40 warmup epochs
(12k steps) then cosine to 1e-6, weight decay 0.04 -> 0.4, gradient clipping 10, batch 3072,
90k iterations with every schedule stretched by 1.25 and stopped at 80% (schedule_scale=1.25).
Kinetics-710 is K400 + K600 + K700 without validation videos: prepare it as one dataset
`kinetics710` (docs/DATA.md). Sizes: `:size=B|L|H`.
"""

import os

from configs.common import TINY_VIT, data_section, defaults, run_config, runlocal_data
from vrl.config import check_arg, parse_arg
from vrl.models.vit import SIZES


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="L")
    check_arg("size", args.size, list(SIZES))
    c = run_config(total_steps=90_000, log_every_steps=100, compute_dtype="bfloat16")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics710",
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        },
        test_split="validation",
        batch_size=3072,
        train_pp="uniform_clip(frames=16, stride=4)"
        "|random_resized_crop(size=224, area=(0.3, 1.0), aspect=(0.75, 1.35))",
        test_pp="center_clip(frames=16, stride=4)|resize_short(size=224)|center_crop(size=224)",
        num_workers=16,
    )
    c.model = defaults("model", "vit", size=args.size)
    # The EMA momentum rises over the stretched schedule (1.25 x the run, as schedule_scale).
    c.objective = defaults("objective", "vjepa", ema_fraction=1.25)
    c.optim.update(
        name="adamw",
        lr=6.25e-4,
        warmup_init_lr=2e-4,
        warmup_steps=12_000,
        end_lr=1e-6,
        schedule_scale=1.25,
        weight_decay=0.04,
        weight_decay_end=0.4,
        clip_norm=10.0,
    )
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        # 64x64 clips give an 8x8 token plane: big enough for two long-range blocks.
        c.data = runlocal_data(
            "uniform_clip(frames=8, stride=2)|random_resized_crop(size=64, area=(0.3, 1.0))",
            "center_clip(frames=8, stride=2)|resize_short(size=64)|center_crop(size=64)",
        )
        c.model.update(TINY_VIT)
        c.objective.update(predictor_width=32, predictor_depth=1, predictor_heads=2)
        c.optim.update(warmup_steps=1, lr=1e-3, warmup_init_lr=0.0)
    return c
