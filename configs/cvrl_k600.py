"""CVRL on Kinetics-600 with CVRL R3D-50, as published (Qian et al., CVPR 2021).

    python -m vrl.main --config=configs/cvrl_k600.py --workdir=gs://bucket/cvrl_k600
    python -m vrl.main --config=configs/cvrl_k600.py:runlocal --workdir=/tmp/cvrl  # a minute

Values follow the released TF Model Garden config (official/projects/video_ssl): batch 1024,
16 frames at stride 2, 224x224, SGD momentum 0.9 with lr 0.32 and cosine decay, ~1787 warmup
steps (5 epochs), 200 epochs, L2 weight decay 1e-6 on kernels, temperature 0.1, a 3-layer
2048-d MLP head with 128-d output, loss_a + loss_b (the sum over the two views, not their
mean). The paper text mentions LARS: `--config.optim.name=lars`.
Augmentation: random resized crop area [0.3, 1], aspect [0.5, 2] drawn as
tf.image.sample_distorted_bounding_box draws it, flip, colour jitter p 0.8 with tf.image's
contrast, saturation and hue, grayscale p 0.2, blur p 1.0 / 0.1 and solarize p 0 / 0.2 on
view 1 / 2.
Data: a `kinetics600` dataset prepared with `python -m vrl.data.prepare` (see docs/DATA.md) in
$VRL_DATA_DIR (or --config.data.source.data_dir).

`:freqaug=1` adds FreqAug (Kim et al., "Frequency Selective Augmentation for Video
Representation Learning") after the other train ops: each view, with probability 0.5, loses
its spatial (below 0.01 cycles per pixel) and temporal (below 0.1 cycles per frame)
low-frequency components (FreqAug-ST; op `freq_aug`).
"""

import os

from configs.common import data_section, defaults, run_config, runlocal_data
from vrl.config import check_arg, parse_arg

# The TF release's box sampler (tf.image.sample_distorted_bounding_box) and colour ops
# (tf.image contrast per channel, saturation and hue in HSV): `sampler="tf"`, `style="tf"`.
CVRL_SPATIAL = (
    'random_resized_crop(size={size}, area=(0.3, 1.0), aspect=(0.5, 2.0), sampler="tf")'
    "|flip(p=0.5)"
    "|color_jitter(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, "
    'style="tf")'
    "|grayscale(p=0.2)|gaussian_blur(p=(1.0, 0.1), sigma=(0.1, 2.0))|solarize(p=(0.0, 0.2))"
)
# `:freqaug=1`: FreqAug-ST at the `freq_aug` op's defaults, taken as the paper's (docs/PARITY.md).
FREQAUG = '|freq_aug(p=0.5, mode="both", spatial_cutoff=0.01, temporal_cutoff=0.1)'


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, freqaug=0)
    check_arg("freqaug", args.freqaug, [0, 1])
    extra = FREQAUG if args.freqaug else ""
    c = run_config(total_epochs=200.0, log_every_steps=100, compute_dtype="bfloat16")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics600",
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        },
        test_split="validation",
        batch_size=1024,
        train_pp="cvrl_clips(frames=16, stride=2, power=1.0)|"
        + CVRL_SPATIAL.format(size=224)
        + extra,
        test_pp="center_clip(frames=32, stride=2)|resize_short(size=256)|center_crop(size=224)",
        num_workers=16,
    )
    c.model = defaults("model", "cvrl_r3d")
    # The released loss is loss_a + loss_b (video_ssl/losses/losses.py), and its trainer
    # (video_ssl/tasks/pretrain.py) does not divide the per-replica loss by the replica count
    # while Keras sums gradients over replicas: lr 0.32 is the step of a one-replica run on
    # loss_a + loss_b (+ L2 1e-6). The released config does not name the TPU's replica count
    # R; for the SGD step of an R-replica TF run use lr 0.32 * R.
    c.objective = defaults("objective", "cvrl", loss_reduction="sum")
    c.optim.update(name="sgd", lr=0.32, warmup_epochs=5.0, weight_decay=1e-6)
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_epochs = None
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        c.data = runlocal_data(
            "cvrl_clips(frames=8, stride=2)|" + CVRL_SPATIAL.format(size=32) + extra,
            "center_clip(frames=8, stride=2)|resize_short(size=32)|center_crop(size=32)",
        )
        c.model.update(depth=18, width=0.125)
        c.objective.update(head_hidden=64, head_layers=2, head_out=32)
        c.optim.update(warmup_epochs=None, warmup_steps=1)
    return c
