"""What every benchmark shares: timing vrl's train step, the machine line, docs/PERFORMANCE.md.

Each benchmark prints one table and records it in docs/PERFORMANCE.md under its own heading,
replacing the previous version of that section, with the machine, versions and date.
"""

import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from vrl import optim, sharding, state, storage
from vrl.durations import RunLength
from vrl.objectives import base

PERFORMANCE_MD = os.path.join(os.path.dirname(__file__), "..", "docs", "PERFORMANCE.md")


def machine() -> str:
    """One line: devices, CPU, cores, versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = jax.devices()[0]
    return (
        f"{jax.device_count()} x {device.device_kind} ({jax.default_backend()}); CPU {cpu}, "
        f"{os.cpu_count()} cores; python {platform.python_version()}, jax {jax.__version__}; "
        f"{time.strftime('%Y-%m-%d')}"
    )


def alternate(
    contenders: dict[str, Callable[[], int]], rounds: int, measure: Callable[[Callable], float]
) -> dict[str, float]:
    """Median of `measure(run)` for each contender, alternating them round by round, so that a
    noisy machine's slow spells fall on every contender alike."""
    values: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            values[name].append(measure(run))
    return {name: statistics.median(v) for name, v in values.items()}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def flop_ratio_verdict(speedup: float, flop_ratio: float, goal: float, rounds=()) -> str:
    """The sentence a speedup benchmark ends with: measured speedup against the FLOP ratio."""
    spread = f" (rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if len(rounds) else ""
    return (
        f"Analytic FLOP ratio {flop_ratio:.2f}x; measured speedup {speedup:.2f}x{spread} = "
        f"{speedup / flop_ratio:.2f} of the FLOP ratio (goal >= {goal}): "
        f"{'met' if speedup >= goal * flop_ratio else 'NOT met'}."
    )


def record(section: str, body: str, path: storage.PathLike = PERFORMANCE_MD) -> None:
    """Writes `## section` with `body` into docs/PERFORMANCE.md (or `path`, a local file or a
    bucket URL), replacing an older version; the file is rewritten whole (objects cannot be
    appended to)."""
    target = storage.path(path)
    text = target.read_text() if target.exists() else "# Performance\n"
    block = f"## {section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + block
    storage.write_atomic(target, text.rstrip() + "\n")


def make_batch(objective: base.Objective, clip: base.ClipSpec, batch_size: int, seed=0) -> dict:
    """Random uint8 clips, labels and the objective's own masks (made by its numpy ops)."""
    rng = np.random.default_rng(seed)
    ops = [op for _, op in objective.batch_ops(clip)]
    shape = (clip.frames, clip.height, clip.width, 3)
    shape = (clip.views, *shape) if clip.views > 1 else shape
    classes = getattr(objective, "num_classes", 1)
    examples = []
    for _ in range(batch_size):
        example = {"video": rng.integers(0, 256, shape, dtype=np.uint8)}
        for op in ops:
            example = op(example, rng)
        example[f"label/{getattr(objective, 'label_set', 'label')}"] = np.int32(
            rng.integers(0, classes)
        )
        examples.append(example)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def time_train_step(objective: base.Objective, batch: dict, steps: int, warmup: int = 2) -> dict:
    """Compiles vrl's train step (AdamW) for `batch` on all devices and times `steps` of it."""
    batch_size = len(batch["video"])
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    rules = sharding.RULES["data"]
    tx, lr = optim.make(
        optim.OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05),
        RunLength(steps_per_epoch=100, batch_size=batch_size, total_steps=1000),
    )
    init_batch = {k: v[:2] for k, v in batch.items()}
    train_state, shardings = state.init_state(objective, tx, init_batch, mesh, rules, seed=0)
    step_fn = state.make_train_step(objective, tx, lr, seed=0, accum=1, skip_nonfinite=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        device_batch = sharding.to_global(batch, mesh)
        t0 = time.perf_counter()
        compiled = state.compile_step(step_fn, train_state, shardings, device_batch)
        compile_s = time.perf_counter() - t0
        out = None
        for _ in range(warmup):
            train_state, out = compiled(train_state, device_batch)
        jax.block_until_ready(out)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            train_state, out = compiled(train_state, device_batch)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - t0)
    return {
        "step_s": float(np.median(times)),
        "compile_s": compile_s,
        "compiled": compiled,
        "loss": float(out["train/loss"]),
    }
