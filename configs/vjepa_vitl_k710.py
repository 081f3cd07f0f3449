"""V-JEPA ViT-L/16 pretraining on Kinetics-710 (Bardes et al., 2024).

    python -m vrl.main --config=configs/vjepa_vitl_k710.py --workdir=WORKDIR
    python -m vrl.main --config=configs/vjepa_vitl_k710.py:runlocal --workdir=/tmp/vjepa
    python -m vrl.main --config=configs/vjepa_vitl_k710.py:data=videomix2m --workdir=WORKDIR

Follows the released code (facebookresearch/jepa `configs/pretrain/vitl16.yaml`, run by
`app/vjepa/train.py`) where it and the paper differ. 16 frames at frame step 4, 224x224, 2x16x16
tubelets; random resized crop (area [0.3, 1], aspect [0.75, 1.35]) and a horizontal flip
(`make_transforms(random_horizontal_flip=True)`); sine-cosine positions with `uniform_power`
(2*ceil(D/6) channels per axis) in encoder and predictor. Two multi-block mask types per clip
(short-range 8 blocks x 0.15, long-range 2 blocks x 0.7, aspect [0.75, 1.5], spanning all
frames); a 12-block 384-wide predictor with the encoder's heads (16), attending over context and
target tokens only, one zero-initialised mask token per mask type; targets from an EMA encoder
(momentum 0.998 -> 1.0, linear over the stretched schedule), layer-normed; L1 loss averaged over
mask types. AdamW (0.9, 0.999), lr 2e-4 -> 6.25e-4 over 40 warmup epochs (12k steps) then cosine
to 1e-6, weight decay 0.04 -> 0.4, gradient clipping 10 (see `clip_norm` below), batch 3072, 90k
iterations with every schedule stretched by 1.25 and stopped at 80% (schedule_scale=1.25).
Kinetics-710 is K400 + K600 + K700 without validation videos: prepare it as one dataset
`kinetics710` (docs/DATA.md). Sizes: `:size=B|L|H`.

Data, `:data=k710|videomix2m` (default k710). The release trains on VideoMix2M (about 2M
videos, the paper): `configs/pretrain/vitl16.yaml` lists three CSVs (Kinetics-710, SSv2,
HowTo100M) and sets no `datasets_weights`, so `VideoDataset` concatenates them and a
`DistributedSampler` shuffles all videos together, each once per epoch: every dataset in
proportion to its size. `:data=videomix2m` does the same with a `mixture` source
(vrl/data/mixture.py, `weights=None`) of the prepared TFDS datasets `kinetics710`, `ssv2` and
`howto100m` in $VRL_DATA_DIR (docs/DATA.md). Their labels are not comparable across datasets
and pretraining ignores them; batches carry `label/source` (0 K710, 1 SSv2, 2 HowTo100M).
Every part reads the same split, and HowTo100M has no `validation`: probe these checkpoints
on their own data (configs/probe/*.py). `:runlocal,data=videomix2m` mixes two small synthetic
sources instead.
"""

import os

from ml_collections.config_dict import placeholder

from configs.common import (
    TINY_VIT,
    data_section,
    defaults,
    mixture_source,
    run_config,
    runlocal_data,
    runlocal_mixture_data,
)
from vrl.config import check_arg, parse_arg
from vrl.models.vit import SIZES

# `:data=` -> the prepared TFDS datasets read (several: a `mixture`, in proportion to size).
DATA = {"k710": ("kinetics710",), "videomix2m": ("kinetics710", "ssv2", "howto100m")}


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="L", data="k710")
    check_arg("size", args.size, list(SIZES))
    check_arg("data", args.data, DATA)
    c = run_config(total_steps=90_000, log_every_steps=100, compute_dtype="bfloat16")
    data_dir = os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets")
    parts = [{"name": "tfds", "dataset": name, "data_dir": data_dir} for name in DATA[args.data]]
    c.data = data_section(
        parts[0] if len(parts) == 1 else mixture_source(*parts),
        test_split="validation",
        batch_size=3072,
        train_pp="uniform_clip(frames=16, stride=4)"
        "|random_resized_crop(size=224, area=(0.3, 1.0), aspect=(0.75, 1.35))|flip(p=0.5)",
        test_pp="center_clip(frames=16, stride=4)|resize_short(size=224)|center_crop(size=224)",
        num_workers=16,
    )
    # `uniform_power: true` in the release: the same table in encoder and predictor.
    c.model = defaults("model", "vit", size=args.size, posemb="sincos_uniform")
    c.objective = defaults(
        "objective",
        "vjepa",
        # The release's predictor (`init_video_model`): num_heads=encoder.num_heads, context
        # and target tokens only, `zero_init_mask_tokens: true`.
        predictor_heads=placeholder(int),  # unset: the encoder's
        predictor_targets="targets_only",
        predictor_posemb="sincos_uniform",
        predictor_zero_mask_tokens=True,
        # momentum at step i = 0.998 + i * 0.002 / (1.25 * total_steps), as the release's
        # `momentum_scheduler` over ipe * epochs * ipe_scale iterations (vrl rounds that
        # horizon to a whole step).
        ema_fraction=1.25,
    )
    c.optim.update(
        name="adamw",
        lr=6.25e-4,
        warmup_init_lr=2e-4,
        warmup_steps=12_000,
        end_lr=1e-6,
        schedule_scale=1.25,
        weight_decay=0.04,
        weight_decay_end=0.4,
        # `clip_grad: 10.0`, applied as `app/vjepa/train.py` does: the encoder's and the
        # predictor's gradient norms separately, once `epoch > warmup` (41 x 300 iterations).
        clip_norm=10.0,
        clip_per_module=True,
        clip_from_steps=12_300,
    )
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        # 64x64 clips give an 8x8 token plane: big enough for two long-range blocks.
        local_data = runlocal_data if args.data == "k710" else runlocal_mixture_data
        c.data = local_data(
            "uniform_clip(frames=8, stride=2)|random_resized_crop(size=64, area=(0.3, 1.0))"
            "|flip(p=0.5)",
            "center_clip(frames=8, stride=2)|resize_short(size=64)|center_crop(size=64)",
        )
        c.model.update(TINY_VIT)
        c.objective.update(predictor_width=32, predictor_depth=1, predictor_heads=2)
        c.optim.update(warmup_steps=1, lr=1e-3, warmup_init_lr=0.0)
    return c
