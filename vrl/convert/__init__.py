"""Published checkpoints -> vrl run directories (`python -m vrl.convert`).

    python -m vrl.convert --format=hf_videomae --src=videomae-base --workdir=runs/videomae_b
    python -m vrl.probe --config=configs/probe/linear.py --config.checkpoint=runs/videomae_b

Each format lives in its own module and returns a `common.Converted` from a local file or
folder (nothing is fetched from model hubs; a bucket URL's file or folder is copied to a
temporary folder first); `convert` checks it strictly and writes the run directory, which may
be a bucket URL too (`--workdir=gs://BUCKET/runs/videomae_b`).
"""

import dataclasses
import importlib

from vrl import storage
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
    """The checkpoint at `src` (a local path or a bucket URL) in vrl's terms (nothing written)."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format={fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    module, function = FORMATS[fmt]
    reader = getattr(importlib.import_module(module), function)
    source = storage.check(src, "--src")
    if not storage.is_remote(source):
        return reader(src, options)
    if not source.exists():
        raise ConversionError(f"{src}: no such file or folder")
    # The formats read local files (safetensors, torch.load); messages name the URL, not the copy.
    with storage.local_copy(source) as local:
        try:
            converted, tensors = reader(local, options)
        except ConversionError as e:
            raise ConversionError(str(e).replace(local, src)) from None
    tensors.source = tensors.source.replace(local, src)
    return converted, tensors


def convert(fmt: str, src: str, workdir: str, options: Options = Options()) -> dict:
    """Converts `src` into the run directory `workdir` (a local folder or a bucket URL);
    returns the run config it saved."""
    target = str(storage.check(workdir, "--workdir"))  # before the long read of `src`
    converted, tensors = read(fmt, src, options)
    return write_run(converted, tensors, target, note=f"{fmt}:{src}")


__all__ = ["FORMATS", "ConversionError", "Options", "convert", "format_mapping", "read"]
