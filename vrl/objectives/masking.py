"""Masks for the masked objectives: which pipeline op makes them, and reading them back.

Every masked objective sees its masks as *mask sets*: pairs of `keep_idx` [B, K] (tokens the
encoder sees) and `target_mask` [B, N] (tokens the loss scores). Tube/random/motion/noise
masks give one set (target = hidden); V-JEPA's multi-block masks give one set per mask type.
A decoder mask (VideoMAE V2's running cell) is separate: `keep_idx/decoder` [B, M], the
positions a decoder reconstructs.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from vrl import config as config_lib
from vrl import registry
from vrl.models.vit import ViT
from vrl.objectives.base import ClipSpec

MaskKind = Literal["tube", "random", "motion", "motion_guided", "noise", "multiblock", "vjepa"]
DecoderMaskKind = Literal["running_cell"]

_FACTORIES = {
    "tube": "tube_mask",
    "random": "random_mask",
    "motion": "motion_mask",
    "motion_guided": "motion_mask",
    "noise": "noise_mask",
    "multiblock": "multiblock_mask",
    "vjepa": "vjepa_masks",
}
# MGMAE keeps a fixed number of tokens per temporal slot (its per-frame top-k).
_KIND_OPTIONS = {"motion_guided": {"per_slot": True}}
_DECODER_FACTORIES = {"running_cell": "running_cell_mask"}


def mask_ops(kind: str, grid: tuple[int, int, int], path: str, **kwargs) -> list:
    """[("mask", op)] making `kind` masks for a token grid."""
    return _ops(_FACTORIES[kind], grid, path, {**_KIND_OPTIONS.get(kind, {}), **kwargs})


def decoder_mask_ops(kind: str, grid: tuple[int, int, int], path: str, ratio: float) -> list:
    """[("mask", op)] writing `keep_idx/decoder`: the positions a decoder reconstructs."""
    return _ops(_DECODER_FACTORIES[kind], grid, path, {"ratio": ratio, "suffix": "/decoder"})


def decoder_idx(batch: dict) -> jax.Array | None:
    """[B, M] positions the decoder reconstructs, or None where every position is decoded."""
    return batch.get("keep_idx/decoder")


def _ops(name: str, grid: tuple[int, int, int], path: str, kwargs: dict) -> list:
    factory = registry.get("transform", name)
    try:
        return [("mask", config_lib.instantiate(factory, kwargs, path, grid=tuple(grid)))]
    except config_lib.ConfigError:
        raise
    except ValueError as e:
        raise config_lib.ConfigError(f"{path}: {e}") from None


def token_grid(encoder, clip: ClipSpec, objective: str) -> tuple[int, int, int]:
    if clip.views != 1:
        raise config_lib.ConfigError(
            f"config.objective ({objective}) takes one clip per video, the train ops make "
            f"{clip.views} views; use uniform_clip(...) in config.data.train_pp"
        )
    if not isinstance(encoder, ViT):
        raise config_lib.ConfigError(
            f"config.objective ({objective}) needs an encoder that takes keep_idx (vit); "
            f"got config.model.name={_registered_name(encoder)!r}"
        )
    return tuple(encoder.token_grid(clip.frames, clip.height, clip.width))


class MaskSet(NamedTuple):
    keep_idx: jax.Array  # [B, K] visible tokens
    target_mask: jax.Array  # float [B, N], 1 = scored
    target_idx: jax.Array | None  # [B, P] the scored tokens, where their count is static


def mask_sets(batch: dict) -> list[MaskSet]:
    """One MaskSet per mask type, in mask-type order."""
    if "keep_idx" in batch:
        target = batch.get("target_mask", batch["mask"])
        return [MaskSet(batch["keep_idx"], target.astype(jnp.float32), batch.get("target_idx"))]
    sets, i = [], 0
    while f"keep_idx/{i}" in batch:
        target = batch[f"target_mask/{i}"].astype(jnp.float32)
        sets.append(MaskSet(batch[f"keep_idx/{i}"], target, batch.get(f"target_idx/{i}")))
        i += 1
    if not sets:
        raise KeyError(f"batch has no masks (keys: {', '.join(sorted(batch))})")
    return sets


def masked_mean(per_token: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean of per-token losses [B, N] over the tokens with weight 1."""
    return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _registered_name(encoder) -> str:
    for name in registry.names("model"):
        if isinstance(encoder, registry.get("model", name)):
            return name
    return type(encoder).__name__
