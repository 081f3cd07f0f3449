"""Random-access video sources.

A source is what Grain shuffles and checkpoints a position in: `__len__` and `__getitem__`
return raw *records* (cheap: metadata plus encoded bytes or a path), and `decode` turns a
record plus the frame indices chosen by the temporal ops into pixels. Splitting the two lets
the pipeline decode only the frames a clip needs.

Record keys every source provides:
  id          str, unique within the split (file path, or "synthetic/<split>/<index>")
  num_frames  int, frames in the video at its native rate
  fps         float, native frame rate
  labels      dict label-set name -> int class index (may be empty)
Any other key is the source's payload for `decode`. A source configured to resample videos to
a fixed rate (`fps`) reports num_frames and fps at that rate, so indices always count frames as
the source presents them.
"""

import abc
import csv
import dataclasses
import fractions
import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vrl import registry


class DecodeError(RuntimeError):
    """A record that cannot be decoded (corrupt, truncated, empty); the pipeline skips it."""


class Source(abc.ABC):
    """Base class of every registered source (`@registry.register("source", name)`)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @abc.abstractmethod
    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        """uint8 frames [*frame_indices.shape, H, W, 3] for integer frame indices of the record."""

    @property
    @abc.abstractmethod
    def label_names(self) -> dict[str, list[str]]:
        """Label-set name -> class names, index = class id (empty dict when unlabeled)."""


# --- manifests ----------------------------------------------------------------------------
#
# A manifest is a CSV with a header. Columns: `path` (required, relative to the source root),
# `label` (optional: a class name, or an integer class index), and optionally both `num_frames`
# and `fps` (the video's native frame count and rate) which spare the per-video probe.

MANIFEST_COLUMNS = ("path", "label", "num_frames", "fps")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".ogv", ".ogg", ".mpg")
VIDEO_EXTENSIONS += (".mpeg", ".flv", ".3gp")
LABEL_SET = "label"
# metadata.json key of the frames store's per-split table: record position of each video's header.
FIRST_RECORD = "first_record"
_SHOWN = 5  # examples listed in an error message


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str | None = None
    num_frames: int | None = None
    fps: float | None = None


def read_manifest(path: str) -> list[ManifestRow]:
    """Rows of a manifest CSV; raises ValueError naming the file, row and column on bad input."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        if "path" not in header:
            raise ValueError(
                f"manifest {path}: the header must name a 'path' column "
                f"(allowed columns: {', '.join(MANIFEST_COLUMNS)}), got {header or 'no header'}"
            )
        unknown = [c for c in header if c not in MANIFEST_COLUMNS]
        if unknown:
            allowed = ", ".join(MANIFEST_COLUMNS)
            raise ValueError(f"manifest {path}: unknown column(s) {unknown}; allowed: {allowed}")
        if ("num_frames" in header) != ("fps" in header):
            raise ValueError(f"manifest {path}: give both num_frames and fps columns, or neither")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not row.get("path"):
                raise ValueError(f"manifest {path}, line {line}: empty 'path'")
            try:
                count = int(row["num_frames"]) if row.get("num_frames") else None
                rate = float(row["fps"]) if row.get("fps") else None
            except ValueError:
                raise ValueError(
                    f"manifest {path}, line {line}: num_frames must be an integer and fps a "
                    f"number, got {row.get('num_frames')!r}, {row.get('fps')!r}"
                ) from None
            rows.append(ManifestRow(row["path"], row.get("label") or None, count, rate))
    if not rows:
        raise ValueError(f"manifest {path} is empty: it has a header but no rows")
    labelled = sum(r.label is not None for r in rows)
    if 0 < labelled < len(rows):
        first = next(i for i, r in enumerate(rows) if r.label is None)
        raise ValueError(
            f"manifest {path}: {len(rows) - labelled} row(s) have no label while others do "
            f"(first: line {first + 2}, {rows[first].path}); label every row or none"
        )
    return rows


def write_manifest(path: str, rows: Iterable[ManifestRow]) -> int:
    """Writes rows as a manifest CSV (columns that no row uses are left out); returns the count."""
    rows = list(rows)
    columns = ["path"] + [c for c in MANIFEST_COLUMNS[1:] if any(getattr(r, c) for r in rows)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in columns])
    return len(rows)


def class_names(
    labels: Iterable[str], classes: Sequence[str] | None, where: str
) -> tuple[list[str], dict[str, int]]:
    """(class names, label text -> index) for manifest labels: names or integer indices.

    With `classes`, a label must be one of them or an index into them. Without, integer labels
    give classes "0".."max" and names give their sorted set.
    """
    labels = sorted(set(labels))
    if classes is not None:
        names = list(classes)
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: the class list repeats names")
        index = {name: i for i, name in enumerate(names)}
        lookup = {}
        bad = []
        for label in labels:
            if label in index:
                lookup[label] = index[label]
            elif _is_int(label) and 0 <= int(label) < len(names):
                lookup[label] = int(label)
            else:
                bad.append(label)
        if bad:
            raise ValueError(
                f"{where}: label(s) not in the class list ({len(names)} classes): "
                f"{', '.join(repr(b) for b in bad[:_SHOWN])}{' ...' if len(bad) > _SHOWN else ''}"
            )
        return names, lookup
    numeric = [label for label in labels if _is_int(label)]
    if numeric and len(numeric) != len(labels):
        raise ValueError(
            f"{where}: labels mix integers and names ({numeric[0]!r}, "
            f"{next(x for x in labels if not _is_int(x))!r}); use one kind or pass `classes`"
        )
    if numeric:
        if min(int(x) for x in numeric) < 0:
            raise ValueError(f"{where}: integer labels must be >= 0")
        names = [str(i) for i in range(max(int(x) for x in numeric) + 1)]
        return names, {label: int(label) for label in labels}
    return labels, {label: i for i, label in enumerate(labels)}


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def check_extensions(paths: Sequence[str], extensions: Sequence[str], where: str) -> None:
    allowed = tuple(e.lower() for e in extensions)
    bad = [p for p in paths if not p.lower().endswith(allowed)]
    if bad:
        raise ValueError(
            f"{where}: {len(bad)} file(s) with an unknown extension, e.g. "
            f"{', '.join(bad[:_SHOWN])}; allowed: {', '.join(allowed)} (set `extensions`)"
        )


def check_exist(root: str, paths: Sequence[str], where: str) -> None:
    """Raises naming the first few missing files; lists each directory once."""
    listings: dict[str, set[str]] = {}
    missing = []
    for rel in paths:
        full = os.path.join(root, rel)
        folder, base = os.path.split(full)
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if base not in listings[folder]:
            missing.append(rel)
    if missing:
        raise FileNotFoundError(
            f"{where}: {len(missing)} of {len(paths)} listed video(s) are missing under {root}, "
            f"e.g. {', '.join(missing[:_SHOWN])}"
        )


# --- sources ------------------------------------------------------------------------------
# PyAV and TFDS are imported inside methods: the registry imports this module, and
# machines that only run models have none of them.


@registry.register("source", "video_folder")
@dataclasses.dataclass
class VideoFolder(Source):
    """Video files on a local disk, listed by a manifest CSV or found in a class-folder tree.

    Manifest mode: `manifest` is a CSV path (relative to `root` or absolute); a "{split}" in it
    is replaced by `split`, e.g. "manifests/{split}.csv". Without `classes`, class names are
    the sorted labels of every manifest the pattern matches (all splits), so indices agree
    across splits. Tree mode (no manifest): `root/<class name>/<video>` ("{split}" in `root`
    is replaced too), classes are the sorted folder names.

    Records are cheap: a path and a label. `num_frames` and `fps` come from the manifest
    columns when present, else from probing the file's headers on first access (a few ms,
    cached per worker process). With `fps` set the source presents every video resampled to
    that rate: records report num_frames and fps at `fps`, and frame indices are at that rate.
    `short_side` resizes frames while decoding. Label set: "label".
    """

    root: str
    manifest: str | None = None
    split: str = "train"
    classes: tuple[str, ...] | None = None
    fps: float | None = None
    short_side: int | None = None
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS

    def __post_init__(self):
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"video_folder: fps must be positive, got {self.fps}")
        if self.short_side is not None and self.short_side <= 0:
            raise ValueError(f"video_folder: short_side must be positive, got {self.short_side}")
        self._root = os.path.expanduser(self.root.replace("{split}", self.split))
        if not os.path.isdir(self._root):
            raise FileNotFoundError(f"video_folder: root {self._root} is not a directory")
        if self.manifest is not None:
            paths, labels, meta, names = self._from_manifest()
        else:
            paths, labels, meta, names = self._from_tree()
        self._paths, self._labels, self._meta, self._names = paths, labels, meta, names
        self._probed: dict[int, tuple[int, float, str | None]] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        num_frames, fps, error = self._frames(index)
        label = self._labels[index]
        record = {
            "id": self._paths[index],
            "num_frames": num_frames,
            "fps": fps,
            "labels": {} if label is None else {LABEL_SET: label},
            "path": os.path.join(self._root, self._paths[index]),
        }
        if error:  # an unreadable header: reported by `decode`, where the pipeline expects it
            record["error"] = error
        return record

    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        from vrl.data import decode

        if "error" in record:
            raise DecodeError(record["error"])
        path, name = record["path"], record["id"]
        return decode.decode_frames(
            path, frame_indices, fps=self.fps, short_side=self.short_side, name=name
        )

    @property
    def label_names(self) -> dict[str, list[str]]:
        return {LABEL_SET: list(self._names)} if self._names is not None else {}

    def _frames(self, index: int) -> tuple[int, float, str | None]:
        """(num_frames, fps, error) as presented: from the manifest, else probed once per process.

        An unreadable file gives a one-frame placeholder and the error, so that indexing never
        raises and the failure surfaces as a DecodeError from `decode`.
        """
        from vrl.data import decode

        if self._meta[index] is not None:
            count, native = self._meta[index]
            return decode.num_frames_at(count, native, self.fps), self.fps or native, None
        if index not in self._probed:
            path = os.path.join(self._root, self._paths[index])
            try:
                info = decode.probe(path, self.fps, name=self._paths[index])
                self._probed[index] = (info.num_frames, info.fps, None)
            except DecodeError as e:
                self._probed[index] = (1, self.fps or 1.0, str(e))
        return self._probed[index]

    def _from_manifest(self):
        # An absolute manifest stays as it is; a relative one is relative to the root.
        pattern = os.path.join(os.path.expanduser(self.root), os.path.expanduser(self.manifest))
        path = pattern.replace("{split}", self.split)
        where = f"video_folder manifest {path}"
        rows = read_manifest(path)
        paths = [r.path for r in rows]
        check_extensions(paths, self.extensions, where)
        check_exist(self._root, paths, where)
        meta = [(r.num_frames, r.fps) if r.num_frames is not None else None for r in rows]
        if rows[0].label is None:
            return paths, [None] * len(rows), meta, None
        all_labels = [r.label for r in rows]
        if self.classes is None and "{split}" in pattern:
            for other in sorted(glob.glob(pattern.replace("{split}", "*"))):
                if os.path.abspath(other) != os.path.abspath(path):
                    all_labels += [r.label for r in read_manifest(other) if r.label is not None]
        names, lookup = class_names(all_labels, self.classes, where)
        return paths, [lookup[r.label] for r in rows], meta, names

    def _from_tree(self):
        where = f"video_folder tree {self._root}"
        entries = [e for e in os.scandir(self._root) if not e.name.startswith(".")]
        folders = sorted(e.name for e in entries if e.is_dir())
        stray = [e.name for e in entries if not e.is_dir()]
        if stray:
            raise ValueError(
                f"{where}: files directly under the root ({', '.join(sorted(stray)[:_SHOWN])}); "
                "expected root/<class name>/<video>, or give a `manifest`"
            )
        names = list(self.classes) if self.classes is not None else folders
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise ValueError(
                f"{where}: class folder(s) not in `classes`: {', '.join(unknown[:_SHOWN])}"
            )
        index = {name: i for i, name in enumerate(names)}
        paths, labels = [], []
        for folder in folders:
            for dirpath, dirnames, filenames in os.walk(os.path.join(self._root, folder)):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if not filename.startswith("."):
                        paths.append(os.path.relpath(os.path.join(dirpath, filename), self._root))
                        labels.append(index[folder])
        if not paths:
            raise ValueError(f"{where}: no videos found (expected root/<class name>/<video>)")
        check_extensions(paths, self.extensions, where)
        return paths, labels, [None] * len(paths), names


@registry.register("source", "tfds")
@dataclasses.dataclass
class PreparedDataset(Source):
    """A dataset written by `python -m vrl.data.prepare`, read with `tfds.data_source`.

    Random access into ArrayRecord files, no TensorFlow. Each record holds the encoded video
    (`store=video`, decoded with PyAV from memory) or its JPEG frames (`store=frames`, in
    chunks of consecutive frames, decoded with FFmpeg's MJPEG decoder). `fps` resamples (records
    then report num_frames and fps at that rate) and `short_side` resizes at decode time.
    `dataset` is the --name given to prepare (the key `name` is the registry's: {"name": "tfds",
    "dataset": ...}); `data_dir` None means TFDS's default directory.
    """

    dataset: str
    data_dir: str | None = None
    split: str = "train"
    fps: float | None = None
    short_side: int | None = None

    def __post_init__(self):
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"tfds source {self.dataset}: fps must be positive, got {self.fps}")
        if self.short_side is not None and self.short_side <= 0:
            raise ValueError(f"tfds source {self.dataset}: short_side must be positive")
        self._source = None
        source = self._open()
        features = source.dataset_info.features
        self._store = "video" if "video" in features else "frames"
        self._names = list(features["label"].names) if "label" in features else None
        self._len = len(source)
        if self._store == "frames":
            metadata = source.dataset_info.metadata or {}
            first = metadata.get(FIRST_RECORD, {}).get(self.split)
            if first is None or "chunk_frames" not in metadata:
                raise ValueError(
                    f"tfds source {self.dataset}/{self.split}: frames store without its "
                    f"{FIRST_RECORD!r} table in metadata.json; prepare it again"
                )
            self._first = [int(i) for i in first]  # each video's header record
            self._chunk = int(metadata["chunk_frames"])
            self._len = len(self._first)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        from vrl.data import decode

        position = self._first[int(index)] if self._store == "frames" else int(index)
        try:
            example = self._open()[position]
        except (RuntimeError, OSError, ValueError) as e:  # a corrupted ArrayRecord chunk
            # Reported by `decode`, where the pipeline skips and counts unreadable videos.
            where = f"{self.dataset}/{self.split}/{int(index)}"
            reason = " ".join(str(e).split())
            return {
                "id": where,
                "num_frames": 1,
                "fps": self.fps or 1.0,
                "labels": {},
                "error": f"{where}: unreadable record: {reason}",
            }
        native_count, native_fps = int(example["num_frames"]), _rate(example["fps"])
        record = {
            "id": _text(example["id"]),
            "num_frames": decode.num_frames_at(native_count, native_fps, self.fps),
            "fps": self.fps or native_fps,
            "labels": {LABEL_SET: int(example["label"])} if self._names is not None else {},
            "native": (native_count, native_fps),
        }
        if self._store == "video":
            record["video"] = bytes(example["video"])
        else:
            record["header"] = position
        return record

    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        from vrl.data import decode

        if "error" in record:
            raise DecodeError(record["error"])
        if "video" in record:
            video, name = record["video"], record["id"]
            return decode.decode_frames(
                video, frame_indices, fps=self.fps, short_side=self.short_side, name=name
            )
        count, native_fps = record["native"]
        wanted = decode.resample_indices(frame_indices, native_fps, self.fps)
        if wanted.size and wanted.max() >= count:
            raise DecodeError(
                f"{record['id']}: frame {int(wanted.max())} requested, the record has {count}"
            )
        unique, inverse = np.unique(wanted, return_inverse=True)
        jpegs = self.frame_bytes(record, unique)
        frames = decode.decode_jpegs(jpegs, short_side=self.short_side, name=record["id"])
        if not len(frames):
            return np.zeros((*wanted.shape, 0, 0, 3), np.uint8)
        return frames[inverse.reshape(wanted.shape)]

    @property
    def label_names(self) -> dict[str, list[str]]:
        return {LABEL_SET: list(self._names)} if self._names is not None else {}

    def frame_bytes(self, record: dict[str, Any], frames: np.ndarray) -> list[bytes]:
        """The stored JPEG images of native `frames` (sorted, unique) of a frames-store record.

        Reads only the chunk records that hold them (see `vrl.data.prepare.frames_layout`).
        """
        chunks = np.unique(frames // self._chunk).tolist()
        positions = [record["header"] + 1 + c for c in chunks]
        try:
            examples = self._open().__getitems__(positions)
        except (RuntimeError, OSError, ValueError) as e:  # a corrupted ArrayRecord chunk
            reason = " ".join(str(e).split())
            raise DecodeError(f"{record['id']}: unreadable frame records: {reason}") from e
        held = {}
        for chunk, example in zip(chunks, examples):
            if _text(example["id"]) != record["id"] or int(example["chunk"]) != chunk:
                raise DecodeError(
                    f"{record['id']}: record {record['header'] + 1 + chunk} should hold chunk "
                    f"{chunk} of it, holds chunk {int(example['chunk'])} of {_text(example['id'])}"
                )
            held[chunk] = example["frames"]
        return [bytes(held[f // self._chunk][f % self._chunk]) for f in frames.tolist()]

    def _open(self):
        if self._source is None:
            data_dir = os.path.expanduser(self.data_dir) if self.data_dir else None
            self._source = _data_source(self.dataset, data_dir, self.split)
        return self._source


def _data_source(name: str, data_dir: str | None, split: str):
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        where = data_dir or "the default TFDS data dir"
        raise FileNotFoundError(
            f"tfds dataset {name!r} not found in {where}; prepare it with: python -m "
            f"vrl.data.prepare --videos=VIDEO_ROOT --manifest=MANIFEST.csv --name={name} "
            f"--split={split} --out={data_dir or 'DATA_DIR'}"
        ) from None
    except (KeyError, ValueError) as e:
        if "split" not in str(e).lower():
            raise
        raise ValueError(f"tfds dataset {name!r} in {data_dir}: no split {split!r} ({e})") from None


def _rate(stored: float) -> float:
    """A frame rate read back from float32 storage, snapped to n/1 or n/1001 when that is it."""
    rate = float(stored)
    exact = fractions.Fraction(rate).limit_denominator(1001)
    return float(exact) if abs(float(exact) - rate) <= 1e-6 * rate else rate


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
