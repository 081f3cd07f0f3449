"""The Grain input pipeline: source -> shuffle -> repeat -> per-process slice -> ops -> batch.

Ops are composed from a big_vision-style string, `"cvrl_clips(frames=16, stride=2)|flip|..."`.
Temporal ops (they choose frame indices) run first, then the source decodes only those frames,
then spatial ops, then mask ops. Everything random comes from Grain's per-index rng, and the
rng of an example depends on its *global* position, so a run on 2 processes sees exactly the
examples and augmentations of the same run on 1 process, and a restored iterator continues
exactly where it was saved.

A record that fails to decode is replaced by another one drawn deterministically from the same
rng, counted in `data/skipped` and named in `data/bad_ids`; `vrl.data.stats.DataStats` turns
those into metrics and stops the run once they exceed `config.data.max_skip_fraction`.

The trainer builds its data in two steps: `train_data` (source and ops built at config check
time) decodes example 0 once for the clip shape, which the objective needs to make its mask ops,
then `TrainData.iterator` makes the batches with those ops appended.
"""

import ast
import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from vrl import config as config_lib
from vrl import registry
from vrl.data import mixture, sources, workers
from vrl.data.decode import DecodeError
from vrl.data.types import ClipSpec, Op

# Keys that describe the pipeline itself; they never reach the device.
HOST_KEYS = ("data/skipped", "data/bad_ids", "id")
_MAX_REPLACEMENTS = 16


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: where clips come from and how they are made."""

    source: dict = dataclasses.field(default_factory=lambda: {"name": "synthetic"})
    train_split: str = "train"
    test_split: str = "test"
    train_pp: str = "uniform_clip(frames=16, stride=2)|random_resized_crop(size=112)|flip"
    test_pp: str = "center_clip(frames=16, stride=2)|resize_short(size=128)|center_crop(size=112)"
    batch_size: int = 64
    # Clips drawn from each decoded video per step (VideoMAE V2 / MAE-ST repeated sampling).
    repeated_samples: int = 1
    num_workers: int = 0
    prefetch: int = 2
    # Threads making batches ahead, up to `prefetch` (in each worker when num_workers > 0); 0:
    # one without workers, none in workers. Videos in a bucket want more: each read waits on
    # the network (benchmarks/remote_reads.py, docs/DATA.md "Data in a bucket").
    read_threads: int = 0
    # Stop when more than this fraction of decoded videos were unreadable (after 100 videos).
    max_skip_fraction: float = 0.05

    def __post_init__(self):
        config_lib.check_ranges(
            "config.data",
            self,
            batch_size=(">= 1", lambda v: v >= 1),
            repeated_samples=(">= 1", lambda v: v >= 1),
            num_workers=(">= 0", lambda v: v >= 0),
            prefetch=(">= 0", lambda v: v >= 0),
            read_threads=(">= 0", lambda v: v >= 0),
            max_skip_fraction=("in [0, 1]", lambda v: 0 <= v <= 1),
        )


def make_source(cfg: DataConfig, split: str) -> sources.Source:
    """The configured source for `split`.

    A source that cannot start (missing root or manifest, empty manifest, listed files missing,
    labels outside `classes`) raises ConfigError, so the trainer and the probes stop with one
    line instead of a traceback.
    """
    try:
        return config_lib.component("source", {**cfg.source, "split": split}, "config.data.source")
    except config_lib.ConfigError:
        raise
    except (OSError, ValueError) as e:
        name = cfg.source.get("name", "?")
        raise config_lib.ConfigError(f"config.data.source ({name}, split {split!r}): {e}") from None


def parse_pp(spec: str, path: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """`"a(x=1, y=(2, 3))|b"` -> [("a", {"x": 1, "y": (2, 3)}), ("b", {})]; errors name `path`."""
    ops = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        try:
            call = ast.parse(part if "(" in part else part + "()", mode="eval").body
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
                raise ValueError("expected name(key=value, ...)")
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError) as e:
            where = f"{path}: " if path else ""
            raise config_lib.ConfigError(f"{where}op {part!r}: cannot parse ({e})") from None
        ops.append((call.func.id, kwargs))
    return ops


def make_ops(spec: str, path: str) -> list[tuple[str, Op]]:
    """(stage, op) for each op of a pp string, validated against the registry; order checked."""
    out = []
    order = {"temporal": 0, "spatial": 1, "mask": 2}
    for name, kwargs in parse_pp(spec, path):
        try:
            factory = registry.get("transform", name)
        except registry.UnknownNameError as e:
            raise config_lib.ConfigError(f"{path}: {e}") from None
        try:
            op = config_lib.instantiate(factory, kwargs, f"{path}[{name}]")
        except config_lib.ConfigError:
            raise
        except ValueError as e:  # a factory rejecting its arguments
            raise config_lib.ConfigError(f"{path}[{name}]: {e}") from None
        stage = getattr(factory, "stage", "spatial")
        if out and order[stage] < order[out[-1][0]]:
            raise config_lib.ConfigError(
                f"{path}: {stage} op {name!r} after a {out[-1][0]} op; "
                "order is temporal ops, then spatial ops, then mask ops"
            )
        out.append((stage, op))
    if not any(stage == "temporal" for stage, _ in out):
        raise config_lib.ConfigError(f"{path}: needs a temporal op first (e.g. uniform_clip)")
    return out


class ExampleMaker:
    """record index + rng -> one training/eval example (or `repeats` stacked examples)."""

    def __init__(self, source: sources.Source, ops: Sequence[tuple[str, Op]], repeats: int = 1):
        self.source = source
        self.temporal = [op for stage, op in ops if stage == "temporal"]
        self.after = [op for stage, op in ops if stage != "temporal"]
        self.repeats = repeats
        self._warned: set[str] = set()

    def __call__(self, index: int, rng: np.random.Generator) -> dict:
        skipped, bad = 0, []
        index = int(index)
        for _ in range(_MAX_REPLACEMENTS + 1):
            record = self.source[index]
            try:
                examples = self.make(record, rng)
            except DecodeError as e:
                skipped += 1
                bad.append(str(record.get("id", index)))
                if bad[-1] not in self._warned:
                    self._warned.add(bad[-1])
                    logging.warning("Skipping unreadable video %s: %s", bad[-1], e)
                index = int(rng.integers(len(self.source)))
                continue
            # Counted once per decoded video (on its first repeat).
            for i, example in enumerate(examples):
                example["data/skipped"] = np.int32(skipped if i == 0 else 0)
                example["data/bad_ids"] = np.asarray(";".join(bad) if i == 0 else "")
            if self.repeats == 1:
                return examples[0]
            return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        raise DecodeError(
            f"{_MAX_REPLACEMENTS + 1} videos in a row failed to decode, last: {', '.join(bad[-5:])}"
        )

    def make(self, record: dict, rng: np.random.Generator) -> list[dict]:
        drafts = []
        for _ in range(self.repeats):
            draft = dict(record)
            for op in self.temporal:
                draft = op(draft, rng)
            drafts.append(draft)
        # One decode call for all repeats, so a video is opened and read once.
        indices = np.concatenate([d["frame_indices"] for d in drafts], axis=0)
        video = self.source.decode(record, indices)
        examples, start = [], 0
        for draft in drafts:
            views = draft["frame_indices"].shape[0]
            example = _public(draft)
            example["video"] = video[start : start + views]
            start += views
            for op in self.after:
                example = op(example, rng)
            examples.append(_finalize(example))
        return examples


def _public(draft: dict) -> dict:
    """Keeps what should travel on: labels, clip metadata and `temporal/*` records."""
    out = {"id": np.asarray(str(draft.get("id", "")))}
    for name, value in (draft.get("labels") or {}).items():
        out[f"label/{name}"] = np.asarray(value, np.int32)
    for key, value in draft.items():
        if key.startswith("temporal/"):
            out[key] = np.asarray(value)
    return out


def _finalize(example: dict) -> dict:
    """Drops the view axis of single-view clips: video [T, H, W, 3], else [V, T, H, W, 3]."""
    video = example["video"]
    if video.shape[0] == 1:
        example["video"] = video[0]
    return example


class _ProcessBlocks(grain.MapDataset):
    """This process's part of each global batch, so N processes see what 1 process would."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._local = global_batch // count
        self._global = global_batch
        self._offset = index * self._local

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, within = divmod(index, self._local)
        return self._parent[step * self._global + self._offset + within]


@dataclasses.dataclass(frozen=True)
class TrainData:
    """A run's training data, built once: what the trainer sizes itself by (the clip shape, the
    number of videos, the label names) and, once the objective has chosen its mask ops for
    that clip, the batches (`iterator`)."""

    cfg: DataConfig
    source: sources.Source
    ops: list[tuple[str, Op]]
    clip: ClipSpec
    num_examples: int
    label_names: dict[str, list[str]]

    def iterator(
        self,
        *,
        seed: int,
        process_index: int,
        process_count: int,
        extra_ops: Sequence[tuple[str, Op]] = (),
    ) -> grain.IterDataset:
        """Infinite, shuffled, augmented batches of `batch_size // process_count` examples;
        `extra_ops` (the objective's mask ops) run after the train ops."""
        examples = self.examples(seed, extra_ops)
        return _batches(self.cfg, examples, process_index, process_count)

    def examples(self, seed: int, extra_ops: Sequence[tuple[str, Op]] = ()) -> grain.MapDataset:
        """Every training example in the order of the global batches: element i is the i-th
        video the run draws (its `repeated_samples` clips stacked), whatever the process count."""
        return _examples(self.cfg, self.source, [*self.ops, *extra_ops], seed)


def train_data(
    cfg: DataConfig,
    source: sources.Source | None = None,
    ops: Sequence[tuple[str, Op]] | None = None,
) -> TrainData:
    """The training data of `source` (default: the config's train split) through the train
    `ops` (default: `make_ops` of its train_pp).

    Decodes example 0, once: its shape is the clip spec, and its window is checked against the
    videos (`check_clip_length`).
    """
    source = source if source is not None else make_source(cfg, cfg.train_split)
    ops = ops if ops is not None else make_ops(cfg.train_pp, "config.data.train_pp")
    example = ExampleMaker(source, ops)(0, np.random.default_rng(0))
    clip = clip_spec(example)
    check_clip_length(source, example, clip.frames)
    return TrainData(cfg, source, list(ops), clip, len(source), source.label_names)


def clip_spec(example: dict) -> ClipSpec:
    """Shape of the clips an example holds: video [T, H, W, 3] or [V, T, H, W, 3]."""
    video = example["video"]
    views = video.shape[0] if video.ndim == 5 else 1
    return ClipSpec(
        frames=video.shape[-4], height=video.shape[-3], width=video.shape[-2], views=views
    )


def check_clip_length(source: sources.Source, example: dict, frames: int, samples: int = 8) -> None:
    """Refuses clips longer than every video checked (a few spread over the source).

    Short videos are looped or clamped by design, but a clip longer than all of them means
    every clip repeats frames: almost surely frames x stride set for another dataset.
    """
    ones = np.ones(1)
    step = (
        np.asarray(example.get("temporal/stride", ones), np.float64)
        * np.asarray(example.get("temporal/tempo", ones), np.float64)
        * np.asarray(example.get("temporal/skip", ones), np.float64)
    )
    span = int(np.floor((frames - 1) * float(np.max(step)))) + 1
    indices = np.unique(np.linspace(0, len(source) - 1, min(samples, len(source))).astype(int))
    records = [source[int(i)] for i in indices]
    lengths = [int(r["num_frames"]) for r in records if "error" not in r]  # readable ones
    if lengths and span > max(lengths):
        raise config_lib.ConfigError(
            f"config.data.train_pp: a clip spans {span} frames ({frames} frames, "
            f"{float(np.max(step)):g} apart), longer than every video checked in "
            f"config.data.source (at most {max(lengths)} frames in {len(lengths)} videos); "
            "use fewer frames or a smaller stride"
        )


def _examples(
    cfg: DataConfig, source: sources.Source, ops: Sequence[tuple[str, Op]], seed: int
) -> grain.MapDataset:
    maker = ExampleMaker(source, ops, cfg.repeated_samples)
    return record_order(source, seed).random_map(maker)


def record_order(source: sources.Source, seed: int) -> grain.MapDataset:
    """The record index of every video a training run draws, in order (infinite).

    One shuffle of the whole source per epoch (`_ShuffledEpochs`); an unweighted mixture is
    shuffled so too, as one source. A weighted mixture is `grain.MapDataset.mix` of its parts,
    each reshuffled every pass over it (its own seed), part k giving a weights[k] / sum(weights)
    share of every stretch of examples. Element i depends only on (seed, i) either way, which
    is what process slicing and resuming rely on.
    """
    if not isinstance(source, mixture.Mixture) or source.weights is None:
        return _ShuffledEpochs(grain.MapDataset.range(len(source)).seed(seed), seed)
    parts = []
    for k, (start, stop) in enumerate(source.parts):
        part_seed = int(np.random.SeedSequence((seed, k)).generate_state(1)[0])
        parts.append(_ShuffledEpochs(grain.MapDataset.range(start, stop), part_seed))
    return grain.MapDataset.mix(parts, source.weights).seed(seed)


def _batches(
    cfg: DataConfig, examples: grain.MapDataset, process_index: int, process_count: int
) -> grain.IterDataset:
    """This process's part of each global batch of `examples` (see `_ProcessBlocks`)."""
    if cfg.batch_size % (process_count * cfg.repeated_samples):
        raise config_lib.ConfigError(
            f"config.data.batch_size={cfg.batch_size}: must divide by processes x "
            f"repeated_samples = {process_count * cfg.repeated_samples}"
        )
    videos_per_batch = cfg.batch_size // cfg.repeated_samples
    ds = _ProcessBlocks(examples, videos_per_batch, process_index, process_count)
    ds = ds.batch(videos_per_batch // process_count, drop_remainder=True)
    if cfg.repeated_samples > 1:
        ds = ds.map(_merge_repeats)
    return _to_iter(ds, cfg)


class _ShuffledEpochs(grain.MapDataset):
    """The parent's elements forever, in a fresh random order every epoch.

    What `shuffle().repeat(None)` does, with one numpy permutation per epoch instead of Grain's
    per-element `index_shuffle`, which costs milliseconds per element on small datasets
    (12 ms at 2 videos, 3 ms at 10; measured by benchmarks/data_pipeline.py), as much as
    decoding a small clip. The permutation depends only on (seed, epoch), so every process
    and every worker agrees on it.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._size = len(parent)
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation), the latest

    def __len__(self) -> int:
        return sys.maxsize if self._size else 0

    def __str__(self) -> str:
        return f"ShuffledEpochs(size={self._size}, seed={self._seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(int(index), self._size)
        order = self._order
        if order is None or order[0] != epoch:
            order = (epoch, np.random.default_rng((self._seed, epoch)).permutation(self._size))
            self._order = order
        return self._parent[int(order[1][position])]


def eval_dataset(
    cfg: DataConfig,
    split: str,
    *,
    batch_size: int,
    pp: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
) -> tuple[grain.IterDataset, int]:
    """One pass over a split in order (padded to full batches; `valid` marks real examples)."""
    source = make_source(cfg, split)
    ops = make_ops(pp if pp is not None else cfg.test_pp, "config.data.test_pp")
    maker = ExampleMaker(source, ops)
    total = len(source)
    padded = -(-total // batch_size) * batch_size
    ds = (
        grain.MapDataset.range(padded)
        .seed(seed)
        .random_map(functools.partial(_padded_example, maker=maker, total=total))
    )
    ds = _ProcessBlocks(ds, batch_size, process_index, process_count)
    ds = ds.batch(batch_size // process_count, drop_remainder=True)
    return _to_iter(ds, cfg), total


def _padded_example(index: int, rng: np.random.Generator, *, maker: ExampleMaker, total: int):
    example = maker(min(index, total - 1), rng)
    example["valid"] = np.asarray(index < total)
    return example


def _merge_repeats(batch: dict) -> dict:
    return {k: v.reshape((-1, *v.shape[2:])) for k, v in batch.items()}


def _to_iter(ds: grain.MapDataset, cfg: DataConfig) -> grain.IterDataset:
    threads = 0  # prefetch=0: each batch is made when it is asked for
    if cfg.prefetch > 0:
        threads = cfg.read_threads or (1 if cfg.num_workers == 0 else 0)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=cfg.prefetch)
    it = ds.to_iter_dataset(options)
    if cfg.num_workers > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=cfg.num_workers),
            worker_init_fn=workers.init_fn(),  # workers end with this process, even SIGKILLed
        )
    return it


def split_host_keys(batch: dict) -> tuple[dict, dict]:
    """(device part, host part): strings and pipeline bookkeeping stay on the host."""
    host = {k: batch[k] for k in batch if k in HOST_KEYS}
    device = {k: v for k, v in batch.items() if k not in HOST_KEYS}
    return device, host
