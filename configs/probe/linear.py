"""Linear probe on frozen pooled features (CVRL protocol).

    python -m vrl.probe --config=configs/probe/linear.py --config.checkpoint=WORKDIR

The encoder and the data come from the checkpoint's own config. Probe other data with
`--config=configs/probe/linear.py:source=video_folder --config.data.source.root=DIR ...`.
Variants:
  `:solver=logistic`  full-batch L-BFGS softmax regression; its L2 strength is swept and chosen
                      on a held-out 20% of the train videos (fast, nothing else to tune)
  `:solver=ridge`     closed-form least squares on one-hot targets
  `:cvrl`             the paper-scale CVRL linear eval (tensorflow/models video_ssl
                      `cvrl_linear_eval_k600.yaml`): trained on freshly augmented clips every
                      epoch (`probe.train_augmented`: a random 32-frame window at stride 2,
                      random resized crop area (0.3, 1) aspect (0.5, 2) to 224, flip), the
                      frozen encoder run at every step; 10 clips x 3 crops at 256 for testing;
                      SGD momentum 0.9, lr 32, 5 warmup epochs then cosine, 100 epochs, batch
                      1024, no wd

`probe.train_augmented=True` (sgd only) trains on augmented clips of `train_pp` every epoch
instead of one cached feature per train clip: as published, and slower (the encoder runs every
step).
"""

from configs.common import defaults, job_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, cvrl=False, source="", solver="sgd")
    probe = defaults("probe", "linear")
    probe.update(solver=args.solver, epochs=100, lr=0.1, batch_size=256)
    if args.solver == "logistic":
        probe.sweep = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    c = job_config(probe, args.source)
    if args.cvrl:
        c.probe.update(
            solver="sgd",
            epochs=100,
            warmup_epochs=5.0,
            lr=32.0,
            momentum=0.9,
            batch_size=1024,
            normalize=True,
            standardize=False,
            train_augmented=True,
        )
        c.train_pp = (
            "uniform_clip(frames=32, stride=2)"
            "|random_resized_crop(size=224, area=(0.3, 1.0), aspect=(0.5, 2.0))|flip"
        )
        c.test_pp = (
            "multiview_clips(num_clips=10, frames=32, stride=2)|resize_short(size=256)"
            "|three_crop(size=256)"
        )
    return c
