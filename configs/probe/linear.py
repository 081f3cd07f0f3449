"""Linear probe on frozen pooled features (CVRL protocol).

    python -m vrl.probe --config=configs/probe/linear.py --config.checkpoint=WORKDIR

The encoder and the data come from the checkpoint's own config. Probe other data with
`--config=configs/probe/linear.py:source=video_folder --config.data.source.root=DIR ...`. Paper-scale CVRL protocol: `configs/probe/linear.py:cvrl`
(32 frames at stride 2, 224 crops; 10 clips x 3 crops at 256 for testing; SGD lr 32, 100 epochs,
batch 1024, no weight decay).
"""

import ml_collections

from vrl.config import defaults, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, cvrl=False, source="")
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.step = ml_collections.config_dict.placeholder(int)
    c.probe = dict(name="linear", solver="sgd", epochs=100, lr=0.1, batch_size=256)
    c.encoders = ("pretrained", "random")
    c.label_sets = ml_collections.config_dict.placeholder(tuple)
    # Data defaults to the checkpoint's; `:source=video_folder` exposes another source's keys.
    c.data = ml_collections.ConfigDict()
    c.data.train_split = ml_collections.config_dict.placeholder(str)
    c.data.test_split = ml_collections.config_dict.placeholder(str)
    if args.source:
        c.data.source = defaults("source", args.source)
    c.train_pp = ml_collections.config_dict.placeholder(str)
    c.test_pp = ml_collections.config_dict.placeholder(str)
    c.batch_size = 32
    if args.cvrl:
        c.probe = dict(name="linear", solver="sgd", epochs=100, lr=32.0, batch_size=1024,
                       normalize=True, standardize=False)
        c.train_pp = "center_clip(frames=32, stride=2)|resize_short(size=256)|center_crop(size=224)"
        c.test_pp = ("multiview_clips(num_clips=10, frames=32, stride=2)|resize_short(size=256)"
                     "|three_crop(size=256)")
    return c
