"""Attentive probe on frozen tokens (V-JEPA protocol).

    python -m vrl.probe --config=configs/probe/attentive.py --config.checkpoint=WORKDIR

One cross-attention block with one learned query over the encoder's tokens, then a linear
classifier; AdamW, cosine schedule, 20 epochs. V-JEPA trains at lr 1e-3, weight decay 0.01; the
grid here trains 3 x 2 probes at once (one jitted step, vmapped) and reports the best with all
of them in the result JSON. `:vjepa` is the paper's K400 protocol: 16 frames at stride 4,
8 segments x 3 views, test pipelines explicit (224 crops). Token caches are [N, V, n, D] on the
host, so large datasets need a machine with the memory for them.
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
        c.probe.update(lrs=(1e-3,), weight_decays=(0.01,), segments=8)
        c.train_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4)|resize_short(size=256)"
            "|center_crop(size=224)"
        )
        c.test_pp = (
            "multiview_clips(num_clips=8, frames=16, stride=4)|resize_short(size=224)"
            "|three_crop(size=224)"
        )
    return c
