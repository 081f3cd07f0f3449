"""Input pipeline throughput, side by side on the same files and the same core.

    python -m benchmarks.data_pipeline [--record] [--files=4] [--clips=48] [--rss_seconds=120]

Makes 10-second H.264 clips with PyAV (320x240 and 640x480, moving textured content, libx264
defaults: a keyframe every 250 frames or at a scene cut, B-frames) in a temporary directory,
then measures, alternating the contenders round by round:

  pipeline vs bare PyAV   vrl's video_folder pipeline (Grain, ExampleMaker, window decode,
                          16 frames at stride 2, random_resized_crop to 224) against a plain
                          PyAV loop that seeks to the same windows, converts the same frames
                          (one reused swscale context) and makes the same crops with PIL
  window vs full decode   `decode.decode_frames` of one window against decoding every frame
                          of the file (converting only the window's frames to RGB)
  repeated sampling       the pipeline with repeated_samples=4 against 1 (clips per second)
  frames vs video store   prepare --store=frames against --store=video (original bytes),
                          both read through the tfds source and the same pipeline
  where time goes        the crop of one clip, and reading one tfds record of each store
                          (what repeated sampling and the frames store cannot amortise)
  cores per H100          clips/s per core against the clips/s one H100 trains at 40% MFU
                          (ViT-B, 16x224, 2x16x16 tubelets, training FLOPs 3 x forward)
  worker memory           RSS of 2 Grain worker processes over a run of --rss_seconds

Throughput is clips per CPU-second of this process (time.process_time, every thread counted)
while it is pinned to one core, so it is the per-core rate and stays meaningful on a machine
that other jobs share; FFmpeg sizes its thread pool from the affinity mask, so it decodes
with one thread, as each worker of a many-worker pipeline should.
"""

import contextlib
import csv
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import av
import numpy as np
from absl import app, flags, logging
from av.video.reformatter import VideoReformatter
from PIL import Image

from benchmarks import common
from vrl import flops as flops_lib
from vrl.data import decode, pipeline, prepare, spatial
from vrl.models import vit

_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")
_FILES = flags.DEFINE_integer("files", 4, "Clips per frame size.")
_CLIPS = flags.DEFINE_integer("clips", 48, "Clips per contender per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds per comparison (median kept).")
_RSS_SECONDS = flags.DEFINE_integer("rss_seconds", 120, "Length of the worker-memory run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Keep the clips here (default: a temp dir).")

SIZES = ((320, 240), (640, 480))
SECONDS, FPS = 10, 30
FRAMES, STRIDE, CROP = 16, 2, 224
TRAIN_PP = f"uniform_clip(frames={FRAMES}, stride={STRIDE})|random_resized_crop(size={CROP})"
BATCH = 8
PEAK_H100 = 989e12
TARGET_MFU = 0.4
# Minimum ratio of each contender over its baseline: the targets the table checks.
GOALS = {"vrl": 0.9, "window": 2.0, "k=4": 2.5, "frames": 3.0}


# ------------------------------------------------------------------------------ test clips


def make_clip(path: str, size: tuple[int, int], seed: int) -> None:
    """10 s of a panning textured scene with moving discs, H.264 (libx264 defaults, CRF 23)."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    big = (width + 2 * 16 * SECONDS * FPS // 8, height + 16 * SECONDS * FPS // 8)
    texture = np.asarray(Image.fromarray(coarse).resize(big, Image.Resampling.BICUBIC))
    grain_noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    ys, xs = np.mgrid[:height, :width]
    discs = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-4, 4),
              rng.uniform(-3, 3), rng.uniform(8, height / 6), rng.integers(0, 256, 3))
             for _ in range(3)]  # fmt: skip
    with av.open(path, "w") as container:
        options = {"crf": "23", "preset": "veryfast"}
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(SECONDS * FPS):
            x0, y0 = (2 * i) // 8, i // 8  # the camera pans right and down
            frame = texture[y0 : y0 + height, x0 : x0 + width].astype(np.int16) + grain_noise
            for cx, cy, vx, vy, radius, colour in discs:
                inside = (xs - (cx + vx * i) % width) ** 2 + (ys - (cy + vy * i) % height) ** 2
                frame[inside < radius**2] = colour
            picture = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), "rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def make_library(root: str, count: int) -> dict[tuple[int, int], str]:
    """{size: folder with `count` clips and a manifest.csv}; existing folders are reused."""
    folders = {}
    for width, height in SIZES:
        folder = os.path.join(root, f"{width}x{height}")
        os.makedirs(folder, exist_ok=True)
        names = [f"clip{i}.mp4" for i in range(count)]
        for i, name in enumerate(names):
            if not os.path.exists(os.path.join(folder, name)):
                make_clip(os.path.join(folder, name), (width, height), seed=1000 * width + i)
        with open(os.path.join(folder, "manifest.csv"), "w", newline="") as f:
            csv.writer(f).writerows([["path", "label"]] + [[n, n[:-4]] for n in names])
        folders[(width, height)] = folder
    return folders


def keyframe_count(path: str) -> int:
    with av.open(path) as container:
        stream = container.streams.video[0]
        keys = [p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    return len(keys)


# ------------------------------------------------------------------------------- measuring


def cpu_rate(run: Callable[[], int]) -> float:
    """Clips per CPU-second of `run()`, which returns how many clips it made."""
    start = time.process_time()
    clips = run()
    return clips / max(time.process_time() - start, 1e-9)


def rounds(contenders: dict[str, Callable[[], int]], count: int) -> dict[str, float]:
    """Median clips per CPU-second of each contender, alternating them round by round."""
    return common.alternate(contenders, count, cpu_rate)


def data_config(source: dict, repeats: int = 1, workers: int = 0) -> pipeline.DataConfig:
    return pipeline.DataConfig(
        source=source, train_pp=TRAIN_PP, batch_size=BATCH, repeated_samples=repeats,
        num_workers=workers, prefetch=0 if workers == 0 else 2,
    )  # fmt: skip


class PipelineRun:
    """vrl's training pipeline, kept open across rounds; records the windows it decoded."""

    def __init__(self, cfg: pipeline.DataConfig, seed: int = 0):
        data = pipeline.train_data(cfg).iterator(seed=seed, process_index=0, process_count=1)
        self.batches = iter(data)
        self.windows: list[tuple[str, int]] = []
        next(self.batches)  # warm: headers probed, decoder libraries loaded

    def __call__(self, clips: int) -> int:
        made = 0
        while made < clips:
            batch = next(self.batches)
            assert batch["video"].shape[1:] == (FRAMES, CROP, CROP, 3), batch["video"].shape
            self.windows += list(zip(map(str, batch["id"]), batch["temporal/start"][:, 0].tolist()))
            made += len(batch["video"])
        return made


def bare_pyav_clip(path: str, start: int, rng: np.random.Generator) -> np.ndarray:
    """A hand-written PyAV loader: seek before the window, decode to its end, crop with PIL."""
    wanted = set(range(start, start + FRAMES * STRIDE, STRIDE))
    last = start + (FRAMES - 1) * STRIDE
    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        to_rgb = VideoReformatter()
        period = 1 / (float(stream.average_rate) * float(stream.time_base))
        container.seek(int(start * period), backward=True, stream=stream)
        for frame in container.decode(stream):
            index = round(frame.pts / period)
            if index in wanted:
                frames.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
            if index >= last:
                break
    height, width = frames[0].shape[:2]
    box = spatial.sample_crop_box(rng, height, width, (0.3, 1.0), (0.5, 2.0))
    crops = [Image.fromarray(f).resize((CROP, CROP), Image.BILINEAR, box=box) for f in frames]
    return np.stack([np.asarray(c) for c in crops])


def bare_pyav(folder: str, windows: Iterator[tuple[str, int]], clips: int) -> int:
    rng = np.random.default_rng(0)
    for _ in range(clips):
        name, start = next(windows)
        clip = bare_pyav_clip(os.path.join(folder, name), start, rng)
        assert clip.shape == (FRAMES, CROP, CROP, 3), clip.shape
    return clips


def full_decode_clip(path: str, start: int) -> np.ndarray:
    """Every frame decoded in order; only the window's frames converted to RGB."""
    wanted = set(range(start, start + FRAMES * STRIDE, STRIDE))
    out = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        to_rgb = VideoReformatter()
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                out.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
    return np.stack(out)


def random_windows(folder: str, count: int, seed: int) -> list[tuple[str, int]]:
    names = sorted(n for n in os.listdir(folder) if n.endswith(".mp4"))
    rng = np.random.default_rng(seed)
    span = (FRAMES - 1) * STRIDE + 1
    return [(names[rng.integers(len(names))], int(rng.integers(SECONDS * FPS - span + 1)))
            for _ in range(count)]  # fmt: skip


def window_vs_full(folder: str, clips: int, count: int) -> tuple[dict, float, float]:
    windows = random_windows(folder, clips * count, seed=1)
    stats = decode.DecodeStats()
    positions = {"window": iter(windows), "full": iter(windows)}

    def window() -> int:
        for name, start in (next(positions["window"]) for _ in range(clips)):
            indices = np.arange(start, start + FRAMES * STRIDE, STRIDE)
            decode.decode_frames(os.path.join(folder, name), indices, stats=stats)
        return clips

    def full() -> int:
        for name, start in (next(positions["full"]) for _ in range(clips)):
            assert len(full_decode_clip(os.path.join(folder, name), start)) == FRAMES
        return clips

    rates = rounds({"window": window, "full": full}, count)
    return rates, stats.frames_decoded / len(windows), SECONDS * FPS


def pipeline_vs_bare(folder: str, clips: int, count: int) -> dict:
    source = {"name": "video_folder", "root": folder, "manifest": "manifest.csv"}
    run = PipelineRun(data_config(source))
    replay = _Replay(run.windows)  # the bare loop decodes the windows the pipeline just did
    contenders = {"vrl": lambda: run(clips), "bare": lambda: bare_pyav(folder, replay, clips)}
    return rounds(contenders, count)


class _Replay:
    """Iterates over a list that another contender keeps appending to (same windows, later)."""

    def __init__(self, items: list):
        self.items, self.position = items, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.items[self.position]
        self.position += 1
        return item


def repeated_sampling(folder: str, clips: int, count: int) -> dict:
    source = {"name": "video_folder", "root": folder, "manifest": "manifest.csv"}
    runs = {k: PipelineRun(data_config(source, repeats=k)) for k in (1, 4)}
    return rounds({f"k={k}": (lambda run=run: run(clips)) for k, run in runs.items()}, count)


def stores(folder: str, data_dir: str, clips: int, count: int) -> dict:
    runs = {}
    for store in ("frames", "video"):
        name = f"bench_{os.path.basename(folder).replace('x', '_')}_{store}"
        shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)  # never a stale one
        prepare.prepare(folder, os.path.join(folder, "manifest.csv"), name, ["train"], data_dir,
                        options=prepare.Options(store=store), workers=1)  # fmt: skip
        source = {"name": "tfds", "dataset": name, "data_dir": data_dir}
        runs[store] = PipelineRun(data_config(source))
    return rounds({s: (lambda run=run: run(clips)) for s, run in runs.items()}, count)


def cost_ms(run: Callable[[], None], repeats: int) -> float:
    """Median CPU milliseconds of `run()`."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def crop_cost_ms(folder: str) -> float:
    """random_resized_crop to CROP of one decoded 16-frame clip (what every clip pays)."""
    name, start = random_windows(folder, 1, seed=2)[0]
    clip = decode.decode_frames(os.path.join(folder, name), np.arange(start, start + 32, 2))
    crop = spatial.random_resized_crop(size=CROP)
    rng = np.random.default_rng(0)
    return cost_ms(lambda: crop({"video": clip[None]}, rng), 20)


def record_read_ms(data_dir: str, dataset: str) -> float:
    """Reading one record of a prepared dataset (the whole video), before any decoding."""
    source = pipeline.make_source(
        data_config({"name": "tfds", "dataset": dataset, "data_dir": data_dir}), "train"
    )
    source[0]
    return cost_ms(lambda: [source[i] for i in range(len(source))], 3) / len(source)


def h100_clips_per_s() -> tuple[float, float]:
    """(training FLOPs per clip, clips/s) of ViT-B 16x224 at 40% MFU of an H100."""
    encoder = vit.ViT(size="B", patch=(2, 16, 16))
    tokens = int(np.prod(encoder.token_grid(FRAMES, CROP, CROP)))
    per_clip = 3 * flops_lib.vit_flops(encoder, tokens, tokens)
    return per_clip, TARGET_MFU * PEAK_H100 / per_clip


# --------------------------------------------------------------------------- worker memory


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_pids() -> list[int]:
    """This process's children that are Grain workers (not multiprocessing's resource tracker)."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    workers = []
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                workers.append(pid)
    return sorted(workers)


def worker_memory(folder: str, seconds: int) -> dict:
    """RSS of the Grain workers (MB, summed) sampled through a run of `seconds`."""
    source = {"name": "video_folder", "root": folder, "manifest": "manifest.csv"}
    data = pipeline.train_data(data_config(source, workers=2))
    batches = iter(data.iterator(seed=0, process_index=0, process_count=1))
    next(batches)
    pids = worker_pids()
    samples = [(0.0, sum(rss_mb(pid) for pid in pids))]
    peak = max(rss_mb(pid) for pid in pids)
    clips, began = 0, time.monotonic()
    while (now := time.monotonic() - began) < seconds:
        clips += len(next(batches)["video"])
        if now - samples[-1][0] >= seconds / 12:
            samples.append((now, sum(rss_mb(pid) for pid in pids)))
            peak = max(peak, *(rss_mb(pid) for pid in pids))
    samples.append((time.monotonic() - began, sum(rss_mb(pid) for pid in pids)))
    del batches
    return {"workers": len(pids), "samples": samples, "peak": peak, "clips": clips}


# ------------------------------------------------------------------------------------- main


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def compare(label: str, rates: dict, ours: str, theirs: str) -> list[str]:
    """A table row: clips/s/core of `ours` and `theirs`, their ratio and the goal it meets."""
    ratio = rates[ours] / rates[theirs]
    goal = GOALS[ours]
    verdict = f">= {goal}x: {'met' if ratio >= goal else 'MISSED'}"
    return [
        f"{label} (clips/s/core)",
        fmt(rates[ours]),
        fmt(rates[theirs]),
        f"{ratio:.2f}x",
        verdict,
    ]


def main(argv):
    del argv
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="vrl_data_bench_")
    os.makedirs(root, exist_ok=True)
    try:
        table, notes = run_all(root)
    finally:
        if not _WORKDIR.value:
            shutil.rmtree(root, ignore_errors=True)
    header = ["measurement", "vrl", "baseline", "ratio", "goal"]
    text = common.markdown_table(header, table)
    body = f"{common.machine()}\n\n{text}\n\n" + "\n".join(f"- {n}" for n in notes)
    print(body)
    if _RECORD.value:
        common.record("Input pipeline (benchmarks/data_pipeline.py)", body)


def run_all(root: str) -> tuple[list[list], list[str]]:
    logging.info("Making %d clips per size in %s ...", _FILES.value, root)
    folders = make_library(os.path.join(root, "videos"), _FILES.value)
    keyframes = {s: keyframe_count(os.path.join(f, "clip0.mp4")) for s, f in folders.items()}
    core = min(os.sched_getaffinity(0))
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    clips, count = _CLIPS.value, _ROUNDS.value
    table, per_core = [], {}
    try:
        for size, folder in folders.items():
            name = f"{size[0]}x{size[1]}"
            logging.info("%s: pipeline vs bare PyAV ...", name)
            rates = pipeline_vs_bare(folder, clips, count)
            per_core[name] = rates["vrl"]
            table.append(compare(f"{name} pipeline vs bare PyAV loop", rates, "vrl", "bare"))
            logging.info("%s: window vs full decoding ...", name)
            rates, decoded, total = window_vs_full(folder, clips // 2, count)
            label = (
                f"{name} window-only vs full-video decode (frames decoded {decoded:.0f} vs {total})"
            )
            table.append(compare(label, rates, "window", "full"))
            logging.info("%s: repeated sampling ...", name)
            rates = repeated_sampling(folder, clips, count)
            table.append(compare(f"{name} repeated sampling k=4 vs k=1", rates, "k=4", "k=1"))
            logging.info("%s: --store=frames vs --store=video ...", name)
            rates = stores(folder, os.path.join(root, "tfds"), clips, count)
            label = f"{name} tfds --store=frames vs --store=video"
            table.append(compare(label, rates, "frames", "video"))
            tag = name.replace("x", "_")
            reads = {s: record_read_ms(os.path.join(root, "tfds"), f"bench_{tag}_{s}")
                     for s in ("frames", "video")}  # fmt: skip
            table.append(
                [
                    f"{name} where time goes: random_resized_crop of 16 frames; reading "
                    "one tfds record, frames vs video store (ms)",
                    f"crop {crop_cost_ms(folder):.1f}",
                    f"read {reads['frames']:.1f} vs {reads['video']:.1f}",
                    "",
                    "informative",
                ]
            )
    finally:
        os.sched_setaffinity(0, allowed)
    per_clip, needed = h100_clips_per_s()
    for name, rate in per_core.items():
        table.append(
            [
                f"{name} cores to feed one H100 (ViT-B 16x224 at 40% MFU: {needed:.0f} clips/s)",
                f"{needed / rate:.0f} cores",
                "",
                "",
                "",
            ]
        )
    logging.info("Worker memory over %d s ...", _RSS_SECONDS.value)
    memory = worker_memory(folders[SIZES[-1]], _RSS_SECONDS.value)
    samples = memory["samples"]
    middle = samples[-1][0] / 2
    first = statistics.median(rss for t, rss in samples[1:] if t < middle)
    second = statistics.median(rss for t, rss in samples if t >= middle)
    growth = second - first
    table.append([f"worker RSS, {memory['workers']} workers, {samples[-1][0]:.0f} s, "
                  f"{memory['clips']} clips of {SIZES[-1][0]}x{SIZES[-1][1]} (MB summed: "
                  "start, median of 1st half, of 2nd half)",
                  f"{samples[0][1]:.0f}, {first:.0f}, {second:.0f}", "",
                  f"{growth:+.0f} MB",
                  f"{'bounded' if growth <= 0.05 * first else 'GROWING'} (2nd half within 5% "
                  f"of 1st); largest worker {memory['peak']:.0f} MB"])  # fmt: skip
    notes = [
        "clips/s/core: clips per CPU-second of one process pinned to one core (every thread "
        "counted), median of "
        f"{count} alternating rounds of {clips} clips; {FRAMES} frames at stride {STRIDE}, "
        f"random_resized_crop to {CROP}.",
        f"Files: {_FILES.value} x 10 s H.264 clips per size at {FPS} fps (libx264 veryfast, "
        "CRF 23, default GOP: "
        + ", ".join(f"{w}x{h} {k} keyframes in 300 frames" for (w, h), k in keyframes.items())
        + "), made with PyAV at the start of the run.",
        f"H100 demand: {per_clip / 1e9:.0f} GFLOP per training clip (3 x ViT-B forward on "
        f"1568 tokens), 0.4 x 989 TFLOP/s / that = {needed:.0f} clips/s.",
        f"Worker memory: a short run ({samples[-1][0]:.0f} s) with num_workers=2 (Grain "
        "mp_prefetch, not pinned); start is after the first batch; RSS sampled "
        + ", ".join(f"{rss:.0f}" for _, rss in samples)
        + " MB.",
    ]
    return table, notes


if __name__ == "__main__":
    app.run(main)
