"""Manifests: the CSV files that list a dataset's videos and their labels.

A manifest is a UTF-8 CSV with a header (a byte-order mark is accepted). Columns: `path`
(required, relative to the source root), optionally both `num_frames` and `fps` (the video's
native frame count and rate, which spare the per-video probe), and any number of label
columns: every other column is a label set named by its header (`label`, or e.g. `motion`
and `digit`), holding class names or integer class indices.

Read by the `video_folder` source and by `vrl.data.prepare`; the converters at the end write
them from the official Kinetics, UCF101 and HMDB51 annotation files.
"""

import csv
import dataclasses
import glob
import io
import os
import re
from collections.abc import Iterable, Sequence

import fsspec
from absl import logging

from vrl import storage

META_COLUMNS = ("path", "num_frames", "fps")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".ogv", ".ogg", ".mpg")
VIDEO_EXTENSIONS += (".mpeg", ".flv", ".3gp")
LABEL_SET = "label"
_LABEL_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
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
    """Rows of a manifest CSV (a local file or a bucket URL); raises ValueError naming the file,
    line and column on bad input."""
    if not storage.path(path, "manifest").is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    data = storage.path(path).read_bytes()
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
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["path", *label_sets, *meta])
    for r in rows:
        values = [r.labels.get(s, "") for s in label_sets]
        values += ["" if getattr(r, c) is None else getattr(r, c) for c in meta]
        writer.writerow([r.path, *values])
    storage.write_atomic(path, text.getvalue().encode("utf-8"))
    return len(rows)


def check_inside_root(root: str, rows: Sequence[ManifestRow | str], where: str) -> None:
    """Raises for paths that leave `root`: absolute, `..`, or a symlink pointing outside.

    A manifest naming /etc/... or ../other_dataset/... is most likely a mistake (a manifest
    made for another root); the sources allow it only with `allow_outside_root=True`. A bucket
    has no symlinks: there only the paths themselves are checked.
    """
    remote = storage.is_remote(root)
    real_root = root if remote else os.path.realpath(root)
    for row in rows:
        rel = row.path if isinstance(row, ManifestRow) else row
        at = f", line {row.line}" if isinstance(row, ManifestRow) and row.line else ""
        full = os.path.join(root, rel)
        absolute = os.path.isabs(rel) or storage.is_remote(rel)
        if absolute or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            reason = "is an absolute path" if absolute else "leaves the root with '..'"
        elif remote:
            continue
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
    exists = _Listings(root, where)
    missing = [rel for rel in paths if not exists(rel)]
    if missing:
        raise FileNotFoundError(
            f"{where}: {len(missing)} of {len(paths)} listed video(s) are missing under {root}, "
            f"e.g. {', '.join(missing[:_SHOWN])}"
        )


def list_names(folder: str) -> list[str]:
    """The names in a local or bucket folder; none when it does not exist."""
    if not storage.is_remote(folder):
        return os.listdir(folder) if os.path.isdir(folder) else []
    found = storage.path(folder)
    return [child.name for child in found.iterdir()] if found.is_dir() else []


def glob_files(pattern: str) -> list[str]:
    """Sorted files matching a glob pattern (`*`, not `**`), local or in a bucket."""
    if not storage.is_remote(pattern):
        return sorted(glob.glob(pattern))
    bucket = storage.bucket(pattern)
    rest = pattern[len(bucket) :].lstrip("/")
    return sorted(os.fspath(p) for p in storage.path(bucket).glob(rest))


def read_classes(path: str) -> list[str]:
    """Class names, one per line; a leading index ("1 ApplyEyeMakeup": classInd.txt) is dropped."""
    text = storage.path(path, "--classes").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [re.sub(r"^\d+\s+", "", line) for line in lines]


# --- manifests from official annotation files ----------------------------------------------


# Kinetics CSVs name the validation split "val" or "validate"; TFDS and the configs say this.
_KINETICS_SPLITS = {"val": "validation", "validate": "validation"}


def kinetics_manifest(annotations: str, videos: str, manifest: str) -> dict[str, int]:
    """CVDF Kinetics CSV (label,youtube_id,time_start,time_end,split) -> manifest(s).

    The split column picks the manifest ("val" is written as "validation").
    Files are `{youtube_id}_{start:06d}_{end:06d}.mp4` anywhere under `videos` (flat, as the
    CVDF K600 archives extract, or in class folders). Rows whose video is missing (removed
    from YouTube) are left out and counted. Returns the rows written per split.
    Every path may be local or in a bucket.
    """
    present = {os.path.basename(rel): rel for rel in _files_under(videos)}
    out: dict[str, list[ManifestRow]] = {}
    missing: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(_read_text(annotations), newline="")):
        start, end = int(row["time_start"]), int(row["time_end"])
        file = f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
        split = _KINETICS_SPLITS.get(row.get("split") or "train", row.get("split"))
        if file not in present:
            missing[split] = missing.get(split, 0) + 1
            continue
        out.setdefault(split, []).append(ManifestRow(present[file], row.get("label") or None))
    return _write_manifests(out, manifest, missing)


def ucf101_manifest(splits_dir: str, videos: str, manifest: str, fold: int) -> dict[str, int]:
    """UCF101 `ucfTrainTestlist/{train,test}list0{fold}.txt` -> train/test manifests."""
    out: dict[str, list[ManifestRow]] = {}
    missing: dict[str, int] = {}
    exists = _Listings(videos)
    for split in ("train", "test"):
        for line in _read_text(storage.path(splits_dir) / f"{split}list0{fold}.txt").splitlines():
            if not line.strip():
                continue
            rel = line.split()[0]
            if not exists(rel):
                missing[split] = missing.get(split, 0) + 1
                continue
            out.setdefault(split, []).append(ManifestRow(rel, rel.split("/")[0]))
    return _write_manifests(out, manifest, missing)


def hmdb51_manifest(splits_dir: str, videos: str, manifest: str, fold: int) -> dict[str, int]:
    """HMDB51 `testTrainMulti_7030_splits/<class>_test_split{fold}.txt` -> train/test manifests.

    In those files 1 marks a training video, 2 a test video, 0 a video the split leaves out.
    """
    out: dict[str, list[ManifestRow]] = {}
    missing: dict[str, int] = {}
    exists = _Listings(videos)
    suffix = f"_test_split{fold}.txt"
    pattern = os.fspath(storage.path(splits_dir) / f"*{suffix}")
    for path in glob_files(pattern):
        label = storage.path(path).name[: -len(suffix)]
        for line in _read_text(path).splitlines():
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "2"):
                continue
            split = "train" if parts[1] == "1" else "test"
            rel = f"{label}/{parts[0]}"
            if not exists(rel):
                missing[split] = missing.get(split, 0) + 1
                continue
            out.setdefault(split, []).append(ManifestRow(rel, label))
    if not out:
        raise FileNotFoundError(f"no HMDB51 split files match {pattern}")
    return _write_manifests(out, manifest, missing)


def _files_under(root: str) -> list[str]:
    """Every file under `root`, relative to it: a walk on disk, one listing in a bucket."""
    root = os.fspath(storage.path(root, "--videos"))
    if not storage.is_remote(root):
        return [
            os.path.relpath(os.path.join(folder, file), root)
            for folder, _, files in os.walk(root)
            for file in files
        ]
    fs, key = fsspec.core.url_to_fs(root)
    return [found[len(key.rstrip("/")) + 1 :] for found in fs.find(key)]


def _read_text(path: storage.PathLike) -> str:
    return storage.path(path, "--annotations").read_text(encoding="utf-8")


class _Listings:
    """Whether a file exists under `root`, listing each folder once (one request in a bucket)."""

    def __init__(self, root: str, what: str = "--videos"):
        self.root = storage.path(root, what)
        self.names: dict[str, set[str]] = {}

    def __call__(self, rel: str) -> bool:
        folder, base = os.path.split(os.fspath(self.root / rel))
        if folder not in self.names:
            self.names[folder] = set(list_names(folder))
        return base in self.names[folder]


def _write_manifests(rows, manifest: str, missing: dict[str, int]) -> dict[str, int]:
    if len(rows) > 1 and "{split}" not in manifest:
        raise ValueError(f"--manifest={manifest} needs a '{{split}}' for splits {sorted(rows)}")
    written = {}
    for split, split_rows in sorted(rows.items()):
        path = manifest.replace("{split}", split)
        written[split] = write_manifest(path, split_rows)
        logging.info("%s: %d videos (%d listed but missing)", path, written[split],
                     missing.get(split, 0))  # fmt: skip
    return written
