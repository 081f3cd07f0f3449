"""A quickstart-sized run that a CPU finishes in seconds: CVRL on a tiny ViT, synthetic videos.

    python -m vrl.main --config=tests/reliability/tiny_run.py:steps=12 --workdir=DIR

Checkpoints every step (three kept), so a kill can land before, during or after any save.
`videos=ROOT` trains on the video folder ROOT listed by ROOT/train.csv instead, `tfds=DIR` on
the prepared dataset "reliability_toy" in DIR (32x32 videos of 16 frames or more);
`short_side=N` decodes the video folder's videos at that size.
"""

import ml_collections

from vrl import config as config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(arg, steps=12, videos="", tfds="", short_side=0)
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = args.steps
    c.log_every_steps = 1
    c.on_nonfinite = "stop"
    c.preemption_grace_s = 60.0
    c.max_param_norm = 1e6
    c.allow_config_change = False
    c.data = dict(
        source=dict(name="synthetic", frames=16, size=32, num_videos=16),
        batch_size=8,
        train_pp="cvrl_clips(frames=4, stride=2)|random_resized_crop(size=16, area=(0.3, 1.0))",
        test_pp="center_clip(frames=4, stride=2)|resize_short(size=16)|center_crop(size=16)",
        num_workers=0,
        max_skip_fraction=0.05,
    )
    if args.videos:
        c.data.source = dict(name="video_folder", root=args.videos, manifest="train.csv")
        if args.short_side:
            c.data.source.short_side = args.short_side
    if args.tfds:
        c.data.source = dict(name="tfds", dataset="reliability_toy", data_dir=args.tfds)
    c.model = dict(name="vit", size="Ti", width=32, depth=1, heads=2, patch=(2, 8, 8))
    c.objective = dict(name="cvrl", temperature=0.2, head_hidden=32, head_layers=1, head_out=16)
    c.optim = dict(name="adamw", lr=2e-3, warmup_steps=2, weight_decay=1e-4)
    c.ckpt = dict(every_steps=1, keep=3)
    c.evals = {}
    return c
