r"""Video files + manifest CSV -> a TFDS dataset in ArrayRecord format (the `tfds` source).

    python -m vrl.data.prepare --videos=ROOT --manifest=manifests/{split}.csv --name=NAME \
        --split=train,test --out=DATA_DIR [--store=video|frames] [--short_side=N] [--fps=F]

A process pool transcodes the inputs while the TFDS builder writes them. Each finished input
is cached in a work directory (default DATA_DIR/_work/NAME), so a re-run after a crash or
an interruption skips everything already done. Unreadable or truncated inputs are left out
and listed in a summary (and in WORK/failed_<split>.csv) instead of stopping the run. A
finished dataset records what it was prepared from: the same command again does nothing, one
with other inputs or options stops naming the difference unless --overwrite. Input errors are
one line and exit code 2.

`--store=video` keeps encoded video: the original bytes when neither --short_side nor --fps
is given, else an H.264 re-encode (CRF --crf, a keyframe every second so clips seek fast), one
record per video. `--store=frames` keeps JPEG frames (quality --jpeg_quality) in records of
--chunk_frames consecutive frames, so that a clip reads only the chunks holding its frames
(see `vrl.data.store`). Every split of a dataset is written in one run: list them all in
--split (the manifest's "{split}" is replaced by each).

--videos, --manifest and --out may be bucket URLs (gs://...). TFDS finalises a dataset only on
a local disk (without TensorFlow), so for a URL --out the dataset is written in a local staging
folder and then uploaded, its dataset_info.json last: a dataset whose dataset_info.json is in
the bucket is complete. The work directory (finished items, failed_<split>.csv) lives in the
bucket too, so a re-run on another machine resumes where a crashed one stopped.

`--runner=beam` transcodes in an Apache Beam pipeline instead of the process pool
(--beam_options: DirectRunner on this machine, or Dataflow, Spark, Flink), with the same output;
--dry_run prints the command (see `vrl.data.prepare_beam` and docs/DATA.md).

`--make_manifest=kinetics|ucf101|hmdb51` converts the official annotation files into
manifests instead (`vrl.data.manifests`; see docs/DATA.md).
"""

import collections
import contextlib
import csv
import dataclasses
import fractions
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import pickle
import re
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import av
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags, logging
from av.video.reformatter import VideoReformatter
from PIL import Image

from vrl import storage
from vrl.data import decode, manifests, prepare_beam
from vrl.data import store as store_lib

X264_PRESET = "fast"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LOG_EVERY_S = 10.0
_SHOWN = 20  # failures listed in the log summary (all of them go to the CSV)
# A prepared dataset is complete when this file exists (TFDS writes it last, `_upload` too).
_FINISHED = "dataset_info.json"


@dataclasses.dataclass(frozen=True)
class Options:
    """How each input is stored. All but chunk_frames are part of the cache key (changing them
    redoes the transcoding); chunk_frames only groups the cached frames into records."""

    store: store_lib.Store = "video"
    short_side: int | None = None
    fps: float | None = None
    jpeg_quality: int = 90
    crf: int = 23
    # --store=frames: frames per record. A 16-frame clip at stride 2 spans 31 frames: two or
    # three chunks of 16, read at ~0.05 ms a frame against ~0.3-1 ms to decode a JPEG.
    chunk_frames: int = 16


@dataclasses.dataclass(frozen=True)
class _Task:
    path: str  # absolute, or a URL
    id: str  # path relative to the video root, unique within a split
    labels: tuple[tuple[str, int], ...]  # (label set, class index) pairs
    cache: str  # where the finished item is (or will be) stored
    options: Options


@dataclasses.dataclass
class SplitSummary:
    examples: int = 0
    transcoded: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, reason)


# --- one input -> one example (runs in worker processes) ---------------------------------------


def encode_item(path: str, options: Options) -> dict[str, Any]:
    """The stored form of one video: {"video": bytes} or {"frames": [jpeg]}, num_frames, fps.

    Raises DecodeError for unreadable inputs and for truncated ones (fewer decodable frames
    than the headers declare), so a dataset never holds a silently shortened video.
    """
    info = decode.probe(path, options.fps)
    if options.store == "video" and options.short_side is None and options.fps is None:
        data = storage.path(path).read_bytes()
        decode.decode_frames(data, np.array([0, info.num_frames - 1]), name=path)  # readable?
        return {"video": data, "num_frames": info.num_frames, "fps": info.fps}
    frames = decode.iter_frames(path, fps=options.fps, short_side=options.short_side)
    if options.store == "frames":
        stored = [_jpeg(frame, options.jpeg_quality) for frame in frames]
        count, data = len(stored), stored
    else:
        data, count = _h264(frames, info.fps, options.crf)
    if count < info.num_frames:
        raise decode.DecodeError(
            f"{path}: truncated: {count} of {info.num_frames} frames decodable"
        )
    if options.store == "frames":
        return {"frames": data, "num_frames": count, "fps": info.fps}
    encoded = decode.probe(data, name=path)
    return {"video": data, "num_frames": encoded.num_frames, "fps": encoded.fps}


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _h264(frames: Iterator[np.ndarray], fps: float, crf: int) -> tuple[bytes, int]:
    """MP4/H.264 bytes of RGB frames at `fps`; dimensions rounded to even (yuv420p needs it)."""
    rate = fractions.Fraction(fps).limit_denominator(1001)
    buffer = io.BytesIO()
    count = 0
    to_yuv = VideoReformatter()  # one swscale context for every frame
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.options = {"crf": str(crf), "preset": X264_PRESET}
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = max(1, round(fps))
        for frame in frames:
            height, width = frame.shape[:2]
            even = (max(2, width // 2 * 2), max(2, height // 2 * 2))
            if count == 0:
                stream.width, stream.height = even
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture = to_yuv.reformat(picture, width=even[0], height=even[1], format="yuv420p")
            picture.pts = count
            container.mux(stream.encode(picture))
            count += 1
        if count:
            container.mux(stream.encode(None))
    return buffer.getvalue(), count


def _run_task(task: _Task) -> tuple[_Task, str, str]:
    """(task, "cached" | "transcoded" | "failed", reason); never raises, so the pool survives."""
    if storage.path(task.cache).exists():
        return task, "cached", ""
    try:
        item = encode_item(task.path, task.options)
    except decode.DecodeError as e:
        return task, "failed", str(e)
    except Exception as e:  # one odd input must not end a run over thousands of them
        return task, "failed", f"{task.path}: {type(e).__name__}: {e}"
    # Atomic: a killed run never leaves a half item.
    storage.write_atomic(task.cache, pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
    return task, "transcoded", ""


# --- the TFDS builder --------------------------------------------------------------------------


class _VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes prepared videos; subclassed per dataset name by `_builder_class`."""

    VERSION = tfds.core.Version(store_lib.VERSION)

    def __init__(self, *, tasks, options, classes, results, summary, prepared_from, **kwargs):
        self._tasks: dict[str, list[_Task]] = tasks
        self._options: Options = options
        self._classes: dict[str, list[str]] = classes  # label set -> class names
        self._results: Callable[[str], Iterator[tuple[_Task, str, str]]] = results  # per split
        self._summary: dict[str, SplitSummary] = summary
        self._prepared_from: dict = prepared_from
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = dataclasses.asdict(self._options)
        metadata[store_lib.PREPARED_FROM] = self._prepared_from
        if self._options.store == "frames":
            metadata[store_lib.FIRST_RECORD] = {}  # filled in as each split is written
        features = store_lib.features(self._options.store, self._classes)
        return tfds.core.DatasetInfo(
            builder=self,
            description="Videos prepared by vrl.data.prepare.",
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(metadata),
            # Frames records are addressed by position: they are written in key order.
            disable_shuffling=self._options.store == "frames",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in self._tasks}

    def _generate_examples(self, split: str):
        summary = self._summary[split]
        tasks = self._tasks[split]
        order = {task.id: i for i, task in enumerate(tasks)}
        records = {}  # frames store: manifest position -> records written for that video
        for task, status, reason, item in _read_ahead(self._results(split)):
            if status == "failed":
                summary.failed.append((task.id, reason))
                continue
            setattr(summary, status, getattr(summary, status) + 1)
            # id and labels from this run's manifest: only pixels are cached.
            example = store_lib.video_fields(task.id, item["num_frames"], item["fps"], task.labels)
            summary.examples += 1
            if self._options.store == "video":
                yield task.id, {**example, "video": item["video"]}
                continue
            video = order[task.id]
            parts = store_lib.frames_layout(example, item["frames"], self._options.chunk_frames)
            records[video] = len(parts)
            for part, record in enumerate(parts):
                yield store_lib.record_key(video, len(tasks), part), record
        if not summary.examples:  # else TFDS's "AssertionError: No examples were yielded."
            reasons = "; ".join(reason for _, reason in summary.failed[:3])
            raise InputError(
                f"split {split!r}: none of its {len(tasks)} input(s) could be read ({reasons})"
            )
        if self._options.store == "frames":
            counts = [records[video] for video in sorted(records)]
            self.info.metadata[store_lib.FIRST_RECORD][split] = store_lib.first_records(counts)


def _read_ahead(results: Iterator[tuple[_Task, str, str]], threads: int = 16):
    """(task, status, reason, finished item or None), in order, reading items `threads` at a
    time: in a bucket each read waits tens of ms, and a split has up to ~10^6 of them."""

    def load(result):
        task, status, _ = result
        item = None if status == "failed" else storage.path(task.cache).read_bytes()
        return *result, item and pickle.loads(item)

    with futures.ThreadPoolExecutor(threads) as pool:
        window = collections.deque()
        for result in results:
            window.append(pool.submit(load, result))
            if len(window) > 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _builder_class(name: str) -> type:
    """A builder class named `name` (TFDS takes the dataset name from the class)."""
    body = lambda namespace: namespace.update(name=name)
    return types.new_class("PreparedVideos", (_VideoBuilder,), {"skip_registration": True}, body)


def _run_pool(tasks: Sequence[_Task], workers: int, split: str):
    """Yields (task, status, reason) as inputs finish, logging progress with an ETA.

    At most 4 tasks per worker are in flight, so a huge split never queues all its futures;
    a worker that dies raises BrokenProcessPool instead of hanging the run.
    """
    started = last_log = time.monotonic()
    done = failed = 0
    for task, status, reason in _results(tasks, workers):
        done += 1
        failed += status == "failed"
        now = time.monotonic()
        if now - last_log > _LOG_EVERY_S or done == len(tasks):
            rate = done / max(now - started, 1e-9)
            eta = (len(tasks) - done) / max(rate, 1e-9)
            logging.info(
                "%s: %d/%d inputs (%d failed), %.1f/s, ETA %.0f s",
                split, done, len(tasks), failed, rate, eta,
            )  # fmt: skip
            last_log = now
        yield task, status, reason


def _results(tasks: Sequence[_Task], workers: int):
    if workers <= 1:
        yield from map(_run_task, tasks)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    pending = iter(tasks)
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        running = {pool.submit(_run_task, t) for t in itertools.islice(pending, 4 * workers)}
        while running:
            finished, running = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                yield future.result()
                for task in itertools.islice(pending, 1):
                    running.add(pool.submit(_run_task, task))


# --- the command ---------------------------------------------------------------------------------


class InputError(ValueError):
    """Bad input (arguments, manifests, videos, an existing dataset made from other inputs, no
    readable video at all): `python -m vrl.data.prepare` prints it as one line and exits 2."""


def prepare(
    videos: str,
    manifest: str,
    name: str,
    splits: Sequence[str],
    out: str,
    *,
    options: Options = Options(),
    workers: int | None = None,
    work_dir: str | None = None,
    classes: Sequence[str] | None = None,
    overwrite: bool = False,
    allow_outside_root: bool = False,
    beam_options: str | None = None,
) -> dict[str, SplitSummary]:
    """Builds dataset `name` in `out` from the manifests of `splits`; returns a summary per split.

    With `beam_options` (a --beam_options string), an Apache Beam pipeline transcodes the inputs
    (`vrl.data.prepare_beam`) instead of a pool of `workers` processes; the output is the same.

    Returns an empty dict when the dataset already exists, made from the same inputs (manifest
    rows, file sizes and times, class names) and options. Made from others, it is an
    InputError naming the difference, unless `overwrite`: then it is deleted and made again.
    """
    videos, out = os.path.expanduser(videos), os.path.expanduser(out)
    work_dir = work_dir or os.path.join(out, "_work", name)
    try:
        for flag, value in (("--videos", videos), ("--out", out), ("--work_dir", work_dir)):
            storage.check(value, flag)
        rows = _read_inputs(videos, manifest, name, splits, options, allow_outside_root)
        names, lookups = _classes(rows, classes, manifest)
        stats = _file_stats(videos, rows)
        if beam_options is not None:
            prepare_beam.pipeline_options(beam_options)  # checked before anything is written
    except (ImportError, OSError, ValueError) as e:
        raise InputError(str(e)) from None
    prepared_from = _prepared_from(rows, names, options, stats)
    dataset_dir = store_lib.dataset_dir(out, name)
    if storage.path(dataset_dir).joinpath(_FINISHED).exists():
        if not overwrite:
            changes = _changes(dataset_dir, prepared_from)
            if not changes:
                logging.info("%s already prepared in %s from the same inputs and options; "
                             "nothing to do", name, out)  # fmt: skip
                return {}
            raise InputError(
                f"{dataset_dir} exists, prepared from other inputs or options: "
                f"{'; '.join(changes)}. Add --overwrite to replace it (finished items in "
                f"{work_dir} are reused), or give another --name"
            )
        logging.warning("--overwrite: deleting %s to prepare it again", dataset_dir)
        storage.remove(storage.path(dataset_dir) / _FINISHED)  # first: no longer complete
        storage.remove(dataset_dir)
    fields = [f.name for f in dataclasses.fields(options) if f.name != "chunk_frames"]
    encoding = tuple(getattr(options, name) for name in fields)  # see Options
    key = hashlib.sha1(repr(encoding).encode()).hexdigest()[:8]
    tasks = {
        split: [
            _Task(
                path=os.path.join(videos, r.path),
                id=r.path,
                labels=tuple((s, lookups[s][r.labels[s]]) for s in names),
                cache=_cache_path(work_dir, key, r.path, stats[r.path]),
                options=options,
            )
            for r in split_rows
        ]
        for split, split_rows in rows.items()
    }
    summary = {split: SplitSummary() for split in splits}
    if beam_options is None:
        results = lambda split: _run_pool(tasks[split], workers or os.cpu_count() or 1, split)
    else:
        outcomes = prepare_beam.transcode(tasks, work_dir, beam_options, _run_task)
        results = lambda split: ((t, *outcomes[split, t.id]) for t in tasks[split])
    with contextlib.ExitStack() as stack:
        data_dir, download_dir = out, os.path.join(work_dir, "downloads")
        if storage.is_remote(out) or storage.is_remote(work_dir):
            staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="vrl-prepare-"))
            download_dir = os.path.join(staging, "downloads")
            if storage.is_remote(out):
                data_dir = os.path.join(staging, "data")
        builder = _builder_class(name)(
            tasks=tasks,
            options=options,
            classes=names,
            results=results,
            summary=summary,
            prepared_from=prepared_from,
            data_dir=data_dir,
            file_format="array_record",
        )
        try:
            builder.download_and_prepare(
                download_dir=download_dir,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
        except InputError:
            _report(summary, name, out, work_dir)  # lists every unreadable input
            raise
        if data_dir != out:
            _upload(store_lib.dataset_dir(data_dir, name), dataset_dir)
    _report(summary, name, out, work_dir)
    return summary


def _upload(local: str, remote: str) -> None:
    """Copies a finished dataset into the bucket, dataset_info.json last: an interrupted upload
    leaves a dataset that a re-run sees as absent and prepares again."""
    storage.remove(remote)  # leftovers of an interrupted upload
    for child in sorted(os.listdir(local)):
        if child != _FINISHED:
            storage.copy(os.path.join(local, child), storage.path(remote) / child)
    storage.copy(os.path.join(local, _FINISHED), storage.path(remote) / _FINISHED)


def _read_inputs(
    videos: str,
    manifest: str,
    name: str,
    splits: Sequence[str],
    options: Options,
    allow_outside_root: bool,
) -> dict[str, list[manifests.ManifestRow]]:
    """Every split's manifest rows, after checking the arguments and that the files exist."""
    if not _NAME.match(name):
        raise ValueError(f"--name={name!r}: use lower_snake_case (letters, digits, _)")
    if not storage.path(videos).is_dir():
        raise FileNotFoundError(f"--videos={videos} is not a directory")
    if options.store not in ("video", "frames"):
        raise ValueError(f"--store={options.store!r}; allowed: video, frames")
    if options.chunk_frames < 1:
        raise ValueError(f"--chunk_frames={options.chunk_frames}: must be >= 1")
    rows = {s: manifests.read_manifest(_manifest_path(manifest, s, videos)) for s in splits}
    for split, split_rows in rows.items():
        where = f"manifest for split {split!r} ({_manifest_path(manifest, split, videos)})"
        manifests.check_extensions([r.path for r in split_rows], manifests.VIDEO_EXTENSIONS, where)
        if not allow_outside_root:
            manifests.check_inside_root(videos, split_rows, where)
        manifests.check_exist(videos, [r.path for r in split_rows], where)
    return rows


def _classes(rows: dict[str, list[manifests.ManifestRow]], classes, manifest: str):
    """(label set -> class names, label set -> {label text: index}) over every split."""
    label_sets = {split: manifests.label_sets_of(split_rows) for split, split_rows in rows.items()}
    first = next(iter(label_sets.values()))
    if any(sets != first for sets in label_sets.values()):
        raise ValueError(f"manifests {manifest}: the splits have other label columns: {label_sets}")
    if classes is not None and len(first) != 1:
        raise ValueError(
            f"--classes names the classes of a manifest with one label column; {manifest} has "
            f"{len(first)} ({', '.join(first) or 'none'})"
        )
    names, lookups = {}, {}
    for label_set in first:
        labels = [r.labels[label_set] for split_rows in rows.values() for r in split_rows]
        where = f"manifests {manifest} ({label_set})"
        names[label_set], lookups[label_set] = manifests.class_names(labels, classes, where)
    return names, lookups


def _file_stats(videos: str, rows: dict[str, list[manifests.ManifestRow]]) -> dict[str, tuple]:
    """(size, modification time) of every listed video, by manifest path.

    In a bucket, one listing per folder rather than a request per video (a Kinetics split has
    hundreds of thousands); the modification time there is the object's generation.
    """
    paths = sorted({r.path for split_rows in rows.values() for r in split_rows})
    if not storage.is_remote(videos):
        stats = {}
        for rel in paths:
            stat = os.stat(os.path.join(videos, rel))
            stats[rel] = (stat.st_size, stat.st_mtime_ns)
        return stats
    import fsspec  # noqa: PLC0415 - what epath uses for buckets

    fs, _ = fsspec.core.url_to_fs(videos)
    listings: dict[str, dict[str, dict]] = {}
    stats = {}
    for rel in paths:
        folder, base = os.path.split(os.path.join(videos, rel))
        if folder not in listings:
            listings[folder] = {
                os.path.basename(info["name"].rstrip("/")): info
                for info in fs.ls(folder, detail=True)
            }
        info = listings[folder][base]
        changed = info.get("generation") or info.get("mtime") or info.get("LastModified")
        stats[rel] = (int(info["size"]), str(changed or info.get("etag", "")))
    return stats


def _prepared_from(rows, names, options: Options, stats: dict[str, tuple]) -> dict:
    """Options, class names and, per split, the video count and a digest of the manifest rows
    with each file's size and modification time (as JSON gives it back)."""
    splits = {}
    for split, split_rows in rows.items():
        digest = hashlib.sha256()
        for r in split_rows:
            size, mtime = stats[r.path]
            item = (r.path, sorted(r.labels.items()), size, mtime)
            digest.update(repr(item).encode())
        splits[split] = {"videos": len(split_rows), "sha256": digest.hexdigest()[:16]}
    record = {"options": dataclasses.asdict(options), "classes": names, "splits": splits}
    return json.loads(json.dumps(record))


def _changes(dataset_dir: str, now: dict) -> list[str]:
    """How `now` differs from what the dataset in `dataset_dir` was prepared from (empty: same).

    Asking for fewer splits than the dataset has is no change.
    """
    try:
        text = storage.path(dataset_dir).joinpath("metadata.json").read_text(encoding="utf-8")
        before = json.loads(text).get(store_lib.PREPARED_FROM)
    except FileNotFoundError:
        before = None
    if before is None:  # prepared before inputs were recorded: only the splits can be compared
        have = set(tfds.builder_from_directory(dataset_dir).info.splits.keys())
        missing = [s for s in now["splits"] if s not in have]
        return [f"it has splits {sorted(have)}, not {missing}"] if missing else []
    changes = [
        f"--{key}={before['options'].get(key)} then, {value} now"
        for key, value in now["options"].items()
        if before["options"].get(key) != value
    ]
    for split, was in now["splits"].items():
        had = before["splits"].get(split)
        if had is None:
            changes.append(f"it has splits {sorted(before['splits'])}, not {split!r}")
        elif had["videos"] != was["videos"]:
            changes.append(f"split {split!r} had {had['videos']} videos, now {was['videos']}")
        elif had["sha256"] != was["sha256"]:
            changes.append(f"split {split!r}: other files, labels or file sizes/times")
    if set(now["splits"]) == set(before["splits"]) and now["classes"] != before["classes"]:
        changes.append("other class names")
    return changes


def _manifest_path(manifest: str, split: str, videos: str) -> str:
    """The manifest as given (cwd, absolute or a URL), else relative to the video root."""
    path = manifest.replace("{split}", split)
    if storage.is_remote(path) or os.path.exists(path) or os.path.isabs(path):
        return path
    return os.path.join(videos, path)


def _cache_path(work_dir: str, options_key: str, rel: str, stat: tuple) -> str:
    """Keyed by input path, size, mtime and options: a changed input or option is redone."""
    size, mtime = stat
    digest = hashlib.sha1(f"{rel}|{size}|{mtime}".encode()).hexdigest()
    return os.path.join(work_dir, "items", options_key, digest[:2], f"{digest}.pkl")


def _report(summary: dict[str, SplitSummary], name: str, out: str, work_dir: str) -> None:
    for split, s in summary.items():
        logging.info(
            "%s/%s: %d examples (%d transcoded now, %d from the work dir), %d failed",
            name, split, s.examples, s.transcoded, s.cached, len(s.failed),
        )  # fmt: skip
        if not s.failed:
            continue
        path = os.path.join(work_dir, f"failed_{split}.csv")
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(["path", "reason"])
        writer.writerows(sorted(s.failed))
        storage.write_atomic(path, text.getvalue().encode("utf-8"))
        for video, reason in sorted(s.failed)[:_SHOWN]:
            logging.warning("  skipped %s: %s", video, reason)
        more = f" ({len(s.failed) - _SHOWN} more)" if len(s.failed) > _SHOWN else ""
        logging.warning("%s/%s: %d unreadable input(s)%s, listed in %s", name, split,
                        len(s.failed), more, path)  # fmt: skip
    logging.info("wrote %s: read it with the source {name: 'tfds', dataset: %r, data_dir: %r}",
                 name, name, out)  # fmt: skip


# --- flags ---------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Flags exist only when this module runs as the program, so importing it defines none."""
    flags.DEFINE_string("videos", None, "Root of the videos; manifest paths are relative to it.")
    flags.DEFINE_string("manifest", None, "Manifest CSV; '{split}' is replaced by each split.")
    flags.DEFINE_string("name", None, "Dataset name, lower_snake_case.")
    flags.DEFINE_list("split", ["train"], "Split name(s), comma-separated; written in one run.")
    flags.DEFINE_string("out", None, "TFDS data directory to write into.")
    flags.DEFINE_enum("store", "video", ["video", "frames"], "Encoded video, or JPEG frames.")
    flags.DEFINE_integer("short_side", None, "Resize so the shorter side has this many pixels.")
    flags.DEFINE_float("fps", None, "Resample to this frame rate (default: the native rate).")
    flags.DEFINE_integer("workers", None, "Worker processes (default: every CPU core).")
    flags.DEFINE_enum(
        "runner", "local", ["local", "beam"],
        "Transcode in a local process pool, or in an Apache Beam pipeline (--beam_options).",
    )  # fmt: skip
    flags.DEFINE_string(
        "beam_options", "--runner=DirectRunner", "--runner=beam: Beam pipeline options, e.g. "
        "'--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp'.",
    )  # fmt: skip
    flags.DEFINE_bool("dry_run", False, "--runner=beam: print the command and exit.")
    flags.DEFINE_string("work_dir", None, "Cache of finished items (default OUT/_work/NAME).")
    flags.DEFINE_string("classes", None, "Class names, one per line ('1 Name' lines work too).")
    flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality for --store=frames.")
    flags.DEFINE_integer("crf", 23, "H.264 constant rate factor when re-encoding (lower: better).")
    flags.DEFINE_integer("chunk_frames", 16, "--store=frames: consecutive frames per record.")
    flags.DEFINE_enum(
        "make_manifest", None, ["kinetics", "ucf101", "hmdb51"],
        "Write manifests from official annotation files instead of preparing a dataset.",
    )  # fmt: skip
    flags.DEFINE_string(
        "annotations", None, "--make_manifest input: Kinetics CSV, or UCF101/HMDB51 split dir."
    )
    flags.DEFINE_integer("fold", 1, "UCF101/HMDB51 split number (1-3).")
    flags.DEFINE_bool(
        "overwrite", False, "Replace an existing dataset NAME prepared from other inputs/options."
    )
    flags.DEFINE_bool(
        "allow_outside_root", False, "Accept manifest paths that leave --videos (.., /, symlinks)."
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    required = ["videos", "manifest"] + ([] if FLAGS.make_manifest else ["name", "out"])
    if FLAGS.make_manifest:
        required.append("annotations")
    absent = [f"--{f}" for f in required if not getattr(FLAGS, f)]
    if absent:
        raise app.UsageError(f"missing {', '.join(absent)}")
    if FLAGS.dry_run:
        if FLAGS.runner != "beam":
            raise app.UsageError("--dry_run is for --runner=beam")
        try:
            print(prepare_beam.dry_run(sys.argv, FLAGS.beam_options), end="")
        except (ImportError, ValueError) as e:
            print(f"vrl.data.prepare: {e}", file=sys.stderr)
            sys.exit(2)
        return
    if FLAGS.make_manifest == "kinetics":
        manifests.kinetics_manifest(FLAGS.annotations, FLAGS.videos, FLAGS.manifest)
    elif FLAGS.make_manifest == "ucf101":
        manifests.ucf101_manifest(FLAGS.annotations, FLAGS.videos, FLAGS.manifest, FLAGS.fold)
    elif FLAGS.make_manifest == "hmdb51":
        manifests.hmdb51_manifest(FLAGS.annotations, FLAGS.videos, FLAGS.manifest, FLAGS.fold)
    else:
        options = Options(
            FLAGS.store, FLAGS.short_side, FLAGS.fps, FLAGS.jpeg_quality, FLAGS.crf,
            FLAGS.chunk_frames,
        )  # fmt: skip
        try:
            classes = manifests.read_classes(FLAGS.classes) if FLAGS.classes else None
            prepare(
                FLAGS.videos, FLAGS.manifest, FLAGS.name, FLAGS.split, FLAGS.out,
                options=options, workers=FLAGS.workers, work_dir=FLAGS.work_dir,
                classes=classes, overwrite=FLAGS.overwrite,
                allow_outside_root=FLAGS.allow_outside_root,
                beam_options=FLAGS.beam_options if FLAGS.runner == "beam" else None,
            )  # fmt: skip
        except (InputError, FileNotFoundError) as e:  # FileNotFoundError: --classes
            print(f"vrl.data.prepare: {e}", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    # Run as the imported module, so that Beam workers unpickle its classes (a __main__ class
    # is not importable there).
    from vrl.data import prepare as _module  # noqa: PLW0406

    _module._define_flags()
    app.run(_module.main)
