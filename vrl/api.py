"""Encoders for scripts and notebooks: load one from a run directory and embed videos.

enc = load_encoder("runs/quickstart")      # or a bucket: "gs://BUCKET/runs/quickstart"
clip_vectors = enc.embed(video_uint8)      # [B, T, H, W, 3] -> [B, D]
tokens = enc.tokens(video_uint8)           # [B, T, H, W, 3] -> [B, N, D]
feats, labels = extract_features(enc, {"source": {"name": "synthetic"}}, "test")

A facade over the probe layer (`vrl.probe.encoder`, `vrl.probe.features`) and `vrl.weights`.
"""

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline
from vrl.probe import encoder as encoder_lib
from vrl.probe import features

Encoder = encoder_lib.Encoder


def load_encoder(
    workdir: str,
    step: int | None = None,
    which: str = "encoder",
    batch_size: int = 32,
    *,
    overrides: Mapping | None = None,
) -> Encoder:
    """The encoder saved in `workdir` at `step` (latest by default), batched over all devices.

    `which` picks the parameters: "encoder" (the trained online encoder), "target" (V-JEPA's
    EMA copy), "teacher" (SALT), or "random" (the same architecture at its initialisation,
    the baseline every probe should beat). `overrides` is merged onto the saved run config
    (e.g. {"model": {"dtype": ...}}). Loading is strict: parameters whose names or shapes
    differ from what the config builds raise CheckpointError listing every difference.
    """
    return encoder_lib.load(workdir, step, which, batch_size, overrides)


def extract_features(
    encoder: Encoder,
    source_config: dict,
    split: str,
    *,
    pp: str | None = None,
    batch_size: int | None = None,
    kind: Literal["pooled", "tokens"] = "pooled",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features and labels {label set: [N]} of a whole split, in split order.

    kind "pooled": clip vectors [N, D] ([N, V, D] for a multi-view pp); "tokens": the token
    sequences [N, n_tokens, D] ([N, V, n_tokens, D]). `source_config` is a `config.data` dict
    (at least `source`), merged onto the encoder's training `config.data`; `pp` defaults to its
    `test_pp`.
    """
    data = {**encoder.config.get("data", {}), **source_config}
    return features.extract(encoder, data, split, pp=pp, batch_size=batch_size, kind=kind)


def load_clips(
    encoder: Encoder,
    source_config: dict,
    split: str,
    indices: Sequence[int],
    *,
    pp: str | None = None,
) -> np.ndarray:
    """uint8 clips [K, T, H, W, 3] (or [K, V, ...]) of examples `indices`, as probes see them."""
    data = {**encoder.config.get("data", {}), **source_config}
    return features.clips(data, split, indices, pp=pp)


def class_names(
    encoder: Encoder, source_config: dict | None = None, split: str | None = None
) -> dict[str, list[str]]:
    """{label set: class names} of a split (default: the encoder's training data, test split)."""
    data = {**encoder.config.get("data", {}), **(source_config or {})}
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    return dict(pipeline.make_source(cfg, split or cfg.test_split).label_names)
