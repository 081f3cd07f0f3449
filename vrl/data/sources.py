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
import io
import os
import re
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
# A manifest is a UTF-8 CSV with a header (a byte-order mark is accepted). Columns: `path`
# (required, relative to the source root), optionally both `num_frames` and `fps` (the video's
# native frame count and rate, which spare the per-video probe), and any number of label
# columns: every other column is a label set named by its header (`label`, or e.g. `motion`
# and `digit`), holding class names or integer class indices.

META_COLUMNS = ("path", "num_frames", "fps")
MANIFEST_COLUMNS = ("path", "label", "num_frames", "fps")  # the usual ones (make_manifest)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".ogv", ".ogg", ".mpg")
VIDEO_EXTENSIONS += (".mpeg", ".flv", ".3gp")
LABEL_SET = "label"
_LABEL_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# metadata.json key of the frames store's per-split table: record position of each video's header.
FIRST_RECORD = "first_record"
_SHOWN = 5  # examples listed in an error message


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One video of a manifest. `label` is the `label` column; `labels` holds every label set
    (label set -> class text), `label` included; `line` is the row's line in its file."""

    path: str
    label: str | None = None
    num_frames: int | None = None
    fps: float | None = None
    labels: dict[str, str] | None = None
    line: int | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        labels = dict(self.labels or {})
        if self.label is not None:
            labels.setdefault(LABEL_SET, self.label)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "label", labels.get(LABEL_SET))


def read_manifest(path: str) -> list[ManifestRow]:
    """Rows of a manifest CSV; raises ValueError naming the file, line and column on bad input."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # Excel and Notepad start UTF-8 files with a BOM
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"manifest {path}, line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at column "
            f"{column}); save the file as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [c.strip() for c in next(reader, [])]
    if "path" not in header:
        raise ValueError(
            f"manifest {path}: the header must name a 'path' column (and optionally "
            f"num_frames, fps and label columns), got {header or 'no header'}"
        )
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ValueError(f"manifest {path}, line 1: column(s) {repeated} appear twice")
    label_sets = [c for c in header if c not in META_COLUMNS]
    bad = [c for c in label_sets if not _LABEL_SET_NAME.match(c)]
    if bad:
        raise ValueError(
            f"manifest {path}, line 1: column {bad[0]!r} is not a label set name (a letter, "
            f"then letters, digits, _); columns: path, num_frames, fps and label sets"
        )
    if ("num_frames" in header) != ("fps" in header):
        raise ValueError(f"manifest {path}: give both num_frames and fps columns, or neither")
    rows, first_line = [], {}
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) > len(header):
            raise ValueError(
                f"manifest {path}, line {line}: {len(fields)} fields, the header has "
                f"{len(header)} ({', '.join(header)}); quote values that contain commas"
            )
        row = dict(zip(header, (f.strip() for f in fields)))
        if not row.get("path"):
            raise ValueError(f"manifest {path}, line {line}: empty 'path'")
        key = os.path.normpath(row["path"])
        if key in first_line:
            raise ValueError(
                f"manifest {path}, line {line}: {row['path']} is listed twice "
                f"(first on line {first_line[key]})"
            )
        first_line[key] = line
        try:
            count = int(row["num_frames"]) if row.get("num_frames") else None
            rate = float(row["fps"]) if row.get("fps") else None
        except ValueError:
            raise ValueError(
                f"manifest {path}, line {line}: num_frames must be an integer and fps a "
                f"number, got {row.get('num_frames')!r}, {row.get('fps')!r}"
            ) from None
        labels = {s: row[s] for s in label_sets if row.get(s)}
        rows.append(ManifestRow(row["path"], None, count, rate, labels, line))
    if not rows:
        raise ValueError(f"manifest {path} is empty: it has a header but no rows")
    for label_set in label_sets:
        unlabelled = [r for r in rows if label_set not in r.labels]
        if 0 < len(unlabelled) < len(rows):
            raise ValueError(
                f"manifest {path}, line {unlabelled[0].line}: no {label_set!r} for "
                f"{unlabelled[0].path} while other rows have one ({len(unlabelled)} row(s) "
                "without); label every row or none"
            )
    return rows


def label_sets_of(rows: Sequence[ManifestRow]) -> list[str]:
    """The label sets of a manifest's rows (`read_manifest` checks every row has each one)."""
    return list(rows[0].labels) if rows else []


def write_manifest(path: str, rows: Iterable[ManifestRow]) -> int:
    """Writes rows as a manifest CSV (columns that no row uses are left out); returns the count."""
    rows = list(rows)
    label_sets = list(dict.fromkeys(s for r in rows for s in r.labels))
    meta = [c for c in ("num_frames", "fps") if any(getattr(r, c) for r in rows)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *label_sets, *meta])
        for r in rows:
            values = [r.labels.get(s, "") for s in label_sets]
            values += ["" if getattr(r, c) is None else getattr(r, c) for c in meta]
            writer.writerow([r.path, *values])
    return len(rows)


def check_inside_root(root: str, rows: Sequence[ManifestRow | str], where: str) -> None:
    """Raises for paths that leave `root`: absolute, `..`, or a symlink pointing outside.

    A manifest naming /etc/... or ../other_dataset/... is most likely a mistake (a manifest
    made for another root); the sources allow it only with `allow_outside_root=True`.
    """
    real_root = os.path.realpath(root)
    for row in rows:
        rel = row.path if isinstance(row, ManifestRow) else row
        at = f", line {row.line}" if isinstance(row, ManifestRow) and row.line else ""
        full = os.path.join(root, rel)
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            reason = "is an absolute path" if os.path.isabs(rel) else "leaves the root with '..'"
        elif os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
            reason = f"is a symlink to {os.path.realpath(full)}, outside the root"
        else:
            continue
        raise ValueError(
            f"{where}{at}: {rel} {reason} (root {root}); list paths under the root, or set "
            "allow_outside_root=True"
        )


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
    `short_side` resizes frames while decoding. Label sets: every label column of the manifest
    (`label`, or several such as `motion` and `digit`; `classes` pins the names of a manifest
    with one label set), "label" in tree mode. Paths that leave the root (absolute, `..`, a
    symlink pointing outside) are refused unless `allow_outside_root`.
    """

    root: str
    manifest: str | None = None
    split: str = "train"
    classes: tuple[str, ...] | None = None
    fps: float | None = None
    short_side: int | None = None
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    allow_outside_root: bool = False

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
        record = {
            "id": self._paths[index],
            "num_frames": num_frames,
            "fps": fps,
            "labels": dict(self._labels[index]),
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
        return {name: list(names) for name, names in self._names.items()}

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
        if not self.allow_outside_root:
            check_inside_root(self._root, rows, where)
        check_exist(self._root, paths, where)
        meta = [(r.num_frames, r.fps) if r.num_frames is not None else None for r in rows]
        label_sets = label_sets_of(rows)
        if self.classes is not None and len(label_sets) != 1:
            raise ValueError(
                f"{where}: `classes` names the classes of a manifest with one label column; "
                f"this one has {len(label_sets)} ({', '.join(label_sets) or 'none'})"
            )
        all_labels = {s: [r.labels[s] for r in rows] for s in label_sets}
        if self.classes is None and "{split}" in pattern:
            for other in sorted(glob.glob(pattern.replace("{split}", "*"))):
                if os.path.abspath(other) != os.path.abspath(path):
                    for r in read_manifest(other):
                        for s in label_sets:
                            if s in r.labels:
                                all_labels[s].append(r.labels[s])
        names, lookups = {}, {}
        for s in label_sets:
            names[s], lookups[s] = class_names(all_labels[s], self.classes, f"{where} ({s})")
        labels = [{s: lookups[s][r.labels[s]] for s in label_sets} for r in rows]
        return paths, labels, meta, names

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
        if not self.allow_outside_root:
            check_inside_root(self._root, paths, where)
        labels = [{LABEL_SET: label} for label in labels]
        return paths, labels, [None] * len(paths), {LABEL_SET: names}


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
        self._names = {  # label set -> class names
            name: list(features[key].names)
            for key in features.keys()
            if (name := label_set_of_feature(key)) is not None
        }
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
            "labels": {name: int(example[label_feature(name)]) for name in self._names},
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
        return {name: list(names) for name, names in self._names.items()}

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


def label_feature(label_set: str) -> str:
    """The prepared dataset's ClassLabel feature of a label set: "label", or "label_<set>"."""
    return "label" if label_set == LABEL_SET else f"label_{label_set}"


def label_set_of_feature(feature: str) -> str | None:
    """The label set a prepared dataset's feature holds (None: not a label feature)."""
    if feature == "label":
        return LABEL_SET
    return feature.removeprefix("label_") if feature.startswith("label_") else None


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
