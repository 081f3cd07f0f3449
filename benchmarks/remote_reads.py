"""Reading from a bucket against reading from local disk: the same files, the same code.

    python -m benchmarks.remote_reads [--record] [--videos=8] [--clips=64] [--rounds=2] \
        [--latency_ms=20]

Starts a Cloud Storage emulator (gcp-storage-emulator, as the tests do) in a child process,
makes --videos clips of --seconds (10) at 320x240, H.264, prepares them as a tfds dataset
(--store=video) and uploads both the folder and the dataset. Then, alternating local and
remote round by round (median kept):

  direct reads        one tfds record (store.Reader) and one 16-frame window decoded from a
                      video file (decode.decode_frames on the path or the URL), each with the
                      emulator answering at once and with --latency_ms added to every request
                      (the time to first byte of Cloud Storage seen from a VM in its region
                      is of that order); the ratio is remote time / local time
  pipeline settings   vrl's training pipeline (video_folder and tfds sources, 16 frames at
                      stride 2, random_resized_crop to 112, batches of 8) with each setting
                      of config.data read_threads / num_workers / prefetch, at --latency_ms:
                      clips per second (wall clock) from disk and from the bucket

The emulator serves each request on its own thread, like a real bucket (its stock server
serves one request at a time, which would hide what parallel reads gain).
"""

import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


# Set before any client (gcsfs, ArrayRecord's C++ client) is imported. Child processes (Grain
# workers, the emulator) import this module again: they keep the parent's address.
_URL = os.environ.setdefault("VRL_REMOTE_READS_EMULATOR", f"http://127.0.0.1:{_free_port()}")
os.environ.update(
    STORAGE_EMULATOR_HOST=_URL,
    FSSPEC_GCS_TOKEN="anon",
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    NO_GCE_CHECK="true",
    TENSORSTORE_GCS_HTTP_URL=_URL,
    GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
    CLOUD_STORAGE_EMULATOR_ENDPOINT=_URL,
)

import av  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import common  # noqa: E402
from vrl import storage  # noqa: E402
from vrl.data import decode, manifests, pipeline, prepare, store  # noqa: E402

_RECORD = flags.DEFINE_bool("record", False, "Write the tables into docs/PERFORMANCE.md.")
_VIDEOS = flags.DEFINE_integer("videos", 8, "Clips in the folder and the dataset.")
_CLIPS = flags.DEFINE_integer("clips", 64, "Reads (or pipeline clips) per contender per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds per measurement (median kept).")
_LATENCY_MS = flags.DEFINE_float("latency_ms", 20.0, "Delay the emulator adds to each request.")
_WORKERS = flags.DEFINE_bool("workers", True, "Include the settings with worker processes.")
_SECONDS = flags.DEFINE_integer("seconds", 10, "Length of each clip.")
_MAX_THREADS = flags.DEFINE_integer("max_read_threads", 16, "Leave out settings with more.")

BUCKET = "vrl-bench"
SIZE, FPS = (320, 240), 30
FRAMES, STRIDE = 16, 2
TRAIN_PP = f"uniform_clip(frames={FRAMES}, stride={STRIDE})|random_resized_crop(size=112)"
BATCH = 8
# (label, read_threads, num_workers, prefetch): config.data settings, from none to many.
# Prefetch counts batches; each read thread makes one batch at a time.
SETTINGS = (
    ("prefetch=0 (read on demand)", 0, 0, 0),
    ("defaults (1 read thread, prefetch=2)", 0, 0, 2),
    ("read_threads=4, prefetch=4", 4, 0, 4),
    ("read_threads=16, prefetch=16", 16, 0, 16),
    ("num_workers=2, prefetch=2", 0, 2, 2),
    ("num_workers=2, read_threads=4, prefetch=4", 4, 2, 4),
)


# ------------------------------------------------------------------------------- emulator


def _serve(port: int, latency_s, ready) -> None:
    """The emulator, one thread per request, each answered `latency_s.value` late."""
    import re  # noqa: PLC0415
    from http import server as http_server  # noqa: PLC0415

    from gcp_storage_emulator.handlers import objects  # noqa: PLC0415

    download = objects.download

    def last_bytes(request, response, storage, *args, **kwargs):
        """Serves `Range: bytes=-N` (the last N bytes: how ArrayRecord reads a file's end),
        which the emulator answers with the whole object."""
        match = re.fullmatch(r"\s*bytes=-(\d+)", request.get_header("range", "") or "")
        if match:
            name = request.params["bucket_name"], request.params["object_id"]
            start = max(len(storage.get_file(*name)) - int(match[1]), 0)
            request._request_handler.headers.replace_header("Range", f"bytes={start}-")
        return download(request, response, storage, *args, **kwargs)

    objects.download = last_bytes  # before the server module builds its routes
    from gcp_storage_emulator import server as emulator  # noqa: PLC0415

    handle = emulator.Router.handle

    def late(self, method):
        time.sleep(latency_s.value)
        handle(self, method)

    class Threaded(http_server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            del request, client_address  # clients that stop reading early (readahead): fine

    emulator.Router.handle = late
    emulator.server.HTTPServer = Threaded  # http.server's, in this child process only
    emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET).start()
    ready.set()
    parent = os.getppid()
    while os.getppid() == parent:  # ends with the benchmark, however that ends
        time.sleep(1)
    os._exit(0)


class Emulator:
    """The emulator in a child process (its threads do not share this process's GIL). It ends
    after this process: a read still in flight in a closed pipeline's thread then completes,
    where a stopped emulator would leave ArrayRecord's client retrying and the exit waiting."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self._latency = context.Value("d", 0.0)
        ready = context.Event()
        port = int(_URL.rsplit(":", 1)[1])
        self._process = context.Process(
            target=_serve, args=(port, self._latency, ready), daemon=True
        )
        self._process.start()
        if not ready.wait(60):
            raise RuntimeError("the Cloud Storage emulator did not start")

    def latency(self, seconds: float) -> None:
        self._latency.value = seconds


# ------------------------------------------------------------------------------- the data


def make_clip(path: str, seed: int) -> None:
    """--seconds of moving noise blocks at 320x240, H.264 (a keyframe every 250 frames)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    frames = _SECONDS.value * FPS
    texture = rng.integers(0, 256, (height // 8 + frames, width // 8, 3), dtype=np.uint8)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            blocks = texture[i : i + height // 8]
            frame = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
            picture = av.VideoFrame.from_ndarray(frame, "rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def make_data(local: str, remote: str, count: int) -> None:
    """local/videos (clips and manifest.csv) and local/tfds (dataset `bench`), then a copy of
    both at `remote`."""
    folder = os.path.join(local, "videos")
    os.makedirs(folder)
    names = [f"clip{i}.mp4" for i in range(count)]
    for i, name in enumerate(names):
        make_clip(os.path.join(folder, name), seed=i)
    rows = [manifests.ManifestRow(name, name[:-4]) for name in names]
    manifests.write_manifest(os.path.join(folder, "manifest.csv"), rows)
    prepare.prepare(
        folder, "manifest.csv", "bench", ["train"], os.path.join(local, "tfds"), workers=1
    )
    storage.copy(folder, f"{remote}/videos")
    storage.copy(store.dataset_dir(os.path.join(local, "tfds"), "bench"),
                 store.dataset_dir(f"{remote}/tfds", "bench"))  # fmt: skip


# ------------------------------------------------------------------------------- measuring


def per_item_ms(run: Callable[[], int]) -> float:
    start = time.perf_counter()
    items = run()
    return 1000 * (time.perf_counter() - start) / items


def alternate(contenders: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    """Median wall milliseconds per item of each contender, alternating them round by round."""
    return common.alternate(contenders, rounds, per_item_ms)


def record_reads(data_dir: str, clips: int, seed: int) -> Callable[[], int]:
    reader = store.Reader("bench", data_dir, "train")
    rng = np.random.default_rng(seed)
    reader.video(0)  # opened

    def run() -> int:
        for index in rng.integers(len(reader), size=clips):
            assert reader.video(int(index))["video"]
        return clips

    return run


def window_decodes(folder: str, names: list[str], clips: int, seed: int) -> Callable[[], int]:
    rng = np.random.default_rng(seed)
    span = (FRAMES - 1) * STRIDE + 1

    def run() -> int:
        for _ in range(clips):
            name = names[rng.integers(len(names))]
            start = int(rng.integers(_SECONDS.value * FPS - span))
            indices = np.arange(start, start + span, STRIDE)
            frames = decode.decode_frames(os.path.join(folder, name), indices)
            assert frames.shape == (FRAMES, SIZE[1], SIZE[0], 3)
        return clips

    return run


def direct_reads(local: str, remote: str, clips: int, rounds: int) -> dict[str, dict]:
    """{kind: {"local": ms, "remote": ms}} for one tfds record and one decoded window."""
    names = [f"clip{i}.mp4" for i in range(_VIDEOS.value)]
    records = alternate(
        {
            "local": record_reads(os.path.join(local, "tfds"), clips, 0),
            "remote": record_reads(f"{remote}/tfds", clips, 0),
        },
        rounds,
    )
    windows = alternate(
        {
            "local": window_decodes(os.path.join(local, "videos"), names, clips, 1),
            "remote": window_decodes(f"{remote}/videos", names, clips, 1),
        },
        rounds,
    )
    return {"tfds record": records, "16-frame window": windows}


def pipeline_ms(source: dict, setting: tuple, clips: int) -> float:
    """Wall milliseconds per clip of a fresh pipeline in its steady state: start-up, worker
    start and the batches made ahead meanwhile are not timed, and at least twice as many
    batches as are made at once are (fewer would count work done before the clock started).
    Closed after, so that no thread of it runs on into the next."""
    _, threads, workers, prefetch = setting
    at_once = max(threads, 1) * max(workers, 1)
    cfg = pipeline.DataConfig(
        source=source, train_pp=TRAIN_PP, batch_size=BATCH, read_threads=threads,
        num_workers=workers, prefetch=prefetch,
    )  # fmt: skip
    data = pipeline.train_data(cfg).iterator(seed=0, process_index=0, process_count=1)
    batches = iter(data)
    try:
        for _ in range(1 + at_once):
            next(batches)
        start, made = time.perf_counter(), 0
        while made < max(clips, 2 * at_once * BATCH):
            made += len(next(batches)["video"])
        return 1000 * (time.perf_counter() - start) / made
    finally:
        batches.close()


def pipeline_settings(local: str, remote: str, clips: int, rounds: int) -> list[list]:
    rows = []
    settings = [s for s in SETTINGS if (_WORKERS.value or s[2] == 0) and s[1] <= _MAX_THREADS.value]
    for kind in ("video_folder", "tfds"):
        for setting in settings:
            sources = {}
            for place, base in (("local", local), ("remote", remote)):
                if kind == "video_folder":
                    source = {"name": kind, "root": f"{base}/videos", "manifest": "manifest.csv"}
                else:
                    source = {"name": kind, "dataset": "bench", "data_dir": f"{base}/tfds"}
                sources[place] = source
            label = setting[0]
            logging.info("%s, %s ...", kind, label)
            times = {place: [] for place in sources}
            for _ in range(rounds):
                for place, source in sources.items():
                    times[place].append(pipeline_ms(source, setting, clips))
            ms = {place: statistics.median(t) for place, t in times.items()}
            rows.append(
                [
                    f"{kind}: {label}",
                    f"{1000 / ms['local']:.0f}",
                    f"{1000 / ms['remote']:.0f}",
                    f"{ms['remote'] / ms['local']:.2f}",
                ]
            )
    return rows


def main(argv):
    del argv
    emulator = Emulator()
    local = tempfile.mkdtemp(prefix="vrl_remote_bench_")
    remote = f"gs://{BUCKET}/bench"
    try:
        logging.info("Making %d clips, a tfds dataset and their copy in the bucket ...",
                     _VIDEOS.value)  # fmt: skip
        make_data(local, remote, _VIDEOS.value)
        latency = _LATENCY_MS.value / 1000
        direct = []
        for added in sorted({0.0, latency}):
            emulator.latency(added)
            reads = direct_reads(local, remote, _CLIPS.value, _ROUNDS.value)
            for kind, ms in reads.items():
                direct.append(
                    [
                        f"{kind}, +{1000 * added:.0f} ms a request",
                        f"{ms['local']:.1f}",
                        f"{ms['remote']:.1f}",
                        f"{ms['remote'] / ms['local']:.1f}",
                    ]
                )
        emulator.latency(latency)
        settings = pipeline_settings(local, remote, _CLIPS.value, _ROUNDS.value)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    first = common.markdown_table(["read", "local ms", "remote ms", "remote / local"], direct)
    second = common.markdown_table(
        [f"pipeline setting (+{_LATENCY_MS.value:.0f} ms a request)", "local clips/s",
         "remote clips/s", "remote / local (time)"],
        settings,
    )  # fmt: skip
    size = f"{SIZE[0]}x{SIZE[1]}"
    body = (
        f"{common.machine()}\n\n{_VIDEOS.value} clips of {_SECONDS.value} s at {size}, "
        f"H.264; {_CLIPS.value} reads per round, median of {_ROUNDS.value} rounds. Settings are "
        f"config.data read_threads / num_workers / prefetch.\n\n{first}\n\n{second}"
    )
    print(body)
    if _RECORD.value:
        common.record("Reads from a bucket (benchmarks/remote_reads.py)", body)


if __name__ == "__main__":
    app.run(main)
