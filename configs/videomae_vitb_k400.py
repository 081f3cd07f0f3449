"""VideoMAE ViT-B/16 pretraining on Kinetics-400 (Tong et al., NeurIPS 2022).

    python -m vrl.main --config=configs/videomae_vitb_k400.py --workdir=WORKDIR
    python -m vrl.main --config=configs/videomae_vitb_k400.py:runlocal --workdir=/tmp/mae

16 frames at stride 4, 224x224, 2x16x16 tubelets (1568 tokens), tube masking 90%, a 4-block
384-wide decoder, MSE on hidden tubelets against per-tubelet normalised pixels, AdamW
(0.9, 0.95), weight decay 0.05, lr 1.5e-4 x batch / 256 at batch 2048, 40 warmup epochs,
cosine to 1e-5, 800 epochs (released K400 models; 1600 for the best). Sizes: `:size=S|B|L|H`
(decoder widths 192 / 384 / 512 / 640).

As the released code (MCG-NJU/VideoMAE) does: frames decoded at short side 320 (its prepared
Kinetics), `GroupMultiScaleCrop(224, [1, .875, .75, .66])` resized to 224 (`multi_scale_crop`)
and no flip (`datasets.DataAugmentationForVideoMAE`); one fixed 1-D sine-cosine table over the
flattened t*h*w index in encoder and decoder (`get_sinusoid_encoding_table`); targets
(x - mean) / (sqrt(unbiased var) + 1e-6) (`engine_for_pretraining.train_one_epoch`).

`:mask=motion_guided` hides the tokens that move most instead of a random tube (MGMAE, Huang
et al. 2023): the `motion_mask` op with MGMAE's per-slot count, 90% of each slot (docs/PARITY.md
says how it approximates MGMAE's flow-warped masks); everything else is this recipe.
"""

import os

from configs.common import TINY_VIT, data_section, defaults, run_config, runlocal_data
from vrl.config import check_arg, parse_arg

DECODER = {"S": (192, 3), "B": (384, 6), "L": (512, 8), "H": (640, 8)}


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size="B", mask="tube")
    check_arg("size", args.size, list(DECODER))
    check_arg("mask", args.mask, ["tube", "motion_guided"])
    c = run_config(total_epochs=800.0, log_every_steps=100, compute_dtype="bfloat16")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics400",
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
            "short_side": 320,
        },
        test_split="validation",
        batch_size=2048,
        train_pp="uniform_clip(frames=16, stride=4)|multi_scale_crop(size=224)",
        test_pp="center_clip(frames=16, stride=4)|resize_short(size=224)|center_crop(size=224)",
        num_workers=16,
    )
    width, heads = DECODER[args.size]
    # q and v biases only (the key bias is a fixed zero) in encoder and decoder, and no bias on
    # the encoder-to-decoder projection: modeling_pretrain.py's Attention / encoder_to_decoder.
    c.model = defaults("model", "vit", size=args.size, posemb="sincos_1d", qkv_bias="qv")
    c.objective = defaults(
        "objective",
        "videomae",
        mask=args.mask,
        decoder_width=width,
        decoder_heads=heads,
        decoder_posemb="sincos_1d",
        decoder_qkv_bias="qv",
        decoder_embed_bias=False,
        norm_pix_eps_inside_sqrt=False,
    )
    c.optim.update(
        name="adamw",
        lr=1.5e-4,
        lr_base_batch=256,
        b2=0.95,
        weight_decay=0.05,
        warmup_epochs=40.0,
        end_lr=1e-5,
    )
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_epochs = None
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        c.data = runlocal_data(
            "uniform_clip(frames=8, stride=2)|multi_scale_crop(size=32)",
            "center_clip(frames=8, stride=2)|resize_short(size=32)|center_crop(size=32)",
        )
        c.model.update(TINY_VIT)
        c.objective.update(decoder_width=32, decoder_depth=1, decoder_heads=2)
        c.optim.update(warmup_epochs=None, warmup_steps=1, lr_base_batch=None, lr=1e-3)
    return c
