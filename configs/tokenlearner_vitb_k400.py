"""Video ViT-B/16 with TokenLearner, supervised on Kinetics-400 from an ImageNet-21k image ViT.

    python -m vrl.convert --format=hf_vit --src=vit-base-patch16-224-in21k \\
        --workdir=runs/vit_b16_i21k --frames=32 \\
        --arch=inflation=central_frame,tokenlearner_layer=6,tokenlearner_tokens=8
    python -m vrl.main --config=configs/tokenlearner_vitb_k400.py:init=runs/vit_b16_i21k \\
        --workdir=WORKDIR
    python -m vrl.main --config=configs/tokenlearner_vitb_k400.py:runlocal --workdir=/tmp/tl

After 6 of the 12 blocks, each frame's 14x14 tokens are summarised into 8 learned tokens
(TokenLearner v1.1: LayerNorm -> MLP with a 64-wide bottleneck -> softmax maps over space), so
the second half of the network runs on 16 x 8 = 128 tokens instead of 3136. `:fuser` adds
TokenFuser (every later block on learned tokens, fused back to the full grid); `:tokens=16` and
`:layer=N` move the insertion; `:version=1.0` picks the convolutional module.

Scenic released no Kinetics config for TokenLearner (`projects/token_learner/configs/` holds
only ImageNet); the video recipe TokenLearner builds on is ViViT's, followed here as released
(scenic `projects/vivit/configs/kinetics400/vivit_base_k400.py`): SGD with momentum 0.9 (scenic's
'momentum' optimiser), lr 0.1 at batch 64, linear warmup over 2.5 epochs then cosine to 0 over
30 epochs, no weight decay (l2_decay_factor 0), global-norm clip 1, no label smoothing, mixup or
stochastic depth; 32 frames at stride 2, 16x16x2 tubelets (16 x 14 x 14 = 3136 tokens).

Initialisation (`init_from`, the `:init=DIR` argument): the ImageNet-21k ViT-B/16 scenic starts
from (`config.init_from.checkpoint_path`), converted to a vrl run directory by the command
above from the Hugging Face folder google/vit-base-patch16-224-in21k (the same weights):
the 2-D patch kernel inflated to 2-frame tubelets with scenic's `central_frame_initializer`
(the released default; `inflation=average` is filter inflation) and the 2-D position table
repeated over the 16 time slots (`positional_embed_size_change='tile'`); see
vrl/convert/image_vit.py. The `--arch` TokenLearner options must match this recipe's (they
make the converted encoder's fresh TokenLearner parameters, which `init_from` loads strictly).
Without `:init` the run trains from scratch, which is not the released recipe; `:runlocal`
does so on synthetic data.

Differences from scenic: vrl's ViT has no class token, it classifies the mean of the final
tokens (scenic's classifier='gap'; ViViT's configs use 'token'), and the converter drops the
class token. Augmentation as scenic's (DMVR): the short side resized to 256, each side's scale
jittered by 0.9-1.33 and a 224 crop (`scale_jitter_crop`), flip, then with p=0.8 DMVR's colour
augmentation (`dmvr_color`: brightness +-32/255, saturation and contrast 0.6-1.4, hue 0.2) and
with p=0.1 grayscale. Test: scenic's multi-crop test (4 clips x 3 crops) is a probe-time
choice; the in-run test is one centre clip.
"""

import os

from configs.common import TINY_VIT, data_section, defaults, run_config, runlocal_data
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, tokens=8, layer=6, fuser=False, version="1.1", init="")
    c = run_config(total_epochs=30.0, log_every_steps=100, compute_dtype="float32")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics400",
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        },
        test_split="validation",
        batch_size=64,
        train_pp=(
            "uniform_clip(frames=32, stride=2)|resize_short(size=256)"
            "|scale_jitter_crop(size=224, scale=(0.9, 1.33), p=1.0)|flip(p=0.5)"
            "|dmvr_color(p=0.8)|grayscale(p=0.1)"
        ),
        test_pp="center_clip(frames=32, stride=2)|resize_short(size=256)|center_crop(size=224)",
        num_workers=16,
    )
    c.model = defaults(
        "model",
        "vit",
        size="B",
        patch=(2, 16, 16),
        posemb="learned",  # scenic's learned table, tiled over time from the image ViT's
        drop_path=0.0,
        tokenlearner_layer=args.layer,
        tokenlearner_tokens=args.tokens,
        tokenlearner_version=args.version,
        tokenfuser=args.fuser,
    )
    c.objective = defaults(
        "objective",
        "supervised",
        num_classes=400,
        label_smoothing=0.0,
        mixup=0.0,
        cutmix=0.0,
        init_from=args.init,  # a run written by `python -m vrl.convert --format=hf_vit`
    )
    c.optim.update(
        name="sgd",
        momentum=0.9,
        nesterov=False,
        lr=0.1,
        lr_base_batch=None,  # 0.1 at batch 64, as released (no scaling rule)
        schedule="cosine",
        end_lr=0.0,
        weight_decay=0.0,
        warmup_epochs=2.5,
        clip_norm=1.0,
    )
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_epochs = None
        c.total_steps = 3
        c.log_every_steps = 1
        c.data = runlocal_data(
            "uniform_clip(frames=8, stride=2)|random_resized_crop(size=32)|flip(p=0.5)",
            "center_clip(frames=8, stride=2)|resize_short(size=32)|center_crop(size=32)",
        )
        c.model.update(TINY_VIT, tokenlearner_layer=1, tokenlearner_tokens=4)
        c.objective.update(num_classes=8, label_set="motion")
        c.optim.update(warmup_epochs=None, warmup_steps=1)
    return c
