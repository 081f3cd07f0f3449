"""Where does the quickstart's wall time go? Phases from the trainer's own `time/*` metrics.

    python -m benchmarks.end_to_end [--record]       # the README's quickstart command, timed
    python -m benchmarks.end_to_end --quick          # its :runlocal variant (seconds of training)

Runs `python -m vrl.main --config=configs/quickstart.py --workdir=WORKDIR` as a user would, in a
subprocess, times it from the outside, then reads WORKDIR/metrics.jsonl: the trainer records
`time/setup` (data pipeline, first batch, state init), `time/compile`, `time/steps` (the loop
minus its waits), `time/data_wait`, `time/ckpt` (time the loop was blocked by checkpoints) and
`time/eval` (the probes). What is left of the wall time is the interpreter start, imports, the
config checks and exit.
"""

import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import common

_QUICK = flags.DEFINE_bool("quick", False, "Run configs/quickstart.py:runlocal (a few steps).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: a new temporary one).")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("configs", "quickstart.py")
PHASES = (
    ("time/setup", "setup: data pipeline, first batch, state init"),
    ("time/compile", "compile the train step"),
    ("time/steps", "train steps (loop minus waits)"),
    ("time/data_wait", "waiting for data"),
    ("time/ckpt", "checkpoints (blocking)"),
    ("time/eval", "probes (features + linear probes)"),
)


def run_quickstart(workdir: str, quick: bool) -> tuple[float, float]:
    """Runs the quickstart into `workdir`: (wall seconds, peak RSS in MB of its largest process)."""
    config = CONFIG + (":runlocal" if quick else "")
    command = [sys.executable, "-m", "vrl.main", f"--config={config}", f"--workdir={workdir}"]
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def read_metrics(workdir: str) -> dict:
    """The last value of every metric in WORKDIR/metrics.jsonl, plus the step count."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} was not written: did the run reach its first step?")
    last, steps = {}, 0
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            steps = max(steps, record.get("step", 0))
            last.update(record)
    last["step"] = steps
    return last


def breakdown(wall: float, metrics: dict) -> list[list]:
    rows, accounted = [], 0.0
    for key, label in PHASES:
        value = metrics.get(key)
        if value is None:
            rows.append([label, key, "not recorded", ""])
            continue
        accounted += value
        rows.append([label, key, f"{value:.1f}", f"{100 * value / wall:.0f}%"])
    rest = wall - accounted
    rows.append(
        [
            "interpreter start, imports, config checks, exit",
            "(wall - phases)",
            f"{rest:.1f}",
            f"{100 * rest / wall:.0f}%",
        ]
    )
    rows.append(["**total (wall clock)**", "", f"**{wall:.1f}**", "100%"])
    return rows


def probe_results(workdir: str) -> list[list[str]]:
    """The top-1 of every probe the run wrote (WORKDIR/probe/*.json), by name."""
    rows = []
    for path in sorted(glob.glob(os.path.join(workdir, "probe", "*.json"))):
        with open(path) as f:
            rows.append([os.path.basename(path)[: -len(".json")], f"{json.load(f)['top1']:.1f}"])
    return rows


def main(argv):
    del argv
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="vrl_quickstart_")
    wall, peak_mb = run_quickstart(workdir, _QUICK.value)
    metrics = read_metrics(workdir)
    steps = metrics["step"]
    step_time = metrics.get("perf/step_time_s")
    clips = metrics.get("perf/clips_per_s")
    name = CONFIG + (":runlocal" if _QUICK.value else "")
    text = "\n".join(
        [
            f"`python -m vrl.main --config={name}`: {steps} steps, then linear probes; workdir "
            f"{workdir}. {common.machine()}",
            "",
            common.markdown_table(
                ["phase", "metric", "seconds", "share"], breakdown(wall, metrics)
            ),
            "",
            f"Last logged step time {step_time:.3f} s ({clips:.1f} clips/s). Peak resident memory "
            f"{peak_mb:.0f} MB (the largest process of the run)."
            if step_time and clips
            else "No step time was logged.",
            "",
            common.markdown_table(["probe", "top-1 (%)"], probe_results(workdir)),
        ]
    )
    print(text)
    if _RECORD.value:
        common.record("End to end quickstart (benchmarks/end_to_end.py)", text)


if __name__ == "__main__":
    app.run(main)
