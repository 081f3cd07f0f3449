"""Several sources read as one: VideoMix2M (Kinetics-710 + SSv2 + HowTo100M) and the like.

    data.source = {"name": "mixture",
                   "sources": ({"name": "tfds", "dataset": "kinetics710"},
                               {"name": "tfds", "dataset": "ssv2"},
                               {"name": "tfds", "dataset": "howto100m"}),
                   "weights": None}

Records are numbered part after part (the concatenation of the sources, in order), so the
mixture is an ordinary random-access source: Grain shuffles, shards by process and checkpoints
a position in it as in any other. How the training pipeline orders them (`vrl.data.pipeline`):

- `weights=None` (the default, and what V-JEPA's release does for VideoMix2M): one shuffle of
  all videos of all parts per epoch, each video once per epoch, so every part's share of the
  batches is its share of the videos (proportional to size). This is `VideoDataset` +
  `DistributedSampler` of facebookresearch/jepa with `datasets_weights` unset.
- `weights=(w_0, w_1, ...)`: `grain.MapDataset.mix` interleaves the parts, part k giving a
  w_k / sum(w) share of every stretch of examples; each part is reshuffled every time it has
  been read through, independently of the others (a small part repeats sooner than a big one).

Labels. Class indices of different datasets are not comparable (Kinetics' class 3 is not SSv2's
class 3), so a mixture keeps only the label sets that every part has with the same class
names (e.g. two shards of one dataset), and adds the label set `source`: the index of the part
a video comes from, named by `label_names["source"]` (the part's `dataset`, else its source
name). Pretraining objectives ignore labels; a probe of `source` tells which dataset a clip is
from. Record ids are prefixed with the part's name (`kinetics710:<id>`), unique across parts.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from vrl import config as config_lib
from vrl import registry
from vrl.data.sources import Source

PATH = "config.data.source"  # where a mixture is configured; errors name its keys from here
SOURCE_LABEL = "source"  # the label set holding each video's part index


@registry.register("source", "mixture")
@dataclasses.dataclass
class Mixture(Source):
    """Sources (`sources`, each a source config with its own `name`) read as one.

    `weights` None: every video equally likely (parts in proportion to their sizes); else one
    positive weight per source, each part's share of the examples. Every part reads `split`.
    """

    sources: tuple[dict, ...] = ()
    weights: tuple[float, ...] | None = None
    split: str = "train"

    def __post_init__(self):
        self.sources = tuple(dict(s) for s in self.sources)
        if not self.sources:
            raise config_lib.ConfigError(
                f"{PATH}.sources: empty mixture; list at least one source config, "
                '({"name": "tfds", "dataset": ...}, ...)'
            )
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(self.sources):
                raise config_lib.ConfigError(
                    f"{PATH}.weights: {len(self.weights)} weights for {len(self.sources)} "
                    "sources; give one per source, or None for proportional to size"
                )
            bad = [w for w in self.weights if not (math.isfinite(w) and w > 0)]
            if bad:
                raise config_lib.ConfigError(
                    f"{PATH}.weights: {bad[0]!r} is not allowed; allowed: finite numbers > 0 "
                    "(leave a source out rather than weighting it 0)"
                )
        for i, cfg in enumerate(self.sources):
            if cfg.get("name") == "mixture":
                raise config_lib.ConfigError(f"{PATH}.sources[{i}].name: a mixture in a mixture")
            if "split" in cfg:
                raise config_lib.ConfigError(
                    f"{PATH}.sources[{i}].split: every part reads the mixture's split; "
                    "remove it (set config.data.train_split / test_split)"
                )
        self._parts = [self._open(i, cfg) for i, cfg in enumerate(self.sources)]
        self._names = _part_names(self.sources)
        sizes = [len(p) for p in self._parts]
        empty = [self._names[i] for i, n in enumerate(sizes) if n == 0]
        if empty:
            raise config_lib.ConfigError(
                f"{PATH}.sources: {', '.join(empty)} has no videos in split {self.split!r}"
            )
        self._starts = np.cumsum([0, *sizes])
        self._labels = _common_label_sets([p.label_names for p in self._parts])
        if SOURCE_LABEL in self._labels:
            raise config_lib.ConfigError(
                f"{PATH}.sources: every part has a label set {SOURCE_LABEL!r}, "
                "the name the mixture gives its part index"
            )

    def _open(self, i: int, cfg: dict) -> Source:
        where = f"{PATH}.sources[{i}]"
        try:
            return config_lib.component("source", {**cfg, "split": self.split}, where)
        except config_lib.ConfigError:
            raise
        except (OSError, ValueError) as e:
            what = cfg.get("dataset") or cfg.get("root") or cfg.get("name", "?")
            raise config_lib.ConfigError(f"{where} ({what}, split {self.split!r}): {e}") from None

    # ---- what the pipeline needs -------------------------------------------------------

    @property
    def parts(self) -> list[tuple[int, int]]:
        """(start, stop) record indices of each part, in `sources` order."""
        return [(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:])]

    @property
    def names(self) -> list[str]:
        """Each part's name: its `dataset`, else its source name (made unique with `#i`)."""
        return list(self._names)

    def part_of(self, index: int) -> tuple[int, int]:
        """(part, index within the part) of record `index`."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"mixture: record {index} out of range [0, {len(self)})")
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return part, index - int(self._starts[part])

    # ---- Source ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, local = self.part_of(index)
        record = dict(self._parts[part][local])
        labels = record.get("labels") or {}
        record["labels"] = {
            **{s: labels[s] for s in self._labels if s in labels},
            SOURCE_LABEL: part,
        }
        record[SOURCE_LABEL] = part
        record["id"] = f"{self._names[part]}:{record.get('id', local)}"
        return record

    def decode(self, record: dict[str, Any], frame_indices: np.ndarray) -> np.ndarray:
        part = int(record[SOURCE_LABEL])
        own = {**record, "id": record["id"].removeprefix(f"{self._names[part]}:")}
        return self._parts[part].decode(own, frame_indices)

    @property
    def label_names(self) -> dict[str, list[str]]:
        return {**{s: list(n) for s, n in self._labels.items()}, SOURCE_LABEL: self.names}


def _part_names(cfgs: tuple[dict, ...]) -> list[str]:
    names = [str(c.get("dataset") or c.get("name")) for c in cfgs]
    return [f"{n}#{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _common_label_sets(label_names: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    """Label sets every part has with the same class names: the only comparable ones."""
    first, *rest = label_names
    return {
        s: list(names)
        for s, names in first.items()
        if all(list(other.get(s, ())) == list(names) for other in rest)
    }
