"""Orbax checkpoints holding the train state, the Grain iterator state and the run's config.

Saving the data iterator with the model makes a resumed run the same run: the next batch after a
restore is the batch the uninterrupted run would have seen. Restores are strict: a checkpoint
whose parameter names or shapes differ from what the config builds is an error listing the
differences, never a silent partial load. A save that never completed (the process killed
mid-write, a partial copy) is never restored: Orbax writes `commit_success.txt` last, and a
step directory without it is set aside and named in the log (see `clear_incomplete`). Every
save records the sha256 of each file it wrote (`vrl.checksums`); restores verify them, and a
damaged step is never trained on or probed (see `set_aside_damaged`, `verify_step`).

    python -m vrl.checkpoint WORKDIR           lists saved steps, parameter counts, sha256 digests
    python -m vrl.checkpoint WORKDIR --verify  checks every step's files against their checksums

WORKDIR is a local folder or a bucket URL (gs://BUCKET/PATH); in a bucket a step is set aside
by a copy then a delete (objects have no rename).
"""

import contextlib
import dataclasses
import functools
import hashlib
import logging as py_logging
import os
import sys
import tempfile
import time
import uuid

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from vrl import checksums, storage
from vrl import config as config_lib

STATE, DATA, CONFIG = "state", "data", "config"
# Orbax writes a step into "<step>.orbax-checkpoint-tmp*", writes this marker last, then renames.
COMMIT_MARKER = "commit_success.txt"
TMP_MARKER = ".orbax-checkpoint-tmp"
INCOMPLETE = "checkpoints.incomplete"  # next to checkpoints/: step directories set aside
DAMAGED = "checkpoints.damaged"  # next to checkpoints/: steps whose files fail their checksums


class CheckpointError(RuntimeError):
    """A checkpoint that does not exist or does not match what the config builds."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        config_lib.check_ranges(
            "config.ckpt",
            self,
            every_steps=(">= 1", lambda v: v >= 1),
            keep=(">= 1", lambda v: v >= 1),
        )


def directory(workdir: storage.PathLike) -> str:
    """WORKDIR/checkpoints: an absolute local path, or a URL in the workdir's bucket."""
    try:
        return os.fspath(storage.path(workdir, "workdir") / "checkpoints")
    except storage.StorageError as e:  # e.g. an encoder to load named by a malformed URL
        raise CheckpointError(str(e)) from None


def check_writable(workdir: storage.PathLike) -> None:
    """Raises CheckpointError unless files can be created in `workdir` and its checkpoints.

    Run at start-up, so that an unwritable workdir is one clear line instead of a failure
    inside the first asynchronous save, minutes later.
    """
    folders = [storage.path(workdir, "workdir")]
    if folders[0].joinpath("checkpoints").is_dir():
        folders.append(folders[0] / "checkpoints")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if storage.is_remote(folder):  # an object written and deleted
                probe = folder / f".write-check-{uuid.uuid4().hex}"
                probe.write_text("")
                probe.unlink()
                continue
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as e:
            raise CheckpointError(
                f"workdir {folder} is not writable ({e.strerror or e}); "
                "pass a --workdir this user can create files in"
            ) from None


def is_complete(step_dir: storage.PathLike) -> bool:
    """Whether Orbax finished writing this step directory (its commit marker exists)."""
    step_dir = storage.path(step_dir)
    return TMP_MARKER not in step_dir.name and (step_dir / COMMIT_MARKER).is_file()


def clear_incomplete(workdir: str) -> list[str]:
    """Takes saves that never completed out of the way, before a manager lists the steps.

    Orbax's temporary directories (a kill during a save) are deleted; a step-named directory
    without the commit marker (a partial copy, a disk that filled up) is moved to
    WORKDIR/checkpoints.incomplete/ so the step can be saved again and nothing is lost.
    Returns the paths it found; each one is named in a warning. Call on one process only.
    """
    root = storage.path(directory(workdir))
    found = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        name = path.name
        if not path.is_dir() or is_complete(path):
            continue
        if TMP_MARKER in name:
            with contextlib.suppress(OSError):  # what is left is removed at the next start
                storage.remove(path)
            logging.warning("Deleted %s: a checkpoint save that was interrupted.", path)
        elif name.isdigit():
            aside = _move_aside(path, INCOMPLETE)
            logging.warning(
                "Checkpoint step %s is incomplete (no %s): not restored; moved %s to %s.",
                name,
                COMMIT_MARKER,
                path,
                aside,
            )
        else:
            continue
        found.append(os.fspath(path))
    return found


def _move_aside(step_dir: storage.PathLike, folder: str) -> str:
    """Moves a step directory to WORKDIR/<folder>/<step>-<time> (nothing is deleted)."""
    step_dir = storage.path(step_dir)
    aside = step_dir.parent.parent / folder / f"{step_dir.name}-{time.time_ns()}"
    storage.move(step_dir, aside)
    return os.fspath(aside)


def set_aside_damaged(workdir: str) -> list[int]:
    """Moves the newest steps whose files fail their checksums out of the way, before a resume.

    Checks the complete steps from the newest down and stops at the first that verifies (or
    that has no checksums: saved before they were recorded, restored with a warning), so the
    run resumes from the newest step whose files are the bytes that were saved. A damaged step
    is moved to WORKDIR/checkpoints.damaged/<step>-<time> (nothing is deleted) and named in
    one warning with the first file that differs. Call on one process only (after
    `clear_incomplete`): each file is read once.
    """
    root = directory(workdir)
    damaged = []
    for step in reversed(complete_steps(workdir)):
        path = os.fspath(storage.path(root) / str(step))
        result = checksums.verify_cached(path)
        if result.status == "unverified":
            _warn_unverified(path, step)
        if result.status != "damaged":
            break
        aside = _move_aside(path, DAMAGED)
        logging.warning(
            "Checkpoint step %d is damaged (%s): not restored; moved %s to %s.",
            step,
            result.detail,
            path,
            aside,
        )
        damaged.append(step)
    return damaged


@functools.cache
def _warn_unverified(path: str, step: int) -> None:
    """Once per step and process: steps saved before checksums were recorded still restore."""
    logging.warning(
        "Checkpoint step %d in %s has no %s (saved before checksums were recorded): "
        "restored without verification.",
        step,
        storage.path(path).parent,
        checksums.MANIFEST,
    )


def verify_step(workdir: str, step: int, item: str | None = None) -> None:
    """Raises CheckpointError unless the files of `step` (of its `item` folder only, if given)
    are the ones that were saved.

    For loaders that only read (probes, `vrl.api`, SALT's teacher, fine-tuning's start): a
    damaged step is refused in one line naming the file; they never pick another step.
    """
    path = os.fspath(storage.path(directory(workdir)) / str(step))
    result = checksums.verify_cached(path, item)
    if result.status == "unverified":
        _warn_unverified(path, step)
    elif result.status == "damaged":
        raise CheckpointError(
            f"checkpoint step {step} in {directory(workdir)} is damaged ({result.detail}); "
            f"not restored; `python -m vrl.checkpoint {workdir} --verify` lists the steps that "
            "verify"
        )


def complete_steps(workdir: str) -> list[int]:
    """Steps whose directories Orbax finished writing, ascending."""
    root = storage.path(directory(workdir))
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.name.isdigit() and is_complete(p)]
    return sorted(int(n) for n in names)


def _save_failed(workdir: str, error: BaseException) -> "CheckpointError":
    steps = complete_steps(workdir)
    resume = f"a restart resumes from step {steps[-1]}" if steps else "a restart starts afresh"
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return CheckpointError(
        f"saving a checkpoint in {directory(workdir)} failed ({reason}); complete checkpoints: "
        f"{steps or 'none'} ({resume}); check free disk space, quota and write permission"
    )


def wait(mngr, workdir: str) -> None:
    """Waits for the asynchronous save in flight; a failed save becomes a CheckpointError."""
    try:
        mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - any failure of the writer threads is a failed save
        raise _save_failed(workdir, e) from e


def manager(workdir: str, cfg: CheckpointConfig = CheckpointConfig(), read_only=False):
    if read_only:
        _quiet_read_only_notice()
    # Asynchronous saves record their checksums in Orbax's writer thread, after every process
    # wrote its files and before the step is committed (see `vrl.checksums`); synchronous
    # ones in `save_items`, once the save returns.
    record = functools.partial(_record_checksums, directory(workdir))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else cfg.keep,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=cfg.async_save,
        # Step directories are made in `save` itself: made by Orbax's writer thread, a failure
        # (read-only directory, no space) only surfaces as a timeout minutes later.
        async_options=ocp.AsyncOptions(
            create_directories_asynchronously=False,
            post_finalization_callback=record if cfg.async_save and not read_only else None,
        ),
        create=not read_only,
        read_only=read_only,
    )
    handlers = {
        STATE: ocp.PyTreeCheckpointHandler(),
        DATA: grain.checkpoint.CheckpointHandler(),
        CONFIG: ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(directory(workdir), options=options, item_handlers=handlers)


class _NoReadOnlyNotice(py_logging.Filter):
    """Orbax warns `Given directory is read only=...` for every read-only manager, i.e. each
    time a probe or `vrl.api` opens a checkpoint: a writable directory opened to read only."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.msg != "Given directory is read only=%s"


@functools.cache
def _quiet_read_only_notice() -> None:
    logging.get_absl_logger().addFilter(_NoReadOnlyNotice())


def _record_checksums(root: str) -> None:
    """Orbax's post-finalization callback (primary process): the manifest of the step in flight.

    It runs before the commit, so the step is still Orbax's temporary directory (or, where
    Orbax commits with a marker instead of a rename, the step directory without its marker).
    """
    for path in storage.path(root).iterdir():
        name = path.name
        in_flight = TMP_MARKER in name or (name.isdigit() and not is_complete(path))
        if in_flight and path.is_dir() and not checksums.has_manifest(path):
            checksums.write(os.fspath(path))


def save_items(mngr, step: int, items: dict, force: bool = False) -> bool:
    """`mngr.save(step, Composite(**items))` with checksums recorded; True if it saved.

    Every writer of step directories goes through here (the trainer's `save`, converters), so
    every step carries its checksums. Errors are the caller's to wrap.
    """
    saved = mngr.save(step, args=ocp.args.Composite(**items), force=force)
    path = storage.path(mngr.directory) / str(step)
    # A synchronous save is committed by now without a manifest; an asynchronous one got its
    # manifest before its commit, so this never applies to it.
    if saved and jax.process_index() == 0 and is_complete(path):
        if not checksums.has_manifest(path):
            checksums.write(os.fspath(path))
    return saved


def save(mngr, step: int, state, iterator, meta: dict, force: bool = False) -> bool:
    """Starts an (async) save of everything a resume needs; returns whether it saved.

    `meta` is JSON: {"config": the run's config, "init_batch": {key: [shape, dtype]}}, enough to
    rebuild the model and its parameter shapes anywhere, without the training data. A failure,
    of this save or of the previous asynchronous one, raises CheckpointError naming the
    complete checkpoints a restart would resume from.
    """
    workdir = os.fspath(storage.path(mngr.directory).parent)
    try:
        return save_items(
            mngr,
            step,
            {
                STATE: ocp.args.PyTreeSave(state),
                DATA: grain.checkpoint.CheckpointSave(iterator),
                CONFIG: ocp.args.JsonSave(meta),
            },
            force=force,
        )
    except Exception as e:  # noqa: BLE001 - tensorstore raises ValueError, the OS OSError
        raise _save_failed(workdir, e) from e


def restore_data(mngr, step: int, iterator) -> None:
    """Moves `iterator` to where it was when step `step` was saved."""
    mngr.restore(
        step, args=ocp.args.Composite(**{DATA: grain.checkpoint.CheckpointRestore(iterator)})
    )


def restore_state(mngr, step: int, abstract_state):
    """The train state at `step`, laid out by the shardings in `abstract_state` (strict)."""
    check_matches(tree_metadata(mngr, step), abstract_state, f"checkpoint step {step}")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(abstract_state, restore_args)}),
    )
    return restored[STATE]


def load_meta(workdir: str, step: int | None = None) -> tuple[dict, int]:
    """(meta, step): the run's config and init batch shapes saved at `step` (default: latest)."""
    if not storage.path(directory(workdir)).is_dir():
        raise CheckpointError(f"no checkpoint directory {directory(workdir)}")
    mngr = manager(workdir, read_only=True)
    step = resolve_step(mngr, step, workdir)
    verify_step(workdir, step, CONFIG)  # the config only: cheap, and all that is read here
    meta = mngr.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
    mngr.close()
    return meta, step


def resolve_step(mngr, step: int | None, workdir: str) -> int:
    """`step`, or the latest complete one; steps whose save never completed are refused."""
    listed = mngr.all_steps()
    root = storage.path(directory(workdir))
    steps = [s for s in listed if is_complete(root / str(s))]
    for skipped in sorted(set(listed) - set(steps)):
        logging.warning(
            "Checkpoint step %d in %s is incomplete (no %s); not used.",
            skipped,
            directory(workdir),
            COMMIT_MARKER,
        )
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory(workdir)}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(
            f"no step {step} in {directory(workdir)}; saved steps: {sorted(steps)}"
        )
    return step


def tree_metadata(mngr, step: int):
    """Shapes/dtypes of the saved train state (no array is read)."""
    meta = mngr.item_metadata(step)
    meta = meta[STATE] if STATE in meta else meta
    return getattr(meta, "tree", meta)


def restore_partial(workdir: str, step: int, target: dict, convert=None):
    """Strictly restores some top-level entries of the train state (e.g. "params", "extra").

    `target` maps entries to abstract trees (ShapeDtypeStructs with shardings, or arrays); the
    optimizer state is never read. Every entry must match the saved one leaf for leaf.
    `convert(tree, like)`, if given, is a layout conversion (e.g. `vit.match_layout`: scanned
    <-> unrolled blocks): the saved entry is read in its own layout, then converted to the
    target's; the strict check applies to the target converted to the saved layout.
    """
    verify_step(workdir, step)
    mngr = manager(workdir, read_only=True)
    saved = tree_metadata(mngr, step)
    wanted = target
    if convert is not None:
        target = {key: convert(abstract, saved.get(key)) for key, abstract in target.items()}
    for key, abstract in target.items():
        if key not in saved:
            raise CheckpointError(
                f"checkpoint step {step} in {directory(workdir)} has no {key!r}; "
                f"has: {', '.join(saved)}"
            )
        check_matches(saved[key], abstract, f"{key} at step {step} of {directory(workdir)}")
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.PyTreeRestore(target, restore_args, partial_restore=True)}
        ),
    )[STATE]
    mngr.close()
    if convert is not None:
        return {key: convert(restored[key], wanted[key]) for key in target}
    return {key: restored[key] for key in target}


def check_matches(saved, expected, what: str) -> None:
    """Raises CheckpointError listing every missing, unexpected or reshaped leaf."""
    saved_leaves = _shapes(saved)
    expected_leaves = _shapes(expected)
    problems = []
    for path in sorted(expected_leaves.keys() - saved_leaves.keys()):
        problems.append(f"missing {path} {expected_leaves[path]}")
    for path in sorted(saved_leaves.keys() - expected_leaves.keys()):
        problems.append(f"unexpected {path} {saved_leaves[path]}")
    for path in sorted(saved_leaves.keys() & expected_leaves.keys()):
        if saved_leaves[path] != expected_leaves[path]:
            problems.append(
                f"shape {path}: saved {saved_leaves[path]}, expected {expected_leaves[path]}"
            )
    if problems:
        shown = "; ".join(problems[:20]) + (
            f"; ... {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise CheckpointError(
            f"{what} does not match the model ({len(problems)} differences): {shown}"
        )


def _shapes(tree) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(
            str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path
        )
        out[name] = tuple(getattr(leaf, "shape", ()))
    return out


def digest(tree) -> tuple[int, str]:
    """(parameter count, sha256 over sorted names, dtypes, shapes and bytes) of an array tree."""
    h = hashlib.sha256()
    count = 0
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        count += array.size
        h.update(jax.tree_util.keystr(path).encode())
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return count, h.hexdigest()


def verify_all(workdir: str) -> int:
    """`--verify`: one line per complete step (ok / damaged, naming the file / not verified);
    1 if any step is damaged. Reads every file of every step; restores nothing."""
    steps = complete_steps(workdir)
    if not steps:
        print(f"no checkpoint in {directory(workdir)}", file=sys.stderr)
        return 1
    damaged = 0
    for step in steps:
        result = checksums.verify(os.fspath(storage.path(directory(workdir)) / str(step)))
        if result.status == "ok":
            print(f"step {step}: ok ({result.detail})")
        elif result.status == "damaged":
            damaged += 1
            print(f"step {step}: damaged ({result.detail})")
        else:
            print(f"step {step}: not verified (no {checksums.MANIFEST}: saved before checksums)")
    if damaged:
        print(f"{damaged} of {len(steps)} steps damaged in {directory(workdir)}", file=sys.stderr)
    return 1 if damaged else 0


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if a != "--verify"]
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m vrl.checkpoint WORKDIR [--verify]", file=sys.stderr)
        return 2
    workdir = args[0]
    if "--verify" in argv[1:]:
        return verify_all(workdir)
    mngr = manager(workdir, read_only=True)
    steps = complete_steps(workdir)
    for step in sorted(set(mngr.all_steps()) - set(steps)):
        print(f"step {step}: incomplete (no {COMMIT_MARKER}), skipped", file=sys.stderr)
    if not steps:
        print(f"no checkpoint in {directory(workdir)}", file=sys.stderr)
        return 1
    print(f"{'step':>10}  {'parameters':>12}  sha256(params)")
    failed = 0
    for step in steps:
        try:
            verify_step(workdir, step)
        except CheckpointError as e:
            print(e, file=sys.stderr)
            failed += 1
            continue
        meta = tree_metadata(mngr, step)
        params_meta = meta["params"]
        abstract = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), params_meta)
        params = restore_partial(workdir, step, {"params": abstract})["params"]
        count, sha = digest(params)
        print(f"{step:>10}  {count:>12,}  {sha}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
