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
of train, 16 heads (the ViT-L/H encoder's), 16 frames at stride 4, 8 segments x 3 views, test
pipelines explicit (224 crops). Token caches are [N, V, n, D] on the host, so large datasets need
a machine with the memory for them.
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
        c.probe.update(lrs=(1e-3,), weight_decays=(0.01,), heads=16, segments=8)
        c.train_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4)|resize_short(size=256)"
            "|center_crop(size=224)"
        )
        c.test_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4)|resize_short(size=224)"
            "|three_crop(size=224)"
        )
    return c
