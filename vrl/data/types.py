"""The two types the data package shares with the objectives, in a module light enough for
both: models-only machines import the objectives without the data stack (grain, PyAV)."""

import dataclasses
from collections.abc import Callable

import numpy as np

# A numpy op the pipeline applies to each example: (example, rng) -> example.
Op = Callable[[dict, np.random.Generator], dict]


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Shape of one view of a clip as the model sees it; lets objectives size their masks."""

    frames: int
    height: int
    width: int
    views: int = 1
