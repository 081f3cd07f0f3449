"""The prepared-dataset format: what `vrl.data.prepare` writes and the `tfds` source reads.

A prepared dataset is a TFDS dataset in ArrayRecord files. Every record holds
  id          bytes, the video's path relative to the video root
  num_frames  int64, frames at the stored rate
  fps         float32, the stored rate
  label, label_<set>   a ClassLabel per label set (`label_feature`)
and either the encoded video (`store=video`, one record per video)
  video       bytes
or its JPEG frames (`store=frames`), a header record and then chunks of consecutive frames
  chunk       int64, -1 for the header, else the chunk number
  frames      the chunk's JPEG images
laid out as `frames_layout` says. metadata.json holds the prepare options (`store`,
`chunk_frames`, ...), what the dataset was prepared from (PREPARED_FROM) and, for the frames
store, the table FIRST_RECORD: per split, the position of each video's header record.
"""

import fractions
import itertools
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from vrl import storage
from vrl.data.decode import DecodeError
from vrl.data.manifests import LABEL_SET

VERSION = "1.0.0"
Store = Literal["video", "frames"]
# metadata.json keys: what a dataset was prepared from (so a re-run can tell), and the frames
# store's per-split table of each video's header position.
PREPARED_FROM = "prepared_from"
FIRST_RECORD = "first_record"


def dataset_dir(data_dir: str, name: str) -> str:
    """Where TFDS keeps dataset `name` of a data dir (a local folder or a bucket URL)."""
    return os.path.join(data_dir, name, VERSION)


def label_feature(label_set: str) -> str:
    """The ClassLabel feature of a label set: "label", or "label_<set>"."""
    return "label" if label_set == LABEL_SET else f"label_{label_set}"


def label_set_of_feature(feature: str) -> str | None:
    """The label set a feature holds (None: not a label feature)."""
    if feature == "label":
        return LABEL_SET
    return feature.removeprefix("label_") if feature.startswith("label_") else None


# --- writing --------------------------------------------------------------------------------


def features(store: Store, classes: dict[str, list[str]]) -> dict[str, Any]:
    """The TFDS features of a dataset whose label sets have `classes` (set -> class names)."""
    import tensorflow_datasets as tfds  # seconds to import; only prepare and `tfds` need it

    blob = tfds.features.Tensor(shape=(), dtype=np.object_)
    out = {
        "id": blob,
        "num_frames": tfds.features.Tensor(shape=(), dtype=np.int64),
        "fps": tfds.features.Tensor(shape=(), dtype=np.float32),
    }
    if store == "video":
        out["video"] = blob
    else:
        out["chunk"] = tfds.features.Tensor(shape=(), dtype=np.int64)
        out["frames"] = tfds.features.Sequence(blob)
    for label_set, names in classes.items():
        out[label_feature(label_set)] = tfds.features.ClassLabel(names=names)
    return out


def video_fields(
    video_id: str, num_frames: int, fps: float, labels: Iterable[tuple[str, int]]
) -> dict[str, Any]:
    """The fields every record of a video holds; `labels` are (label set, class index) pairs."""
    fields = {"id": video_id.encode("utf-8"), "num_frames": num_frames, "fps": fps}
    for label_set, label in labels:
        fields[label_feature(label_set)] = label
    return fields


def frames_layout(
    video: dict[str, Any], jpegs: Sequence[bytes], chunk_frames: int
) -> list[dict[str, Any]]:
    """The records of one video in the frames store, in the order they are written.

    A header (the video's fields; `chunk` -1, no frames) is followed by its frames in chunks of
    `chunk_frames` (`chunk` 0, 1, ...; each repeats the header's fields, so a record read on
    its own says whose frames it holds). The split's table metadata["first_record"][split]
    gives each video's header position, in manifest order: a reader reads the header for a
    video, and chunk c of that video at header + 1 + c.
    """
    header = {**video, "chunk": -1, "frames": []}
    chunks = [
        {**video, "chunk": c, "frames": list(jpegs[start : start + chunk_frames])}
        for c, start in enumerate(range(0, len(jpegs), chunk_frames))
    ]
    return [header, *chunks]


def first_records(records_per_video: Sequence[int]) -> list[int]:
    """The FIRST_RECORD table of a split from the record count of each video, in order."""
    return [0, *itertools.accumulate(records_per_video)][:-1]


def record_key(video: int, videos: int, part: int) -> int:
    """TFDS key of record `part` of the `video`-th of `videos` inputs (frames store).

    With shuffling disabled TFDS writes records in key order, which makes (video, part) the
    on-disk order. It sorts in memory one of 1,000 buckets at a time, assigned by ranges of a
    128-bit key space: spreading the videos over that space keeps the buckets even, so a split
    larger than memory is written without holding all of it.
    """
    return video * (2**128 // videos) + part


# --- reading --------------------------------------------------------------------------------


class Reader:
    """One split of a prepared dataset, read by position with `tfds.data_source` (ArrayRecord,
    no TensorFlow). `len` counts videos; `video(i)` reads the i-th one's (header) record."""

    def __init__(self, dataset: str, data_dir: str | None, split: str):
        self.dataset, self.data_dir, self.split = dataset, data_dir, split
        self._source = None
        source = self._open()
        features = source.dataset_info.features
        self.store: Store = "video" if "video" in features else "frames"
        self.label_names = {  # label set -> class names
            name: list(features[key].names)
            for key in features.keys()
            if (name := label_set_of_feature(key)) is not None
        }
        self._len = len(source)
        if self.store == "frames":
            metadata = source.dataset_info.metadata or {}
            first = metadata.get(FIRST_RECORD, {}).get(split)
            if first is None or "chunk_frames" not in metadata:
                raise ValueError(
                    f"tfds source {dataset}/{split}: frames store without its "
                    f"{FIRST_RECORD!r} table in metadata.json; prepare it again"
                )
            self._first = [int(i) for i in first]  # each video's header record
            self._chunk = int(metadata["chunk_frames"])
            self._len = len(self._first)

    def __len__(self) -> int:
        return self._len

    def video(self, index: int) -> dict[str, Any]:
        """id, num_frames and fps (as stored), labels (set -> index) and either `video` (the
        encoded bytes) or `header` (the header's position, for `frame_bytes`).

        Raises DecodeError for a record that cannot be read (a corrupted ArrayRecord chunk).
        """
        position = self._first[index] if self.store == "frames" else index
        try:
            example = self._open()[position]
        except (RuntimeError, OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            raise DecodeError(f"{self.where(index)}: unreadable record: {reason}") from e
        out = {
            "id": _text(example["id"]),
            "num_frames": int(example["num_frames"]),
            "fps": _rate(example["fps"]),
            "labels": {name: int(example[label_feature(name)]) for name in self.label_names},
        }
        if self.store == "video":
            out["video"] = bytes(example["video"])
        else:
            out["header"] = position
        return out

    def where(self, index: int) -> str:
        return f"{self.dataset}/{self.split}/{index}"

    def frame_bytes(self, video_id: str, header: int, frames: np.ndarray) -> list[bytes]:
        """The stored JPEG images of `frames` (sorted, unique) of the video whose header record
        is at `header`; reads only the chunk records that hold them."""
        chunks = np.unique(frames // self._chunk).tolist()
        positions = [header + 1 + c for c in chunks]
        try:
            examples = self._open().__getitems__(positions)
        except (RuntimeError, OSError, ValueError) as e:  # a corrupted ArrayRecord chunk
            reason = " ".join(str(e).split())
            raise DecodeError(f"{video_id}: unreadable frame records: {reason}") from e
        held = {}
        for chunk, example in zip(chunks, examples):
            if _text(example["id"]) != video_id or int(example["chunk"]) != chunk:
                raise DecodeError(
                    f"{video_id}: record {header + 1 + chunk} should hold chunk {chunk} of it, "
                    f"holds chunk {int(example['chunk'])} of {_text(example['id'])}"
                )
            held[chunk] = example["frames"]
        return [bytes(held[f // self._chunk][f % self._chunk]) for f in frames.tolist()]

    def _open(self):
        if self._source is None:
            data_dir = os.path.expanduser(self.data_dir) if self.data_dir else None
            if data_dir is not None and storage.is_remote(data_dir):
                storage.check(data_dir, "tfds source data_dir")  # TFDS reads the URL itself
            self._source = _data_source(self.dataset, data_dir, self.split)
        return self._source


def _data_source(name: str, data_dir: str | None, split: str):
    import tensorflow_datasets as tfds  # seconds to import; only prepare and `tfds` need it

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
