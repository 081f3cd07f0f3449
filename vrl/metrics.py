"""Metric writing (JSONL + TensorBoard, process 0 only), progress lines and MFU.

Metric names: `train/*`, `perf/{step_time_s,clips_per_s,mfu}`, `time/{data_wait,ckpt,eval}`,
`data/*`, `<probe>/<metric>`. One JSON object per line in `WORKDIR/metrics.jsonl`.
"""

import json
import logging as py_logging
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging

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

    NOISY = ("/orbax/", "/grain/", "/jax/_src/", "/jaxlib/", "xla_bridge")

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(
            part in record.pathname for part in self.NOISY
        )


def quiet_library_logs() -> None:
    """Keeps the training log readable: our INFO lines, the libraries' warnings."""
    for handler in py_logging.getLogger().handlers + py_logging.getLogger("absl").handlers:
        if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())


class Writer:
    """Writes scalars to metrics.jsonl and TensorBoard; a no-op on processes other than 0."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        scalars = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None


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


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def log_table(title: str, header: list[str], rows: list[list]) -> str:
    """A fixed-width text table, logged and returned (quickstart and probe summaries)."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [title, fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(x) for x in row]) for row in rows]
    text = "\n".join(lines)
    logging.info("\n%s", text)
    return text
