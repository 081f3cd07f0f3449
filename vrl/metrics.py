"""Metric writing (JSONL + TensorBoard, process 0 only), progress lines and MFU.

Metric names: `train/*`, `perf/{step_time_s,clips_per_s,mfu}`, `time/{data_wait,ckpt,eval}`,
`data/*`, `<probe>/<metric>`. One JSON object per line in `WORKDIR/metrics.jsonl`: appended to
in a local workdir, rewritten whole at each write in a bucket (objects cannot be appended to).
"""

import io
import json
import logging as py_logging
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

from vrl import storage

# Dense bf16 peak FLOP/s per chip, by `device_kind` prefix (vendor data sheets).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device=None) -> float | None:
    """Peak bf16 FLOP/s of one device, or None when unknown (CPUs)."""
    kind = (device or jax.devices()[0]).device_kind
    for prefix, flops in PEAK_FLOPS.items():
        if kind.startswith(prefix):
            return flops
    return None


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function, per device, from XLA's cost analysis."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class _QuietLibraries(py_logging.Filter):
    """Drops INFO chatter of orbax / grain / jax internals; warnings and errors still pass."""

    NOISY = ("/orbax/", "/grain/", "/jax/_src/", "/jaxlib/", "xla_bridge", "/fsspec/", "/gcsfs/")

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(
            part in record.pathname for part in self.NOISY
        )


def quiet_library_logs() -> None:
    """Keeps the training log readable: our INFO lines, the libraries' warnings."""
    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())


METRICS, SUPERSEDED = "metrics.jsonl", "metrics.superseded.jsonl"


def drop_rows_after(workdir: str, step: int) -> list[int]:
    """Moves the rows of metrics.jsonl past `step` to metrics.superseded.jsonl.

    A run killed after its last checkpoint wrote metrics for steps that the resumed run trains
    again; without this, readers would get those steps twice. A line cut short by the kill is
    dropped too. Returns the steps of the rows moved (the file is rewritten only if any).
    """
    path = storage.path(workdir) / METRICS
    if not path.exists():
        return []
    keep, moved, torn, unterminated = [], [], 0, False
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
                row_step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            if row_step <= step:
                unterminated |= not line.endswith("\n")  # whole, but without its newline
                keep.append(line if line.endswith("\n") else line + "\n")
            else:
                moved.append(json.dumps({**row, "superseded_at_resume_from": step}) + "\n")
    if not moved and not torn and not unterminated:
        return []
    if moved:
        superseded = path.with_name(SUPERSEDED)
        earlier = superseded.read_text() if superseded.exists() else ""
        storage.write_atomic(superseded, earlier + "".join(moved))
    storage.write_atomic(path, "".join(keep))
    steps = [json.loads(line)["step"] for line in moved]
    if steps:
        which = f"step {steps[0]}" if len(set(steps)) == 1 else f"steps {min(steps)}-{max(steps)}"
        logging.warning(
            "%s: moved %d row%s past the restored step %d (%s, written before the restart) to %s.",
            path,
            len(steps),
            "" if len(steps) == 1 else "s",
            step,
            which,
            SUPERSEDED,
        )
    if torn:
        logging.warning("%s: dropped %d unreadable line(s) (cut short by a kill).", path, torn)
    return steps


class _BucketEventFile:
    """A TensorBoard event file in a bucket, written through vrl.storage.

    Objects take no appends, so each flush rewrites the whole file (event files of scalars stay
    small). tensorboardX's own gs:// writer uploads again when it is garbage collected, at
    interpreter exit, after the run is over; this one writes only when flushed.
    """

    def __init__(self, path: str):
        self.path = storage.path(path)
        self.buffer = io.BytesIO()
        self.written = 0

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self.written:
            storage.write_atomic(self.path, self.buffer.getvalue())
            self.written = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _BucketEventFiles:
    """tensorboardX's writer factory for a URL scheme (`record_writer.register_writer_factory`)."""

    def open(self, path: str) -> _BucketEventFile:
        return _BucketEventFile(path)

    def directory_check(self, path: str) -> None:
        pass  # buckets have no folders to create


class Writer:
    """Writes scalars to metrics.jsonl and TensorBoard; a no-op on processes other than 0.

    `resume_step`: the step the run (re)starts from; rows past it, written by a run that was
    stopped after its last checkpoint, are set aside (`drop_rows_after`) and TensorBoard
    hides their events (`purge_step`), so readers get each step once.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        self._rows: list[str] | None = None  # a bucket's metrics.jsonl, rewritten at each write
        if self.enabled:
            root = storage.path(workdir)
            root.mkdir(parents=True, exist_ok=True)
            dropped = drop_rows_after(workdir, resume_step) if resume_step is not None else []
            self._path = root / METRICS
            if storage.is_remote(root):
                self._rows = [self._path.read_text()] if self._path.exists() else []
            else:
                self._jsonl = self._path.open("a")
            from tensorboardX import SummaryWriter, record_writer  # noqa: PLC0415 - process 0 only, slow

            if storage.is_remote(root):
                scheme = str(root).split("://", 1)[0]
                record_writer.register_writer_factory(scheme, _BucketEventFiles())
            self._tb = SummaryWriter(
                str(root / "tensorboard"),
                purge_step=resume_step + 1 if dropped else None,
            )

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: _scalar(v) for k, v in metrics.items()}
        row = json.dumps({"step": int(step), **scalars}) + "\n"
        if self._rows is not None:
            self._rows.append(row)
            storage.write_atomic(self._path, "".join(self._rows))
        else:
            self._jsonl.write(row)
            self._jsonl.flush()
        for name, value in scalars.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb:
            if self._jsonl:
                self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = self._rows = None


def _scalar(value):
    value = np.asarray(value)
    if value.dtype.kind in "iub":
        return int(value)
    if value.dtype.kind == "f":
        return float(value)
    return value.item() if value.ndim == 0 else value.tolist()


class Progress:
    """Step rate, clips/s, MFU and ETA over the steps since the last report."""

    def __init__(self, total_steps: int, start_step: int, clips_per_step: int, flops_per_step=None):
        self.total_steps = total_steps
        self.clips_per_step = clips_per_step
        self.flops_per_step = flops_per_step  # per device
        self.peak = peak_flops()
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        step_time = (now - self._last_time) / steps
        self._last_step, self._last_time = step, now
        out = {"perf/step_time_s": step_time, "perf/clips_per_s": self.clips_per_step / step_time}
        if self.flops_per_step and self.peak:
            out["perf/mfu"] = self.flops_per_step / step_time / self.peak
        return out

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        eta = metrics.get("perf/step_time_s", 0.0) * (self.total_steps - step)
        parts = [f"step {step}/{self.total_steps}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.4f}")
        parts.append(f"{metrics.get('perf/clips_per_s', 0.0):.1f} clips/s")
        if "perf/mfu" in metrics:
            parts.append(f"MFU {100 * metrics['perf/mfu']:.1f}%")
        parts.append(f"ETA {format_seconds(eta)}")
        return " | ".join(parts)


class StepLog:
    """The loop's record of its steps: every `every` steps (and at the last) one row with the
    step's metrics, speed and the given counters, and one progress line."""

    def __init__(self, writer: Writer, progress: Progress, every: int):
        self.writer = writer
        self.progress = progress
        self.every = every

    def write(self, step: int, values: Mapping[str, float], *more: Mapping[str, float]) -> None:
        if step % self.every and step != self.progress.total_steps:
            return
        values = {k: v for k, v in values.items() if k != "train/finite"}
        values.update(self.progress.report(step))
        for extra in more:
            values.update(extra)
        self.writer.write(step, values)
        logging.info("%s", self.progress.line(step, values))


def log_parameters(state) -> None:
    """Parameter count and per-device bytes of a sharded train state."""

    def per_device_bytes(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            shard = x.sharding.shard_shape(x.shape)
            total += int(np.prod(shard)) * x.dtype.itemsize
        return total

    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    logging.info(
        "Parameters: %s; per device: params %.1f MB, optimizer %.1f MB, extra %.1f MB.",
        f"{count:,}",
        per_device_bytes(state.params) / 1e6,
        per_device_bytes(state.opt_state) / 1e6,
        per_device_bytes(state.extra) / 1e6,
    )


def log_memory(compiled) -> None:
    """The compiled step's memory per device, where the backend reports it."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        mem = None
    if mem is not None:
        logging.info(
            "Compiled step memory per device: arguments %.1f MB, outputs %.1f MB, temp %.1f MB.",
            mem.argument_size_in_bytes / 1e6,
            mem.output_size_in_bytes / 1e6,
            mem.temp_size_in_bytes / 1e6,
        )


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_table(title: str, header: list[str], rows: list[list]) -> str:
    """A fixed-width text table (quickstart and probe summaries)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [title, fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(x) for x in row]) for row in rows]
    return "\n".join(lines)


def log_table(title: str, header: list[str], rows: list[list]) -> str:
    """`format_table`, logged and returned."""
    text = format_table(title, header, rows)
    logging.info("\n%s", text)
    return text
