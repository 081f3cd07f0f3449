"""Attentive probe on frozen tokens (V-JEPA protocol).

    python -m vrl.probe --config=configs/probe/attentive.py --config.checkpoint=WORKDIR

One cross-attention block (16 heads) with one learned query over the encoder's tokens, then a
linear classifier; AdamW, cosine schedule, 20 epochs. The default grid trains 3 x 2 (lr, wd)
probes at once (one jitted step, vmapped) on 80% of the train videos, chooses the point with the
best top-1 on the other 20% (never on test), trains it on all of train and reports its test
numbers with the held-out top-1 of every point.

`:vjepa` is the paper's K400 protocol (jepa `configs/evals/vitl16_k400_16x8x3.yaml`): the
*target* (EMA) encoder of a V-JEPA checkpoint (`checkpoint_key: target_encoder`; set
`--config.encoders="('pretrained',)"` for the online one), lr 1e-3 and weight decay 0.01 on all
of train, 20 epochs without warmup, batch 256 (4 x 64 GPUs), 16 heads (the ViT-L/H encoder's),
16 frames at stride 4, 8 segments. It trains on freshly augmented clips every epoch
(`probe.train_augmented`, jepa `evals/video_classification_frozen/eval.py` `make_dataloader`): per
segment RandAugment rand-m7-n4-mstd0.5, a random resized crop of area (0.08, 1) and aspect
(3/4, 4/3) to 224, no flip, random erasing with p 0.25; the frozen encoder runs at every step.
As jepa's `init_opt`, weight decay follows a cosine to 1e-6 and gradients are clipped at 1.
As jepa's `VideoDataset`, each of the 8 windows lies in its own eighth of the video, at a
random offset for training and at the start of the eighth for testing
(`multiview_clips(segments=True)`). Testing: 8 segments x 3 views, 224 crops, cached. Token
caches are [N, V, n, D] on the host, so large test sets need a machine with the memory.

`probe.train_augmented=True` (one (lr, wd) point) trains on augmented clips of `train_pp` every
epoch instead of one cached token sequence per train clip.
"""

from configs.common import defaults, job_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, source="", vjepa=False)
    probe = defaults("probe", "attentive")
    probe.update(lrs=(3e-3, 1e-3, 3e-4), weight_decays=(0.01, 0.1), epochs=20, batch_size=128)
    c = job_config(probe, args.source)
    c.encoders = ("pretrained",)
    if args.vjepa:
        c.encoders = ("target",)
        c.probe.update(
            lrs=(1e-3,),
            weight_decays=(0.01,),
            epochs=20,
            warmup_epochs=0.0,
            batch_size=256,
            heads=16,
            segments=8,
            train_augmented=True,
            final_weight_decay=1e-6,
            clip_norm=1.0,
        )
        c.train_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4, segments=True, random=True)"
            "|rand_augment(num_ops=4, magnitude=7, magnitude_std=0.5)"
            "|random_resized_crop(size=224, area=(0.08, 1.0), aspect=(0.75, 1.3333333333333333))"
            "|random_erasing(p=0.25)"
        )
        c.test_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4, segments=True)"
            "|resize_short(size=224)|three_crop(size=224)"
        )
    return c
