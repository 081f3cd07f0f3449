"""Video ViT-B/16 with TokenLearner, supervised on Kinetics-400 (Ryoo et al., NeurIPS 2021).

    python -m vrl.main --config=configs/tokenlearner_vitb_k400.py --workdir=WORKDIR
    python -m vrl.main --config=configs/tokenlearner_vitb_k400.py:runlocal --workdir=/tmp/tl

After 6 of the 12 blocks, each frame's 14x14 tokens are summarised into 8 learned tokens
(TokenLearner v1.1: LayerNorm -> MLP with a 64-wide bottleneck -> softmax maps over space), so
the second half of the network runs on 8 x 8 = 64 tokens instead of 1568: roughly half the
compute of the plain ViT. `:fuser` adds TokenFuser (every later block on learned tokens, fused
back to the full grid); `:tokens=16` and `:layer=N` move the insertion; `:version=1.0` picks the
convolutional module. The optimiser follows the ViViT/TokenLearner video recipe (AdamW, lr 1e-3
at batch 512 scaled to the batch, label smoothing 0.1, mixup 0.8 / cutmix 1.0, drop path 0.1,
30 epochs).
"""

import os

from configs.common import TINY_VIT, data_section, defaults, run_config, runlocal_data
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, tokens=8, layer=6, fuser=False, version="1.1")
    c = run_config(total_epochs=30.0, log_every_steps=100, compute_dtype="bfloat16")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics400",
            "data_dir": os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        },
        test_split="validation",
        batch_size=256,
        train_pp="uniform_clip(frames=16, stride=4)|random_resized_crop(size=224)|flip(p=0.5)",
        test_pp="center_clip(frames=16, stride=4)|resize_short(size=224)|center_crop(size=224)",
        num_workers=16,
    )
    c.model = defaults(
        "model",
        "vit",
        size="B",
        drop_path=0.1,
        tokenlearner_layer=args.layer,
        tokenlearner_tokens=args.tokens,
        tokenlearner_version=args.version,
        tokenfuser=args.fuser,
    )
    c.objective = defaults(
        "objective",
        "supervised",
        num_classes=400,
        label_smoothing=0.1,
        mixup=0.8,
        cutmix=1.0,
    )
    c.optim.update(
        name="adamw",
        lr=1e-3,
        lr_base_batch=512,
        weight_decay=0.05,
        warmup_epochs=2.5,
        clip_norm=1.0,
    )
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_epochs = None
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        c.data = runlocal_data(
            "uniform_clip(frames=8, stride=2)|random_resized_crop(size=32)",
            "center_clip(frames=8, stride=2)|resize_short(size=32)|center_crop(size=32)",
        )
        c.model.update(TINY_VIT, tokenlearner_layer=1, tokenlearner_tokens=4)
        c.objective.update(num_classes=8, label_set="motion")
        c.optim.update(warmup_epochs=None, warmup_steps=1, lr_base_batch=None)
    return c
