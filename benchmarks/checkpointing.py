"""How long does a checkpoint hold up training? Async save vs synchronous save, and restore speed.

    python -m benchmarks.checkpointing [--size=B] [--rounds=3] [--record]
    python -m benchmarks.checkpointing --tiny --rounds=1     # a quick check

The state is what training saves: a supervised ViT's parameters and AdamW moments (ViT-B: about
1 GB in float32), with the data iterator and the run's config, written by `vrl.checkpoint.save`
through the same Orbax manager the trainer uses. An async save blocks the loop only while the
arrays are copied off the device; a synchronous one until the files are written. Both are
timed in alternating rounds in one run, into two directories of the same file system, after one
untimed save each (a run's first save also starts Orbax's writers: reported on its own row).
Goal: the async save blocks for <= 10% of the synchronous save's time. Restore throughput is
the state's bytes over the time `vrl.checkpoint.restore_state` takes (strict restore of files
just written, so largely from the page cache).
"""

import os
import shutil
import tempfile
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import metrics, optim, sharding, state
from vrl.durations import RunLength
from vrl.models import vit
from vrl.objectives import base

_SIZE = flags.DEFINE_enum("size", "B", list(vit.SIZES), "ViT size of the saved state.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds of async and synchronous saves.")
_DIR = flags.DEFINE_string("dir", None, "Where to write (default: a temporary directory).")
_TINY = flags.DEFINE_bool("tiny", False, "A tiny ViT state: a quick check of the script.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

GOAL = 0.10
TINY_VIT = {"width": 32, "depth": 2, "heads": 2, "patch": (2, 8, 8)}


def train_state(model: dict):
    """(state, abstract state) of a supervised ViT with AdamW, laid out on all devices."""
    encoder = config_lib.component("model", {"name": "vit", **model}, "model", dtype=jnp.float32)
    objective = config_lib.component(
        "objective", {"name": "supervised", "num_classes": 400}, "objective", encoder=encoder
    )
    patch = encoder.patch
    init_batch = common.make_batch(objective, base.ClipSpec(*patch), 2)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    tx, _ = optim.make(
        optim.OptimConfig(name="adamw", weight_decay=0.05),
        RunLength(steps_per_epoch=100, batch_size=2, total_steps=1000),
    )
    train, shardings = state.init_state(
        objective, tx, init_batch, mesh, sharding.RULES["data"], seed=0
    )
    return train, state.abstract_state(shardings, train)


def data_iterator():
    """A Grain iterator standing in for the input pipeline (its state is saved too)."""
    iterator = iter(grain.MapDataset.range(1000).to_iter_dataset())
    next(iterator)
    return iterator


def state_bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def measure(model: dict, rounds: int, root: str) -> dict:
    train, abstract = train_state(model)
    size = state_bytes(train)
    iterator, meta = data_iterator(), {"config": {"model": model}, "init_batch": {}}
    managers = {
        mode: ckpt_lib.manager(
            os.path.join(root, mode), ckpt_lib.CheckpointConfig(keep=1, async_save=mode == "async")
        )
        for mode in ("async", "sync")
    }

    # Training saves new arrays every time; jax caches an array's host copy once made, so each
    # save gets a fresh copy of the state (made outside the timed region).
    fresh_copy = jax.jit(lambda tree: jax.tree.map(lambda x: x * 1, tree))

    def save(mode: str, step: int) -> tuple[float, float]:
        """(seconds the call blocked, seconds until the checkpoint was written)."""
        fresh = jax.block_until_ready(fresh_copy(train))
        start = time.perf_counter()
        ckpt_lib.save(managers[mode], step, fresh, iterator, meta, force=True)
        blocking = time.perf_counter() - start
        managers[mode].wait_until_finished()
        return blocking, time.perf_counter() - start

    # A run's first save also sets up Orbax's writers; it is reported apart, once per run.
    first = {mode: save(mode, 0) for mode in managers}
    times = {"async_blocking": [], "async_total": [], "sync": [], "restore": []}
    for i in range(rounds):
        step = i + 1
        for mode in ("async", "sync") if i % 2 == 0 else ("sync", "async"):
            blocking, total = save(mode, step)
            if mode == "async":
                times["async_blocking"].append(blocking)
                times["async_total"].append(total)
            else:
                times["sync"].append(total)
        start = time.perf_counter()
        restored = ckpt_lib.restore_state(managers["sync"], step, abstract)
        jax.block_until_ready(restored)
        times["restore"].append(time.perf_counter() - start)
        del restored
    for mngr in managers.values():
        mngr.close()
    ratios = [a / s for a, s in zip(times["async_blocking"], times["sync"])]
    medians = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "bytes": size,
        "ratio": float(np.median(ratios)),
        "ratios": ratios,
        "first": first,
        **medians,
    }


def main(argv):
    del argv
    metrics.quiet_library_logs()
    model = dict(TINY_VIT) if _TINY.value else {"size": _SIZE.value}
    root = _DIR.value or tempfile.mkdtemp(prefix="vrl_ckpt_bench_")
    try:
        r = measure(model, _ROUNDS.value, root)
    finally:
        if _DIR.value is None:
            shutil.rmtree(root, ignore_errors=True)
    mb = r["bytes"] / 1e6
    body = [
        ["synchronous save", f"{r['sync']:.3f}", f"{r['sync']:.3f}", "", f"{mb / r['sync']:.3g}"],
        [
            "async save",
            f"{r['async_blocking']:.3f}",
            f"{r['async_total']:.3f}",
            f"{r['ratio']:.3f} (rounds {', '.join(f'{x:.3f}' for x in r['ratios'])})",
            f"{mb / r['async_total']:.3g}",
        ],
        [
            "first async save of a run",
            f"{r['first']['async'][0]:.3f}",
            f"{r['first']['async'][1]:.3f}",
            f"{r['first']['async'][0] / r['sync']:.3f}",
            "",
        ],
        [
            "restore (strict)",
            f"{r['restore']:.3f}",
            f"{r['restore']:.3f}",
            "",
            f"{mb / r['restore']:.3g}",
        ],
    ]
    name = "tiny ViT" if _TINY.value else f"ViT-{_SIZE.value}"
    text = "\n".join(
        [
            f"Train state of a supervised {name} with AdamW ({mb:.0f} MB float32: parameters and "
            f"two moments), plus the data iterator and config; medians over {_ROUNDS.value} "
            f"alternating rounds. {common.machine()}",
            "",
            common.markdown_table(
                [
                    "operation",
                    "blocks training (s)",
                    "until written (s)",
                    "blocking / synchronous",
                    "MB/s",
                ],
                body,
            ),
            "",
            f"Async save blocks for {r['ratio']:.3f} of a synchronous save (goal <= {GOAL}): "
            f"{'met' if r['ratio'] <= GOAL else 'NOT met'}. Restore: {mb / r['restore']:.0f} MB/s.",
        ]
    )
    print(text)
    if _RECORD.value:
        common.record("Checkpointing (benchmarks/checkpointing.py)", text)


if __name__ == "__main__":
    app.run(main)
