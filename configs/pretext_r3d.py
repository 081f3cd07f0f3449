"""Temporal pretext tasks with an R3D encoder, alone or added to CVRL.

    python -m vrl.main --config=configs/pretext_r3d.py --workdir=WORKDIR
    python -m vrl.main --config=configs/pretext_r3d.py:runlocal --workdir=/tmp/pretext
    python -m vrl.main --config=configs/pretext_r3d.py:task=rspnet --workdir=WORKDIR

`:task=` picks what is trained (objectives in vrl/objectives/pretext.py, combined.py):
  cvrl_playback  (default) configs/cvrl_k600.py (R3D-50, Kinetics-600, its optimiser and
                 augmentation) plus the playback classifier as an auxiliary loss of weight 1 on
                 both views: each view plays at 1x, 2x, 4x or 8x its stride (uniform frame
                 skipping, p 0.5) and backwards with p 0.5, and a linear head on the shared
                 encoder classifies speed and direction.
  playback       the playback classifier alone, as sjenni/temporal-ssl trains it
                 (train_test_ResNet3D.py, train/VideoBaseTrainer.py): UCF101 split 1 (a
                 `ucf101_split1` dataset, docs/DATA.md), 16-frame clips at speed 2**k, k < 4
                 (`n_speed`), 128 px crops, AdamW lr 3e-4 betas (0.9, 0.99) weight decay 1e-4,
                 cosine decay to 1e-3 of the peak, 200 epochs, 16 videos a step (8 x 2 GPUs).
  rspnet         RSPNet alone, as PeihaoChen/RSPNet trains it (pretrain.py,
                 config/pretrain/moco-train-base.jsonnet, config/optimizer/sgd.libsonnet):
                 Kinetics-400, three clips of a video each at 1x or 2x (`diff_speed: [2]`),
                 16 frames at 112 px, temperature 0.07, margin 2.0, 128-d appearance and motion
                 heads, loss weights A = M = 1, SGD lr 0.1 momentum 0.9 weight decay 1e-4 with
                 cosine decay, batch 64, 200 epochs.
Encoders are the CVRL-layout R3D (R3D-18 where the releases use ResNet-18-class 3-D networks).
Differences from the releases (in-batch negatives instead of RSPNet's MoCo queue, backward
instead of forward-backward playback, no shuffle or warp classes): docs/PARITY.md.
"""

import os

from configs.common import data_section, defaults, run_config, runlocal_data
from configs.cvrl_k600 import CVRL_SPATIAL
from vrl.config import check_arg, parse_arg

TASKS = ["cvrl_playback", "playback", "rspnet"]
# The pretext tasks' spatial augmentation: a random crop (no scale jitter) and a flip.
CROP = (
    "resize_short(size={short})|scale_jitter_crop(size={size}, scale=(1.0, 1.0), p=0.0)|flip(p=0.5)"
)
TEST = "center_clip(frames=16, stride={stride})|resize_short(size={short})|center_crop(size={size})"
PLAYBACK = 'frame_skip(mode="uniform", skips={skips}, p={p})|reverse(p=0.5)'


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, task="cvrl_playback")
    check_arg("task", args.task, TASKS)
    c = run_config(total_epochs=200.0, log_every_steps=100, compute_dtype="bfloat16")
    test_pp = TEST
    skips = (1, 2, 4, 8)
    if args.task == "cvrl_playback":
        dataset, test_split, batch = "kinetics600", "validation", 1024
        train_pp = (
            "cvrl_clips(frames=16, stride=2, power=1.0)|"
            + PLAYBACK.format(skips=skips, p=0.5)
            + "|"
            + CVRL_SPATIAL.format(size=224)
        )
        test_pp = test_pp.format(stride=2, short=256, size=224)
        c.model = defaults("model", "cvrl_r3d")
        c.objective = defaults("objective", "combined")
        c.objective.main = defaults("objective", "cvrl", loss_reduction="sum")
        c.objective.aux = {"playback": defaults("objective", "playback", speeds=skips)}
        c.objective.aux.playback.weight = 1.0
        c.optim.update(name="sgd", lr=0.32, warmup_epochs=5.0, weight_decay=1e-6)
    elif args.task == "playback":
        dataset, test_split, batch = "ucf101_split1", "test", 16
        train_pp = (
            "uniform_clip(frames=16, stride=1)|"
            + PLAYBACK.format(skips=skips, p=1.0)
            + "|"
            + CROP.format(short=128, size=128)
        )
        test_pp = test_pp.format(stride=1, short=128, size=128)
        c.model = defaults("model", "cvrl_r3d", depth=18)
        c.objective = defaults("objective", "playback", speeds=skips)
        c.optim.update(name="adamw", lr=3e-4, b2=0.99, weight_decay=1e-4, end_lr=3e-7)
    else:
        dataset, test_split, batch = "kinetics400", "validation", 64
        train_pp = (
            "multiview_clips(num_clips=3, frames=16, stride=1, segments=True, random=True)|"
            "tempo(rates=(1.0, 2.0))|" + CROP.format(short=128, size=112)
        )
        test_pp = test_pp.format(stride=1, short=128, size=112)
        c.model = defaults("model", "cvrl_r3d", depth=18)
        c.objective = defaults("objective", "rspnet")
        c.optim.update(name="sgd", lr=0.1, weight_decay=1e-4)
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": dataset,
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        },
        test_split=test_split,
        batch_size=batch,
        train_pp=train_pp,
        test_pp=test_pp,
        num_workers=16,
    )
    if args.runlocal:
        runlocal(c, args.task)
    return c


def runlocal(c, task: str) -> None:
    """A tiny model on 32 synthetic videos of 32 frames, for a few CPU seconds a step."""
    c.total_epochs = None
    c.total_steps = 3
    c.log_every_steps = 1
    c.compute_dtype = "float32"
    test_pp = "center_clip(frames=8, stride=1)|resize_short(size=32)|center_crop(size=32)"
    if task == "cvrl_playback":
        train_pp = (
            "cvrl_clips(frames=8, stride=2)|"
            + PLAYBACK.format(skips=(1, 2), p=0.5)
            + "|"
            + CVRL_SPATIAL.format(size=32)
        )
        c.objective.main.update(head_hidden=64, head_layers=2, head_out=32)
        c.objective.aux.playback.speeds = (1.0, 2.0)
        c.optim.update(warmup_epochs=None, warmup_steps=1)
    elif task == "playback":
        train_pp = "uniform_clip(frames=8, stride=1)|" + PLAYBACK.format(skips=(1, 2, 4), p=1.0)
        c.objective.speeds = (1.0, 2.0, 4.0)
    else:
        train_pp = (
            "multiview_clips(num_clips=3, frames=8, stride=1, segments=True, random=True)|"
            "tempo(rates=(1.0, 2.0))"
        )
        c.objective.head_out = 32
    if task != "cvrl_playback":
        train_pp += "|" + CROP.format(short=36, size=32)
    c.data = runlocal_data(train_pp, test_pp)
    c.model.update(depth=18, width=0.125)
