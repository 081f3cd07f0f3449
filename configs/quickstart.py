"""CPU quickstart: CVRL with a narrow CVRL R3D-18 on the synthetic motion dataset, then probes.

    python -m vrl.main --config=configs/quickstart.py --workdir=runs/quickstart

Pretrains for a few CPU minutes, then fits linear probes on the `motion` and `appearance` labels
for the pretrained encoder and for the same architecture at random init, and prints the table.
No horizontal flip: the dataset has left/right motion classes, and a flip would teach the encoder
that they are the same thing.
"""

from ml_collections.config_dict import placeholder

from configs.common import data_section, defaults, run_config
from vrl.config import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    c = run_config(total_steps=300)
    # What two clips of a video share must be its motion, or CVRL learns something easier:
    # objects live 8 frames before fresh ones (new place, pose, size) take over, all objects
    # share one texture, and the background is flat (a textured one, shifted per video, would
    # tell videos apart by itself). Clip gaps are spread over the 64 frames (power 4), so most
    # pairs show different objects; spatial augmentation is then not needed and only slows this
    # short run down.
    c.data = data_section(
        {
            "name": "synthetic",
            "frames": 64,
            "size": 32,
            "objects": 2,
            "lifetime": 8,
            "noise": 0.0,
            "backgrounds": 1,
            "background_contrast": 0.0,
            "background_drift": 0.0,
            "textures_per_split": 1,
            "speed": (0.03, 0.05),
            "radius": (0.2, 0.25),
        },
        train_pp="cvrl_clips(frames=8, stride=1, power=4.0)",
        test_pp="center_clip(frames=8, stride=1)",
    )
    c.model = defaults("model", "cvrl_r3d", depth=18, width=0.125)
    c.objective = defaults(
        "objective", "cvrl", temperature=0.5, head_hidden=256, head_layers=2, head_out=64
    )
    c.optim.update(name="adamw", lr=2e-3, warmup_steps=20, weight_decay=1e-4)
    c.ckpt.update(every_steps=100, keep=2)
    c.evals = dict(
        linear=dict(
            # Listed (though they are the probe's defaults) so that the command line can set them.
            probe=dict(name="linear", solver="sgd", epochs=100, lr=0.1),
            encoders=("pretrained", "random"),
            label_sets=("motion", "appearance"),
            every_steps=placeholder(int),  # e.g. 100: probe curves during training
        )
    )
    if args.runlocal:
        c.total_steps = 3
        c.log_every_steps = 1
        c.data.batch_size = 16
        c.data.source.num_videos = 64
        c.evals.linear.probe.epochs = 5
    return c
