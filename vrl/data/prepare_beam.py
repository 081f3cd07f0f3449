"""`vrl.data.prepare --runner=beam`: the transcoding as an Apache Beam pipeline.

Beam workers run the local runner's per-input step (`prepare._run_task`): each finished input
goes into the work directory's item cache, which is a bucket when workers share no disk
(Dataflow), and each outcome (transcoded, cached, failed with its reason) is counted with Beam
metrics and collected into one results file there. Failed inputs never fail the pipeline.
The launching process then writes the dataset exactly as the local runner does, with every
input already in the cache: the same TFDS builder, shards, metadata, failed_<split>.csv and
bucket upload, so both runners give the same examples in the same records.

Why not TFDS's Beam builder or ArrayRecord's Beam sink: TFDS finalises a dataset in a bucket
only through TensorFlow (not a vrl dependency; see `vrl.data.prepare`) and its Beam writer
is not known to work without it; `array_record.beam`'s sink writes local paths only and its
pipelines module imports TensorFlow. Writing the shards is I/O (reading each cached item
once); the transcoding is the CPU work that the cluster spreads.

Workers import vrl: on Dataflow give them the code and its requirements, e.g.
`--sdk_container_image` built from requirements.txt, or `--setup_file`.
"""

import json
import os
import pickle
import shlex
import uuid
from collections.abc import Sequence

from vrl import storage

_NAMESPACE = "vrl.data.prepare"
# Named in --dry_run's Dataflow check: without them a Dataflow job cannot start.
_DATAFLOW_REQUIRED = ("project", "region", "temp_location")
_TASKS_PER_FILE = 1000


def _beam():
    try:
        import apache_beam  # noqa: PLC0415 - optional: only this runner needs it
    except ImportError:
        raise ImportError(
            "--runner=beam needs Apache Beam: pip install -r requirements-dev.txt "
            "(or pip install apache-beam)"
        ) from None
    return apache_beam


def pipeline_options(beam_options: str):
    """PipelineOptions from the --beam_options string; an unknown option is an error."""
    _beam()
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415 - as _beam

    options = PipelineOptions(shlex.split(beam_options))
    known = options.get_all_options()
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    if unknown:
        raise ValueError(f"--beam_options: unknown option(s) {', '.join(unknown)}")
    return options


def check_dataflow(beam_options: str) -> None:
    """A DataflowRunner job names its project, region and a gs:// temp_location."""
    options = pipeline_options(beam_options).get_all_options()
    if options.get("runner") != "DataflowRunner":
        return
    missing = [f"--{key}" for key in _DATAFLOW_REQUIRED if not options.get(key)]
    if missing:
        raise ValueError(f"--beam_options: DataflowRunner needs {', '.join(missing)}")
    if not str(options["temp_location"]).startswith("gs://"):
        raise ValueError(
            f"--beam_options: --temp_location={options['temp_location']}: DataflowRunner "
            "needs a gs:// folder"
        )


def dry_run(argv: Sequence[str], beam_options: str) -> str:
    """The command that runs this preparation, one flag a line (what --dry_run prints)."""
    check_dataflow(beam_options)
    flags, args = [], iter(argv[1:])
    for arg in args:
        name = arg.split("=", 1)[0].lstrip("-")
        if name == "beam_options" and "=" not in arg:
            next(args, None)  # "--beam_options VALUE"
        elif name not in ("beam_options", "dry_run"):
            flags.append(arg)
    flags.append(f"--beam_options={beam_options}")
    lines = ["python -m vrl.data.prepare", *(shlex.quote(f) for f in flags)]
    return " \\\n    ".join(lines) + "\n"


class _Transcode:
    """One input -> (split, id, status, reason), counted by status; picklable for Beam.

    `run_task(task) -> (task, status, reason)` is the local runner's step, passed in (by
    reference to its module) so that this module does not import the runner."""

    def __init__(self, run_task):
        beam = _beam()
        self._run_task = run_task
        self._counters = {
            status: beam.metrics.Metrics.counter(_NAMESPACE, status)
            for status in ("transcoded", "cached", "failed")
        }

    def __call__(self, element):
        split, task = element
        task, status, reason = self._run_task(task)
        self._counters[status].inc()
        return split, task.id, status, reason


def _write_results(results: list, path: str) -> None:
    storage.write_atomic(path, json.dumps(sorted(results)).encode("utf-8"))


def _read_tasks(path: str) -> list:
    return pickle.loads(storage.path(path).read_bytes())


def transcode(tasks: dict, work_dir: str, beam_options: str, run_task) -> dict:
    """Runs every split's tasks through `run_task` in one Beam pipeline;
    {(split, id): (status, reason)}.

    The tasks reach the workers as files of _TASKS_PER_FILE in the work dir: a pipeline that
    held a million of them in its graph would be too large to submit to Dataflow.
    """
    beam = _beam()
    folder = os.path.join(work_dir, "beam", uuid.uuid4().hex)
    elements = [(split, task) for split, split_tasks in tasks.items() for task in split_tasks]
    files = []
    for start in range(0, len(elements), _TASKS_PER_FILE):
        files.append(os.path.join(folder, f"tasks-{len(files):05d}.pkl"))
        chunk = elements[start : start + _TASKS_PER_FILE]
        storage.write_atomic(files[-1], pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
    results_path = os.path.join(folder, "results.json")
    try:
        with beam.Pipeline(options=pipeline_options(beam_options)) as pipeline:
            _ = (
                pipeline
                | "Inputs" >> beam.Create(files)
                | "Read" >> beam.FlatMap(_read_tasks)
                | "Spread" >> beam.Reshuffle()  # over every worker, not the file's reader
                | "Transcode" >> beam.Map(_Transcode(run_task))
                | "Collect" >> beam.combiners.ToList()
                | "Write" >> beam.Map(_write_results, results_path)
            )
        results = json.loads(storage.path(results_path).read_text(encoding="utf-8"))
    finally:
        storage.remove(folder)
    return {(split, id_): (status, reason) for split, id_, status, reason in results}
