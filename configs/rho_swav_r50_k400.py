"""rho-SwAV, Slow-only R50 8x8 on Kinetics-400 (Feichtenhofer et al., CVPR 2021).

    python -m vrl.main --config=configs/rho_swav_r50_k400.py --workdir=WORKDIR
    python -m vrl.main --config=configs/rho_swav_r50_k400.py:runlocal --workdir=/tmp/rho_swav

Values follow the release (PySlowFast configs/contrastive_ssl/SwAV_Slow_R50_8x8.yaml and
slowfast/models/contrastive.py): rho = 2 clips per video (`:rho=4`), temperature 0.1, a 3-layer
2048-d MLP with batch norm and 128-d output, 1000 prototypes normalised every step, codes from
3 Sinkhorn-Knopp iterations at epsilon 0.05 over the global batch, swapped prediction between
consecutive clips, no queue (`SWAV_QEUE_LEN` 0), LARS (trust 0.001) lr 0.6 for batch 64 (times
the machine count in the release, each machine adding 64 clips), weight decay 1e-6. The rest
is shared: configs/common.py `rho_clips_config`. Differences from the release: docs/PARITY.md.
"""

import os

from configs.common import rho_clips_config
from vrl.config import check_arg, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, rho=2)
    check_arg("rho", args.rho, [2, 4])
    return rho_clips_config(
        args,
        os.environ.get("VRL_DATA_DIR", "~/tensorflow_datasets"),
        "rho_swav",
        optim={"name": "lars", "lr": 0.6, "weight_decay": 1e-6},
        objective_values={
            "temperature": 0.1,
            "num_prototypes": 1000,
            "sinkhorn_epsilon": 0.05,
            "sinkhorn_iterations": 3,
        },
        runlocal_objective={"head_hidden": 64, "head_out": 32, "num_prototypes": 16},
    )
