"""rho-BYOL, Slow-only R50 8x8 on Kinetics-400 (Feichtenhofer et al., CVPR 2021).

    python -m vrl.main --config=configs/rho_byol_r50_k400.py --workdir=WORKDIR
    python -m vrl.main --config=configs/rho_byol_r50_k400.py:runlocal --workdir=/tmp/rho_byol

Values follow the release (PySlowFast configs/contrastive_ssl/BYOL_SlowR50_8x8.yaml): rho = 2
clips per video (`:rho=4`: lr 1.2, as the file's comment gives), a 2-layer 4096-d MLP with
batch norm and 256-d output, a predictor of the same shape (`PREDICTOR_DEPTHS: [2]`), the
loss -p.k / 0.5 (BYOL's normalised MSE up to a constant), EMA target momentum 0.996 annealed to
1 by a half cosine over the run, LARS (trust 0.001) lr 0.6 for batch 64 (times the machine
count in the release, each machine adding 64 clips), weight decay 1e-6. The rest is shared:
configs/common.py `rho_clips_config`. Differences from the release: docs/PARITY.md.
"""

import os

from configs.common import rho_clips_config
from vrl.config import check_arg, parse_arg

LR = {2: 0.6, 4: 1.2}


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, rho=2)
    check_arg("rho", args.rho, list(LR))
    return rho_clips_config(
        args,
        os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        "rho_byol",
        optim={"name": "lars", "lr": LR[args.rho], "weight_decay": 1e-6},
        objective_values={
            "temperature": 0.5,
            "ema_start": 0.996,
            "head_hidden": 4096,
            "head_layers": 1,
            "head_out": 256,
            "predictor_hidden": 4096,
            "predictor_layers": 1,
        },
        runlocal_objective={"head_hidden": 64, "head_out": 32, "predictor_hidden": 64},
    )
