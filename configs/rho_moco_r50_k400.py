"""rho-MoCo, Slow-only R50 8x8 on Kinetics-400 (Feichtenhofer et al., CVPR 2021).

    python -m vrl.main --config=configs/rho_moco_r50_k400.py --workdir=WORKDIR
    python -m vrl.main --config=configs/rho_moco_r50_k400.py:runlocal --workdir=/tmp/rho_moco

Values follow the release (PySlowFast configs/contrastive_ssl/MoCo_SlowR50_8x8.yaml and the
defaults it does not override in slowfast/config/defaults.py): rho = 4 clips per video
(`TRAIN_CROP_NUM_TEMPORAL`; `:rho=2` is the CVRL-like setting), temperature 0.1, a 3-layer
2048-d MLP with 128-d output and no batch norm (`BN_MLP: False`), momentum 0.994 annealed to
1 by a half cosine over the run, a queue of 65536 keys into which every clip's keys go,
SGD lr 0.1 for batch 64 (the release multiplies lr by the machine count,
`BASE_LR_SCALE_NUM_SHARDS`, each machine adding 64 clips), weight decay 1e-4 (none on batch
norm). The rest is shared: configs/common.py `rho_clips_config`. Differences from the
release: docs/PARITY.md.
"""

import os

from configs.common import rho_clips_config
from vrl.config import check_arg, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, rho=4)
    check_arg("rho", args.rho, [2, 4])
    return rho_clips_config(
        args,
        os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        "rho_moco",
        optim={"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
        objective_values={
            "temperature": 0.1,
            "head_batch_norm": False,
            "ema_start": 0.994,
            "queue_size": 65536,
        },
        runlocal_objective={"head_hidden": 64, "head_out": 32, "queue_size": 64},
    )
