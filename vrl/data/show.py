r"""Look at what the model is trained on: a few training examples as animated GIFs and one PNG.

    python -m vrl.data.show --config=configs/<name>.py[:arg] --out=DIR [--num=4] [--split=train]

Augmentation bugs (a crop that misses the action, a flip on direction labels, masks that hide
the wrong tubelets) are invisible in loss curves, so this draws the examples the trainer would
draw, through the trainer's own data path: `pipeline.train_data` builds the source and the
train ops, the objective adds its mask ops (`objective.batch_ops`), and `TrainData.examples`
makes example i exactly as the i-th video of the run's first global batch (same seed, same
shuffle, same per-record rng).

Each example becomes `example_<i>.gif`: rows are the clips the model sees (every view, every
repeated sample), columns are the clip and then one panel per mask, where tubelets hidden from
the encoder are greyed out and hidden tubelets the loss scores as separate targets (multi-block
masks) are tinted red. `contact_sheet.png` shows every example at a few times side by side.
"""

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image, ImageDraw, ImageFont

from vrl import config as config_lib
from vrl import storage
from vrl.data import pipeline
from vrl.objectives import base

GREY = 128.0
TARGET_TINT = np.array([220.0, 40.0, 40.0], np.float32)
HIDDEN_KEEP = 0.25  # weight of the original pixel in a hidden tubelet
MIN_SIDE = 96  # small clips are enlarged (nearest neighbour) to at least this many pixels
FRAME_MS = 125  # GIF frame duration: 8 frames per second
SHEET_TIMES = 6  # frame times per example on the contact sheet
_GAP = 4
_CAPTION = 14
_MASK_KEY = re.compile(r"^mask(/.*)?$")


# ----------------------------------------------------------------------------- examples


def make_examples(config: Any, num: int = 4, split: str | None = None) -> tuple[list[dict], dict]:
    """The first `num` training examples of a run config, and what rendering needs to know.

    `split` draws from another split of the same source, still with the training ops.
    Returns (examples, info) with info = {"grid": token grid or None, "views": V,
    "repeats": k, "label_names": {set: [names]}}.
    """
    config = config_lib.to_dict(config)
    cfg = config_lib.instantiate(pipeline.DataConfig, config.get("data", {}), "config.data")
    objective = base.build(config)
    source = pipeline.make_source(cfg, cfg.train_split if split is None else split)
    data = pipeline.train_data(cfg, source, pipeline.make_ops(cfg.train_pp, "config.data.train_pp"))
    mask_ops = objective.batch_ops(data.clip)
    examples = data.examples(config.get("seed", 0), mask_ops)  # the run's seed (0 by default)
    clip, encoder = data.clip, objective.encoder
    grid = None
    if mask_ops and hasattr(encoder, "token_grid"):
        grid = tuple(encoder.token_grid(clip.frames, clip.height, clip.width))
    info = {
        "grid": grid,
        "views": clip.views,
        "repeats": cfg.repeated_samples,
        "label_names": data.label_names,
    }
    return [examples[i] for i in range(min(num, data.num_examples))], info


# ---------------------------------------------------------------------------- rendering


def to_uint8(video: np.ndarray) -> np.ndarray:
    """uint8 pixels from uint8, or from float video in [0, 1] (or [0, 255])."""
    video = np.asarray(video)
    if video.dtype == np.uint8:
        return video
    scale = 255.0 if float(np.max(video, initial=0.0)) <= 1.0 else 1.0
    return np.clip(np.asarray(video, np.float32) * scale + 0.5, 0, 255).astype(np.uint8)


def token_map(tokens: np.ndarray, grid: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """bool [T, H, W] from per-token flags [t * h * w] (t-major): each tubelet's pixels."""
    t, h, w = grid
    frames, height, width = shape
    if frames % t or height % h or width % w:
        raise ValueError(f"clip {tuple(shape)} does not split into a {tuple(grid)} token grid")
    cells = np.asarray(tokens, bool).reshape(t, h, w)
    return cells.repeat(frames // t, 0).repeat(height // h, 1).repeat(width // w, 2)


def draw_mask(
    video: np.ndarray, hidden: np.ndarray, grid: Sequence[int], target: np.ndarray | None = None
) -> np.ndarray:
    """uint8 [T, H, W, 3]: hidden tubelets greyed out, hidden scored targets tinted red."""
    video = to_uint8(video)
    hidden_px = token_map(hidden, grid, video.shape[:3])
    out = video.astype(np.float32)
    cover = np.full(3, GREY, np.float32)
    out[hidden_px] = HIDDEN_KEEP * out[hidden_px] + (1 - HIDDEN_KEEP) * cover
    if target is not None:
        red = hidden_px & token_map(target, grid, video.shape[:3])
        out[red] = HIDDEN_KEEP * video[red] + (1 - HIDDEN_KEEP) * TARGET_TINT
    return (out + 0.5).astype(np.uint8)


def clip_rows(example: dict, info: dict) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(row title, [(panel title, uint8 [T, H, W, 3])])]: one row per clip the model sees."""
    video = to_uint8(example["video"])
    repeats, views = info["repeats"], info["views"]
    video = video.reshape(repeats, views, *video.shape[-4:])
    suffixes = sorted(m.group(1) or "" for k in example if (m := _MASK_KEY.match(k)))
    rows = []
    for r in range(repeats):
        for v in range(views):
            clip = video[r, v]
            panels = [("clip", clip)]
            for suffix in suffixes:
                hidden = np.asarray(example[f"mask{suffix}"]).reshape(repeats, -1)[r]
                target = example.get(f"target_mask{suffix}")
                if target is not None:
                    target = np.asarray(target).reshape(repeats, -1)[r]
                drawn = draw_mask(clip, hidden, info["grid"], target)
                panels.append((f"mask{suffix} {100 * hidden.mean():.0f}% hidden", drawn))
            title = " ".join(
                part
                for part, used in ((f"sample {r + 1}", repeats > 1), (f"view {v + 1}", views > 1))
                if used
            )
            rows.append((title, panels))
    return rows


def describe(example: dict, label_names: dict[str, list[str]]) -> str:
    """ "id | label: name | ..." for the caption of an example."""
    parts = [str(np.ravel(example.get("id", [""]))[0])]
    for key in sorted(k for k in example if k.startswith("label/")):
        label_set = key.split("/", 1)[1]
        value = int(np.ravel(example[key])[0])
        names = label_names.get(label_set)
        parts.append(f"{label_set}: {names[value] if names and value < len(names) else value}")
    return " | ".join(parts)


def compose(rows, time: int, scale: int, font) -> Image.Image:
    """The panels of an example at frame `time`: rows of captioned clips and masks."""
    height, width = rows[0][1][0][1].shape[1:3]
    ph, pw = height * scale, width * scale
    columns = max(len(panels) for _, panels in rows)
    size = (columns * (pw + _GAP) + _GAP, len(rows) * (_CAPTION + ph + _GAP))
    canvas = Image.new("RGB", size, (24, 24, 24))
    pen = ImageDraw.Draw(canvas)
    for r, (row_title, panels) in enumerate(rows):
        for c, (panel_title, frames) in enumerate(panels):
            x, y = panel_origin(r, c, (ph, pw))
            y -= _CAPTION  # the body sits below the example's caption
            pen.text((x, y - _CAPTION), f"{row_title} {panel_title}".strip(), fill=(200, 200, 200),
                     font=font)  # fmt: skip
            image = Image.fromarray(frames[min(time, len(frames) - 1)])
            if scale > 1:
                image = image.resize((pw, ph), Image.Resampling.NEAREST)
            canvas.paste(image, (x, y))
    return canvas


def enlargement(height: int, width: int) -> int:
    """Integer factor that brings a clip's short side to at least MIN_SIDE pixels."""
    return max(1, -(-MIN_SIDE // min(height, width)))


def panel_origin(row: int, column: int, panel: tuple[int, int]) -> tuple[int, int]:
    """(x, y) of the top-left pixel of a panel of (height, width) in a GIF frame."""
    height, width = panel
    return _GAP + column * (width + _GAP), _CAPTION + row * (_CAPTION + height + _GAP) + _CAPTION


def captioned(caption: str, images: Sequence[Image.Image], font) -> Image.Image:
    """`images` side by side under a one-line caption."""
    pen = ImageDraw.Draw(images[0])
    width = max(sum(im.width for im in images), int(pen.textlength(caption, font=font)) + 2 * _GAP)
    canvas = Image.new("RGB", (width, _CAPTION + max(im.height for im in images)), (24, 24, 24))
    ImageDraw.Draw(canvas).text((_GAP, 1), caption, fill=(235, 235, 235), font=font)
    x = 0
    for image in images:
        canvas.paste(image, (x, _CAPTION))
        x += image.width
    return canvas


def render(examples: Sequence[dict], info: dict, out: str) -> list[str]:
    """Writes example_<i>.gif per example and contact_sheet.png into `out` (a folder or a
    bucket URL: PIL writes local files, uploaded at the end); returns the paths."""
    with storage.staged(out) as folder:
        names = _render(examples, info, folder)
    return [os.path.join(out, name) for name in names]


def _render(examples: Sequence[dict], info: dict, out: str) -> list[str]:
    font = ImageFont.load_default()
    paths, sheet_rows = [], []
    for i, example in enumerate(examples):
        rows = clip_rows(example, info)
        frames, height, width = rows[0][1][0][1].shape[:3]
        scale = enlargement(height, width)
        caption = describe(example, info["label_names"])
        bodies = [compose(rows, t, scale, font) for t in range(frames)]
        images = [captioned(caption, [body], font) for body in bodies]
        name = f"example_{i}.gif"
        images[0].save(
            os.path.join(out, name),
            save_all=True,
            append_images=images[1:],
            duration=FRAME_MS,
            loop=0,
        )
        paths.append(name)
        times = np.unique(np.linspace(0, frames - 1, min(SHEET_TIMES, frames)).round().astype(int))
        label = f"{caption} | frames {', '.join(str(t) for t in times)}"
        sheet_rows.append(captioned(label, [bodies[t] for t in times], font))
    sheet = Image.new(
        "RGB", (max(r.width for r in sheet_rows), sum(r.height for r in sheet_rows)), (0, 0, 0)
    )
    y = 0
    for row in sheet_rows:
        sheet.paste(row, (0, y))
        y += row.height
    sheet.save(os.path.join(out, "contact_sheet.png"))
    paths.append("contact_sheet.png")
    return paths


def show(config: Any, out: str, num: int = 4, split: str | None = None) -> list[str]:
    """Renders the first `num` training examples of `config` into `out`; returns the paths."""
    if num < 1:
        raise ValueError(f"--num={num}: must be >= 1")
    storage.check(out, "--out")  # before the examples are made
    examples, info = make_examples(config, num, split)
    return render(examples, info, out)


# -------------------------------------------------------------------------------- command


def _define_flags() -> None:
    """Flags exist only when this module runs as the program, so importing it defines none."""
    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_string("out", None, "Folder or bucket URL for the GIFs and the contact sheet.")
    flags.DEFINE_integer("num", 4, "Examples to render.")
    flags.DEFINE_string("split", None, "Split to draw from (default: config.data.train_split).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.config is None or not flags.FLAGS.out:
        raise app.UsageError("--config and --out are required")
    try:
        paths = show(flags.FLAGS.config, flags.FLAGS.out, flags.FLAGS.num, flags.FLAGS.split)
    except config_lib.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except storage.StorageError as e:
        print(f"vrl.data.show: {e}", file=sys.stderr)
        sys.exit(2)
    for path in paths:
        logging.info("wrote %s", path)
    print("\n".join(paths))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
