"""kNN classification and clip retrieval on frozen pooled features.

    python -m vrl.probe --config=configs/probe/knn.py --config.checkpoint=WORKDIR

Cosine similarity; the k = 20 nearest train clips vote with weight exp(cos / 0.07) (InstDisc,
DINO). Retrieval as in IIC: test clips query the train clips, Recall@1/5/10/20 counts a hit when
any of the top k has the query's class. `:multiview` tests on 10 clips x 3 crops derived from
the checkpoint's test pipeline (IIC averages 10 clips per video).
"""

from configs.common import defaults, job_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, source="", multiview=False)
    probe = defaults("probe", "knn")
    probe.update(k=20, temperature=0.07, recall_at=(1, 5, 10, 20))
    c = job_config(probe, args.source)
    if args.multiview:
        c.test_views = (10, 3)
    return c
