"""Storage paths: a local folder or a bucket URL (gs://, s3://, ...) through one type.

On a Cloud TPU pod every worker's disk is deleted with the pod, so a run's workdir, its data and
its teachers live in a bucket. Every path vrl reads or writes goes through `path()`, which gives
an `etils.epath.Path` (what Orbax uses; gcsfs/fsspec underneath for buckets): the same code reads
and writes either kind. Object stores differ from disks in three ways this module hides:
- nothing is renamed atomically (`move` copies then deletes; a single object upload is atomic,
  so `write_atomic` writes directly);
- objects cannot be appended to (callers rewrite the whole object);
- libraries that need a local file or folder get one through `local_copy` / `staged`.
"""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

import fsspec
from etils import epath

PathLike = str | os.PathLike
# Orbax writes its arrays through tensorstore, behind fsspec's back: a bucket folder listing that
# fsspec cached earlier in the process would miss the checkpoint steps saved since.
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(/*)(.*)$")


class StorageError(ValueError):
    """A path that names no usable place: a malformed URL or a bucket that does not exist."""


def is_remote(p: PathLike) -> bool:
    """Whether `p` is a URL (gs://bucket/x, s3://...) rather than a local path."""
    return "://" in os.fspath(p)


def path(p: PathLike, what: str = "path") -> epath.Path:
    """`p` as an epath.Path: URLs as they are, local paths made absolute.

    A URL with one slash (`gs:/bucket`, what `os.path.normpath` makes of `gs://bucket`) is a
    StorageError naming `what`, never a local folder called `gs:`.
    """
    text = os.fspath(p)
    match = _URL.match(text)
    if match and len(match.group(1)) > 1:  # not a Windows drive letter
        scheme, slashes, rest = match.groups()
        if slashes != "//" or not rest or rest.startswith("/"):
            raise StorageError(
                f"{what} {text!r} is not a valid URL: write {scheme}://BUCKET/PATH (two slashes)"
            )
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def bucket(p: PathLike) -> str | None:
    """The URL of the bucket that holds `p` (`gs://b` for `gs://b/x/y`); None for local paths."""
    if not is_remote(p):
        return None
    scheme, rest = os.fspath(p).split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def check(p: PathLike, what: str = "path") -> epath.Path:
    """`path(p)`, and for a URL also that its bucket exists: one line at start-up, not later."""
    result = path(p, what)
    root = bucket(result)
    if root is not None:
        try:
            found = epath.Path(root).exists()
        except Exception as e:  # noqa: BLE001 - credentials, network: say which path and why
            raise StorageError(f"{what} {os.fspath(p)}: cannot reach {root} ({e})") from None
        if not found:
            raise StorageError(
                f"{what} {os.fspath(p)}: bucket {root} does not exist or is not visible to "
                "these credentials; create it (gcloud storage buckets create) or fix the name"
            )
    return result


def write_atomic(p: PathLike, data: str | bytes) -> None:
    """Writes a whole file so that readers see the old content or the new, never a part."""
    target = path(p)
    mode = "wb" if isinstance(data, bytes) else "w"
    if is_remote(target):  # an object upload is atomic
        with target.open(mode) as f:
            f.write(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def move(src: PathLike, dst: PathLike) -> None:
    """Moves a file or folder; within a bucket by copy then delete (no atomic rename there)."""
    src, dst = path(src), path(dst)
    if not is_remote(src) and not is_remote(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return
    copy(src, dst)
    remove(src)


def copy(src: PathLike, dst: PathLike) -> None:
    """Copies a file or a folder tree between any two places (local, bucket, or one of each)."""
    src, dst = path(src), path(dst)
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in src.iterdir():
            copy(child, dst / child.name)
        return
    if not is_remote(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as reader, dst.open("wb") as writer:
        shutil.copyfileobj(reader, writer, length=8 << 20)


def remove(p: PathLike, missing_ok: bool = True) -> None:
    """Deletes a file or a folder tree."""
    target = path(p)
    if target.is_dir():
        target.rmtree()
    elif target.exists() or not missing_ok:
        target.unlink()


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[str]:
    """A local filename holding `p`'s content, for libraries that only open local files."""
    source = path(p)
    if not is_remote(source):
        yield os.fspath(source)
        return
    with tempfile.TemporaryDirectory(prefix="vrl-download-") as tmp:
        local = os.path.join(tmp, source.name)
        copy(source, local)
        yield local


@contextlib.contextmanager
def staged(p: PathLike) -> Iterator[str]:
    """A local folder to write into; for a URL, uploaded to `p` when the block succeeds.

    For writers that cannot write to a bucket themselves (TFDS finalises only on local disk
    without TensorFlow). Nothing is uploaded if the block raises.
    """
    target = path(p)
    if not is_remote(target):
        target.mkdir(parents=True, exist_ok=True)
        yield os.fspath(target)
        return
    with tempfile.TemporaryDirectory(prefix="vrl-staging-") as tmp:
        yield tmp
        copy(tmp, target)
