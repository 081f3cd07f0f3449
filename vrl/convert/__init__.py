"""Published checkpoints -> vrl run directories (`python -m vrl.convert`).

    python -m vrl.convert --format=hf_videomae --src=videomae-base --workdir=runs/videomae_b
    python -m vrl.probe --config=configs/probe/linear.py --config.checkpoint=runs/videomae_b

Each format lives in its own module and returns a `common.Converted` from a local file or
folder (nothing is downloaded); `convert` checks it strictly and writes the run directory.
"""

import dataclasses
import importlib

from vrl.convert.common import ConversionError, Converted, Tensors, format_mapping, write_run

# format -> (module, function(src, options) -> (Converted, Tensors))
FORMATS = {
    "hf_videomae": ("vrl.convert.videomae", "from_hf"),
    "videomae_pth": ("vrl.convert.videomae", "from_pth"),
    "hf_vjepa2": ("vrl.convert.vjepa", "from_hf"),
    "vjepa_pth": ("vrl.convert.vjepa", "from_pth"),
    "torchvision": ("vrl.convert.video_resnet", "from_torchvision"),
    "hf_vit": ("vrl.convert.image_vit", "from_hf"),
}


@dataclasses.dataclass(frozen=True)
class Options:
    """What a checkpoint file may not say about itself; None: read from the file or the format's
    published default (each format's docstring says which)."""

    frames: int | None = None  # clip length the model was trained on
    image_size: int | None = None  # clip height = width
    arch: str | None = None  # e.g. a ViT size ("S", "B", "L") or a torchvision architecture


def read(fmt: str, src: str, options: Options = Options()) -> tuple[Converted, Tensors]:
    """The checkpoint at `src` in vrl's terms (nothing written)."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format={fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    module, function = FORMATS[fmt]
    return getattr(importlib.import_module(module), function)(src, options)


def convert(fmt: str, src: str, workdir: str, options: Options = Options()) -> dict:
    """Converts `src` into the run directory `workdir`; returns the run config it saved."""
    converted, tensors = read(fmt, src, options)
    return write_run(converted, tensors, workdir, note=f"{fmt}:{src}")


__all__ = ["FORMATS", "ConversionError", "Options", "convert", "format_mapping", "read"]
