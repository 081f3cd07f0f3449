"""Fine-tuning probe: the whole network trained on labels from the checkpoint (VideoMAE).

    python -m vrl.probe --config=configs/probe/finetune.py --config.checkpoint=WORKDIR

Trains the `supervised` objective with `init_from=WORKDIR` into WORKDIR/probe/<name>_<labels>_
<encoder>/ with the VideoMAE recipe: AdamW (0.9, 0.999), lr 1e-3 x batch / 256, weight decay
0.05, 5 warmup epochs then cosine, layer decay 0.75, drop path 0.1, label smoothing 0.1, mixup
0.8, cutmix 1.0; tested on 5 clips x 3 crops derived from the checkpoint's test pipeline.
The train pipeline is derived too: a random window of the test clip's length and a random
resized crop; add `--config.probe.flip=True` for datasets without left/right classes
(Kinetics). `:runlocal` trains for two epochs with one test clip, for CPU checks.
"""

from configs.common import defaults, job_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, source="", runlocal=False)
    probe = defaults("probe", "finetune")
    probe.update(epochs=30.0, warmup_epochs=5.0, batch_size=64, eval_every_steps=500)
    c = job_config(probe, args.source)
    c.encoders = ("pretrained",)
    c.test_views = (5, 3)
    if args.runlocal:
        c.probe.update(epochs=2.0, warmup_epochs=0.5, batch_size=8, eval_every_steps=2)
        c.test_views = (1, 1)
    return c
