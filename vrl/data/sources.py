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
import dataclasses
import os
from typing import Any

import numpy as np

from vrl import registry, storage
from vrl.data import decode, manifests, store
from vrl.data.decode import DecodeError
from vrl.data.manifests import LABEL_SET, VIDEO_EXTENSIONS

_SHOWN = 5  # examples listed in an error message


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


@registry.register("source", "video_folder")
@dataclasses.dataclass
class VideoFolder(Source):
    """Video files on a local disk or in a bucket (`root` gs://...), listed by a manifest CSV or
    found in a class-folder tree.

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
        if not storage.check(self._root, "video_folder root").is_dir():
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
        # An absolute manifest or a URL stays as it is; a relative one is relative to the root.
        manifest = os.path.expanduser(self.manifest)
        if storage.is_remote(manifest):
            pattern = os.fspath(storage.check(manifest, "video_folder manifest"))
        else:
            pattern = os.path.join(os.path.expanduser(self.root), manifest)
        path = pattern.replace("{split}", self.split)
        where = f"video_folder manifest {path}"
        rows = manifests.read_manifest(path)
        paths = [r.path for r in rows]
        manifests.check_extensions(paths, self.extensions, where)
        if not self.allow_outside_root:
            manifests.check_inside_root(self._root, rows, where)
        manifests.check_exist(self._root, paths, where)
        meta = [(r.num_frames, r.fps) if r.num_frames is not None else None for r in rows]
        label_sets = manifests.label_sets_of(rows)
        if self.classes is not None and len(label_sets) != 1:
            raise ValueError(
                f"{where}: `classes` names the classes of a manifest with one label column; "
                f"this one has {len(label_sets)} ({', '.join(label_sets) or 'none'})"
            )
        all_labels = {s: [r.labels[s] for r in rows] for s in label_sets}
        if self.classes is None and "{split}" in pattern:
            for other in manifests.glob_files(pattern.replace("{split}", "*")):
                if os.fspath(storage.path(other)) != os.fspath(storage.path(path)):
                    for r in manifests.read_manifest(other):
                        for s in label_sets:
                            if s in r.labels:
                                all_labels[s].append(r.labels[s])
        names, lookups = {}, {}
        for s in label_sets:
            names[s], lookups[s] = manifests.class_names(
                all_labels[s], self.classes, f"{where} ({s})"
            )
        labels = [{s: lookups[s][r.labels[s]] for s in label_sets} for r in rows]
        return paths, labels, meta, names

    def _from_tree(self):
        where = f"video_folder tree {self._root}"
        if storage.is_remote(self._root):
            entries = [e for e in storage.path(self._root).iterdir() if not e.name.startswith(".")]
        else:
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
            for path in _files_under(self._root, folder):
                paths.append(path)
                labels.append(index[folder])
        if not paths:
            raise ValueError(f"{where}: no videos found (expected root/<class name>/<video>)")
        manifests.check_extensions(paths, self.extensions, where)
        if not self.allow_outside_root:
            manifests.check_inside_root(self._root, paths, where)
        labels = [{LABEL_SET: label} for label in labels]
        return paths, labels, [None] * len(paths), {LABEL_SET: names}


def _files_under(root: str, folder: str) -> list[str]:
    """Paths relative to `root` of the files under root/folder, hidden ones left out, in
    sorted-walk order."""
    if not storage.is_remote(root):
        out = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith("."):
                    out.append(os.path.relpath(os.path.join(dirpath, filename), root))
        return out
    entries = sorted(
        (e for e in storage.path(root).joinpath(folder).iterdir() if not e.name.startswith(".")),
        key=lambda e: e.name,
    )
    out, below = [], []
    for entry in entries:
        if entry.is_dir():
            below.extend(_files_under(root, f"{folder}/{entry.name}"))
        else:
            out.append(f"{folder}/{entry.name}")
    return out + below


@registry.register("source", "tfds")
@dataclasses.dataclass
class PreparedDataset(Source):
    """A dataset written by `python -m vrl.data.prepare` (see `vrl.data.store`).

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
        self._reader = store.Reader(self.dataset, self.data_dir, self.split)

    def __len__(self) -> int:
        return len(self._reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            video = self._reader.video(int(index))
        except DecodeError as e:
            # Reported by `decode`, where the pipeline skips and counts unreadable videos.
            return {
                "id": self._reader.where(int(index)),
                "num_frames": 1,
                "fps": self.fps or 1.0,
                "labels": {},
                "error": str(e),
            }
        count, rate = video.pop("num_frames"), video.pop("fps")  # as stored
        record = {
            "id": video.pop("id"),
            "num_frames": decode.num_frames_at(count, rate, self.fps),
            "fps": self.fps or rate,
            "labels": video.pop("labels"),
            "native": (count, rate),
        }
        return {**record, **video}  # and the payload: `video` bytes or the `header` position

    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
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
        return {name: list(names) for name, names in self._reader.label_names.items()}

    def frame_bytes(self, record: dict[str, Any], frames: np.ndarray) -> list[bytes]:
        """The stored JPEG images of native `frames` (sorted, unique) of a frames-store record."""
        return self._reader.frame_bytes(record["id"], record["header"], frames)
