"""Counting the videos the pipeline could not decode, from the host keys of each batch."""

import numpy as np

from vrl.data.decode import DecodeError


class DataStats:
    """Counts unreadable videos and stops the run when they exceed the allowed fraction."""

    def __init__(self, max_fraction: float, repeats: int = 1):
        self.max_fraction = max_fraction
        self.repeats = repeats  # clips per decoded video (repeated sampling)
        self.seen = 0
        self.skipped = 0
        self.bad: dict[str, None] = {}

    def update(self, host: dict) -> None:
        """Adds a batch's `data/skipped` and `data/bad_ids` (`pipeline.split_host_keys`)."""
        skipped = host.get("data/skipped")
        if skipped is None:
            return
        self.seen += int(np.size(skipped)) // self.repeats + int(np.sum(skipped))
        self.skipped += int(np.sum(skipped))
        for ids in np.ravel(host.get("data/bad_ids", [])):
            for vid in filter(None, str(ids).split(";")):
                self.bad.setdefault(vid)
        if self.seen >= 100 and self.skipped > self.max_fraction * self.seen:
            listed = ", ".join(list(self.bad)[:20])
            raise DecodeError(
                f"{self.skipped} of {self.seen} videos were unreadable, more than "
                f"config.data.max_skip_fraction={self.max_fraction}; bad files: {listed}"
            )

    def metrics(self) -> dict[str, float]:
        return {"data/skipped": self.skipped, "data/seen": self.seen}
