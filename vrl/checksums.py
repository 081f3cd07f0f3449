"""sha256 manifests of checkpoint step directories: written at save, checked before a restore.

Orbax's commit marker says a save finished, not that the bytes read back are the bytes written:
a flipped bit, a file emptied by a bad copy or a deleted folder restore without an error, or
with a traceback far from the cause. Every save records the size and sha256 of each file of its
step directory in `checksums.json` inside it (Orbax's post-finalization callback runs on the
primary process after every process wrote its files and before the directory is committed, so a
committed step always holds its manifest); `verify` re-reads the files and names the first one
that differs. Steps saved before manifests existed have none and are reported as unverified.

Not covered: the step's commit marker and Orbax's step metadata (`_CHECKPOINT_METADATA`:
handler names and timestamps), both written at the commit, after the manifest; and any file
the manifest does not list (a file that appeared later is not the checkpoint's).
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os

from etils import epath

from vrl import storage

MANIFEST = "checksums.json"
# Written after the manifest (at the commit), so never listed in it.
NOT_COVERED = (MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA")
_CHUNK = 8 << 20
_READERS = 8  # files hashed in parallel (hashlib and file reads release the GIL)


@dataclasses.dataclass(frozen=True)
class Result:
    """What `verify` found: status "ok", "damaged" or "unverified" (no manifest)."""

    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _files(step_dir: epath.Path) -> list[str]:
    """Paths of every file under `step_dir`, relative and sorted (no `**` glob: gs://)."""
    out, folders = [], [step_dir]
    while folders:
        folder = folders.pop()
        for child in folder.iterdir():
            if child.is_dir():
                folders.append(child)
            else:
                out.append(str(child.relative_to(step_dir)))
    return sorted(p for p in out if p not in NOT_COVERED)


def _sha256(path: epath.Path) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _hash_all(step_dir: epath.Path, names: list[str]) -> dict[str, tuple[int, str] | str]:
    """{name: (size, sha256)} or {name: error text} for files that cannot be read."""

    def one(name):
        try:
            return name, _sha256(step_dir / name)
        except FileNotFoundError:
            return name, "missing"
        except OSError as e:
            return name, f"unreadable ({e.strerror or e})"

    with concurrent.futures.ThreadPoolExecutor(_READERS) as pool:
        return dict(pool.map(one, names))


def write(step_dir: str) -> None:
    """Records the size and sha256 of every file under `step_dir` in its manifest."""
    step_dir = storage.path(step_dir)
    files = {}
    for name, got in _hash_all(step_dir, _files(step_dir)).items():
        if isinstance(got, str):
            raise OSError(f"cannot record the checksum of {step_dir / name}: {got}")
        files[name] = {"size": got[0], "sha256": got[1]}
    manifest = json.dumps({"version": 1, "algorithm": "sha256", "files": files}, indent=0)
    storage.write_atomic(step_dir / MANIFEST, manifest)


def has_manifest(step_dir: str) -> bool:
    return (storage.path(step_dir) / MANIFEST).exists()


def recorded(step_dir: str) -> dict[str, dict]:
    """The manifest's {file: {"size", "sha256"}}; raises ValueError when it is unreadable."""
    text = (storage.path(step_dir) / MANIFEST).read_text()
    try:
        files = json.loads(text)["files"]
        return {
            str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in files.items()
        }
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST} is unreadable ({type(e).__name__})") from None


def verify(step_dir: str, under: str | None = None) -> Result:
    """Re-reads every file the manifest lists (only those in the folder `under`, if given, e.g.
    the one item a loader reads); "damaged" names the first that differs."""
    step_dir = storage.path(step_dir)
    if not (step_dir / MANIFEST).exists():
        return Result("unverified", f"no {MANIFEST}")
    try:
        files = recorded(str(step_dir))
    except ValueError as e:
        return Result("damaged", str(e))
    if under is not None:
        files = {k: v for k, v in files.items() if k.startswith(f"{under}/")}
        if not files:
            return Result("damaged", f"{under}/: missing (no file of it is listed in {MANIFEST})")
    problems = []
    for name, got in _hash_all(step_dir, sorted(files)).items():
        want = files[name]
        if isinstance(got, str):
            problems.append(f"{name}: {got}")
        elif got[0] != want["size"]:
            problems.append(f"{name}: {got[0]} bytes, {want['size']} recorded at save")
        elif got[1] != want["sha256"]:
            problems.append(f"{name}: sha256 differs from the one recorded at save")
    if not problems:
        return Result("ok", f"{len(files)} files")
    more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
    return Result("damaged", problems[0] + more)


_VERIFIED: dict[tuple, tuple] = {}


def _signature(step_dir: str, names) -> tuple | None:
    """(size, mtime_ns, inode) of the manifest and its files; None off the local file system."""
    if storage.is_remote(step_dir):
        return None
    try:
        return tuple(
            (n, st.st_size, st.st_mtime_ns, st.st_ino)
            for n in (MANIFEST, *names)
            for st in [os.stat(os.path.join(step_dir, n))]
        )
    except OSError:
        return None


def verify_cached(step_dir: str, under: str | None = None) -> Result:
    """`verify`, not repeated in this process for local files unchanged since they verified
    (a probe job reads one step's parameters once per encoder)."""
    path = os.fspath(storage.path(step_dir))
    key = (path, under)
    if key in _VERIFIED and _signature(path, _VERIFIED[key][0]) == _VERIFIED[key][1]:
        return Result("ok", "verified earlier in this process")
    try:
        names = tuple(recorded(path))
    except (OSError, ValueError):
        names = None
    signature = _signature(path, names) if names is not None else None  # taken before reading
    result = verify(path, under)
    if result.ok and signature is not None:
        _VERIFIED[key] = (names, signature)
    return result
