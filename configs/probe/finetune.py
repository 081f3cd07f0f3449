"""Fine-tuning probe: the whole network trained on labels from the checkpoint (VideoMAE).

    python -m vrl.probe --config=configs/probe/finetune.py[:videomae] --config.checkpoint=WORKDIR

Trains the `supervised` objective with `init_from=WORKDIR` into WORKDIR/probe/<name>_<labels>_
<encoder>/ with the VideoMAE recipe: AdamW (0.9, 0.999), lr 1e-3 x batch / 256, weight decay
0.05, 5 warmup epochs then cosine, layer decay 0.75, drop path 0.1, label smoothing 0.1, mixup
0.8, cutmix 1.0; tested on 5 clips x 3 crops derived from the checkpoint's test pipeline.
The train pipeline is derived too: a random window of the test clip's length and a random
resized crop; add `--config.probe.flip=True` for datasets without left/right classes
(Kinetics). `:runlocal` trains for two epochs with one test clip, for CPU checks.

`:videomae` is MCG-NJU/VideoMAE's released K400 ViT-B fine-tuning (scripts/kinetics/
videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh with
run_class_finetuning.py's defaults): 384 videos per step (6 x 64 GPUs), 2 clips each
(`--num_sample 2`), lr 5e-4 x 384 / 256, min and warmup lr 1e-6 x 384 / 256, 75 epochs with 5
of warmup, layer decay 0.75, drop path 0.1; RandAugment rand-m7-n4-mstd0.5-inc1 before a
random resized crop of area (0.08, 1) and aspect (3/4, 4/3), flip, random erasing 0.25
(pixel mode, one box per clip); mean pooling then a LayerNorm (fc_norm) before the classifier,
the pretrained encoder's final norm left out.
Combine as `:videomae,runlocal` for a CPU check of that pipeline.
"""

from configs.common import defaults, job_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, source="", runlocal=False, videomae=False)
    probe = defaults("probe", "finetune")
    probe.update(epochs=30.0, warmup_epochs=5.0, batch_size=64, eval_every_steps=500)
    if args.videomae:
        probe.update(
            epochs=75.0,
            warmup_epochs=5.0,
            batch_size=384,  # videos per step; 768 clips with repeated_samples=2
            repeated_samples=2,
            lr=5e-4,
            lr_base_batch=256,
            end_lr=1e-6,
            warmup_init_lr=1e-6,
            weight_decay=0.05,
            b2=0.999,
            layer_decay=0.75,
            drop_path=0.1,
            label_smoothing=0.1,
            mixup=0.8,
            cutmix=1.0,
            head_dropout=0.0,
            head_norm=True,
            drop_final_norm=True,
            crop_area=(0.08, 1.0),
            crop_aspect=(0.75, 1.3333),
            flip=True,
            rand_augment_ops=4,
            rand_augment_magnitude=7.0,
            rand_augment_std=0.5,
            random_erasing=0.25,
        )
    c = job_config(probe, args.source)
    c.encoders = ("pretrained",)
    c.test_views = (5, 3)
    if args.runlocal:
        c.probe.update(epochs=2.0, warmup_epochs=0.5, batch_size=8, eval_every_steps=2)
        if args.videomae:
            c.probe.batch_size = 4  # x 2 clips
        c.test_views = (1, 1)
    return c
