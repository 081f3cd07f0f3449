"""`vrl.data.prepare --runner=beam` (DirectRunner) against the local process pool, same inputs.

    python -m benchmarks.prepare_beam [--videos=48] [--seconds=4] [--workers=2] [--rounds=3]

Makes --videos H.264 clips (320x240, 30 fps, --seconds long, moving content) and prepares them
with --store=video --short_side=128 (decode, resize, H.264 re-encode: the CPU work of a
Kinetics preparation) into a fresh dataset and work directory per run, once with a pool of
--workers processes and once with the Beam DirectRunner in --workers processes
(multi_processing), each run the whole `python -m vrl.data.prepare` command (start-up, the
pipeline, writing the shards), alternating round by round (median kept). Prints the wall
times, their ratio (the goal: Beam at most 15% slower) and the inputs per worker-hour that
the cluster cost model in docs/DATA.md starts from.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
from absl import app, flags

from benchmarks import common

_VIDEOS = flags.DEFINE_integer("videos", 48, "Input clips.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Length of each clip.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes, for both contenders.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (median kept).")

SIZE, FPS, SHORT_SIDE = (320, 240), 30, 128


def make_clip(path: str, frames: int, seed: int) -> None:
    """A textured picture moving one pixel a frame (so the encoder has real work)."""
    texture = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0] * 2, 3), np.uint8)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for index in range(frames):
            image = texture[:, index % SIZE[0] : index % SIZE[0] + SIZE[0]]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def main(argv) -> None:
    del argv
    workers = _WORKERS.value
    with tempfile.TemporaryDirectory(prefix="vrl-prepare-beam-") as root:
        videos = os.path.join(root, "videos")
        os.makedirs(videos)
        names = [f"clip{i:03d}.mp4" for i in range(_VIDEOS.value)]
        for i, name in enumerate(names):
            make_clip(os.path.join(videos, name), round(_SECONDS.value * FPS), seed=i)
        manifest = os.path.join(root, "train.csv")
        with open(manifest, "w") as f:
            f.write("path,label\n" + "".join(f"{n},c{i % 4}\n" for i, n in enumerate(names)))
        env = dict(os.environ, PYTHONPATH=os.getcwd())  # Beam's worker processes import vrl
        beam_options = (
            f"--runner=DirectRunner --direct_num_workers={workers} "
            "--direct_running_mode=multi_processing"
        )

        def run(*runner: str):
            """The command as a user runs it (a spawned pool re-imports only its __main__)."""
            out = os.path.join(root, "out")
            shutil.rmtree(out, ignore_errors=True)
            command = [
                sys.executable, "-m", "vrl.data.prepare", f"--videos={videos}",
                f"--manifest={manifest}", "--name=bench", f"--out={out}",
                f"--short_side={SHORT_SIDE}", f"--workers={workers}", *runner,
            ]  # fmt: skip
            subprocess.run(command, env=env, check=True, capture_output=True)
            rows = os.listdir(os.path.join(out, "bench", "1.0.0"))
            assert any(".array_record" in name for name in rows), rows

        def seconds(contender) -> float:
            started = time.perf_counter()
            contender()
            return time.perf_counter() - started

        timed = common.alternate(
            {"local": run, "beam": lambda: run("--runner=beam", f"--beam_options={beam_options}")},
            _ROUNDS.value,
            seconds,
        )
    rows = [
        [
            name,
            f"{value:.1f}",
            f"{len(names) / value:.2f}",
            f"{len(names) / value / workers * 3600:.0f}",
            f"{value / timed['local']:.2f}",
        ]
        for name, value in timed.items()
    ]
    print(
        f"{len(names)} clips of {_SECONDS.value:g} s, {SIZE[0]}x{SIZE[1]} H.264 -> "
        f"--store=video --short_side={SHORT_SIDE}; {workers} workers; median of "
        f"{_ROUNDS.value} alternating rounds; {common.machine()}"
    )
    header = ["runner", "seconds", "inputs/s", "inputs/worker-hour", "time vs local"]
    print(common.markdown_table(header, rows))
    ratio = timed["beam"] / timed["local"]
    verdict = "within" if ratio <= 1.15 else "over"
    print(f"Beam/local = {ratio:.2f} ({verdict} the 1.15 goal)")


if __name__ == "__main__":
    app.run(main)
