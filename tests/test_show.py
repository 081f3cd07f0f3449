"""`python -m vrl.data.show`: it draws the trainer's examples, with masks where they are."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vrl import config as config_lib
from vrl.data import pipeline, show

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
VIDEOMAE = os.path.join(REPO, "configs", "videomae_vitb_k400.py")
# Two views that differ in colour, so a panel drawn from the wrong view shows.
JITTERED = "cvrl_clips(frames=8, stride=1)|color_jitter(p=1.0, brightness=0.8, hue=0.4)"


def gif_frames(path: str) -> list[np.ndarray]:
    with Image.open(path) as gif:
        frames = []
        for t in range(gif.n_frames):
            gif.seek(t)
            frames.append(np.asarray(gif.convert("RGB")))
    return frames


def panel(frame: np.ndarray, row: int, column: int, clip_hw: tuple[int, int]) -> np.ndarray:
    """The clip pixels of one panel of a GIF frame, back at the clip's own size."""
    scale = show.enlargement(*clip_hw)
    height, width = clip_hw[0] * scale, clip_hw[1] * scale
    x, y = show.panel_origin(row, column, (height, width))
    return frame[y : y + height : scale, x : x + width : scale]


def test_examples_are_the_first_global_batch_of_the_run():
    config = config_lib.load_file(QUICKSTART, "runlocal")
    examples, info = show.make_examples(config, num=3)
    cfg = config_lib.instantiate(pipeline.DataConfig, config_lib.to_dict(config.data), "data")
    source = pipeline.make_source(cfg, cfg.train_split)
    data = pipeline.train_data(cfg, source, pipeline.make_ops(cfg.train_pp, "train_pp"))
    assert info == {"grid": None, "views": 2, "repeats": 1, "label_names": source.label_names}
    batch = next(iter(data.iterator(seed=config.seed, process_index=0, process_count=1)))
    for i, example in enumerate(examples):
        assert example["video"].shape == (2, 8, 32, 32, 3)
        for key, value in example.items():
            np.testing.assert_array_equal(batch[key][i], value, err_msg=key)


def test_command_writes_a_gif_per_example_and_a_contact_sheet(tmp_path):
    out = tmp_path / "shown"
    result = subprocess.run(
        [sys.executable, "-m", "vrl.data.show", f"--config={QUICKSTART}:runlocal",
         f"--config.data.train_pp={JITTERED}", f"--out={out}", "--num=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = ["example_0.gif", "example_1.gif", "contact_sheet.png"]
    assert result.stdout.split() == [str(out / name) for name in names]
    config = config_lib.load_file(QUICKSTART, "runlocal")
    config.data.train_pp = JITTERED
    examples, _ = show.make_examples(config, num=2)
    for i, example in enumerate(examples):
        frames = gif_frames(str(out / f"example_{i}.gif"))
        assert len(frames) == 8  # one GIF frame per clip frame
        for view in range(2):  # CVRL: a row per view, each as the model sees it
            for t in (0, 7):
                drawn = panel(frames[t], view, 0, (32, 32)).astype(int)
                error = np.abs(drawn - example["video"][view, t]).mean()
                assert error < 12, (i, view, t, error)  # GIF palette rounding only
        other = np.abs(panel(frames[0], 0, 0, (32, 32)).astype(int) - example["video"][1, 0])
        assert other.mean() > 12  # the two views differ beyond palette rounding
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.height >= 2 * 2 * 32 * show.enlargement(32, 32)


def test_masks_are_drawn_over_the_hidden_tubelets(tmp_path):
    config = config_lib.load_file(VIDEOMAE, "runlocal")
    config.data.repeated_samples = 2
    paths = show.show(config, str(tmp_path), num=1)
    examples, info = show.make_examples(config, num=1)
    (example,) = examples
    assert info["grid"] == (4, 4, 4) and info["repeats"] == 2  # 8x32x32 clips, 2x8x8 tubelets
    assert example["video"].shape == (2, 8, 32, 32, 3) and example["mask"].shape == (2, 64)
    assert not np.array_equal(example["mask"][0], example["mask"][1])  # a mask per sample

    rows = show.clip_rows(example, info)
    assert [title for title, _ in rows] == ["sample 1", "sample 2"]
    for r, (_, panels) in enumerate(rows):
        (clip_title, clip), (mask_title, masked) = panels
        assert clip_title == "clip" and mask_title == "mask 88% hidden"  # 14 of 16 per slot
        np.testing.assert_array_equal(clip, example["video"][r])
        hidden = show.token_map(example["mask"][r], (4, 4, 4), (8, 32, 32))
        assert hidden.mean() == pytest.approx(14 / 16)
        np.testing.assert_array_equal(masked[~hidden], clip[~hidden])  # visible: untouched
        grey = 0.25 * clip[hidden].astype(np.float32) + 0.75 * 128
        np.testing.assert_array_equal(masked[hidden], (grey + 0.5).astype(np.uint8))
        # Tube masking: the same tubelets are hidden in every frame.
        assert (hidden == hidden[:1]).all()

    frames = gif_frames(paths[0])
    assert len(frames) == 8
    for r in range(2):
        drawn = panel(frames[3], r, 1, (32, 32)).astype(int)
        assert np.abs(drawn - rows[r][1][1][1][3]).mean() < 12


def test_target_tokens_are_tinted_and_bad_grids_are_named():
    video = np.full((4, 8, 8, 3), 200, np.uint8)
    hidden = np.array([True, True, False, False])  # grid (1, 2, 2): top row hidden
    target = np.array([True, False, False, False])
    drawn = show.draw_mask(video, hidden, (1, 2, 2), target)
    assert drawn[0, 0, 0].tolist() == [215, 80, 80]  # hidden target: red
    assert drawn[0, 0, 7].tolist() == [146, 146, 146]  # hidden, not scored: grey
    assert drawn[0, 7, 0].tolist() == [200, 200, 200]  # visible
    with pytest.raises(ValueError, match=r"does not split into a \(1, 3, 2\) token grid"):
        show.token_map(hidden, (1, 3, 2), (4, 8, 8))
    floats = show.to_uint8(np.array([0.0, 0.5, 1.0], np.float32))
    assert floats.tolist() == [0, 128, 255]
