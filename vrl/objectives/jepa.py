"""Masked latent prediction: V-JEPA (EMA target) and SALT (frozen teacher).

Both run the encoder on the context tokens of each mask type, let a narrow predictor fill in
every other position, and regress (L1) layer-normalised target features on the tokens the mask
type hides, averaged over mask types. They differ only in where targets come from:

  vjepa  an exponential moving average of the encoder itself, momentum 0.998 -> 1.0
         (Bardes et al. 2024)
  salt   a frozen teacher loaded from a stage-1 checkpoint (pixel reconstruction under the
         same masks: the `videomae` objective with mask="vjepa"); teacher and student sizes
         may differ; no EMA, no stop-gradient tricks
"""

import abc
import dataclasses
import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import registry, storage
from vrl.config import ConfigError, component
from vrl.models import heads, layers
from vrl.objectives import base, masking


def layer_norm_features(x: jax.Array) -> jax.Array:
    """Parameter-free layer norm over the feature axis (V-JEPA's target normalisation)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)


@dataclasses.dataclass(frozen=True)
class _LatentPrediction(base.Objective):
    """Shared by V-JEPA and SALT: masks, predictor, loss; subclasses supply the targets."""

    encoder: nn.Module
    predictor_width: int = 384
    predictor_depth: int = 12
    predictor_heads: int | None = 12  # None: the encoder's (V-JEPA; V-JEPA 2 uses 12)
    num_blocks: tuple[int, ...] = (8, 2)
    block_scale: tuple[float, ...] = (0.15, 0.7)
    block_aspect: tuple[float, float] = (0.75, 1.5)
    # Context size K and scored targets per mask type (see vrl.data.masks.multiblock_mask).
    # The reference (jepa src/masks/multiblock3d.py) cuts each clip's context and target
    # index lists to the minimum over its per-GPU batch (24 in configs/pretrain/vitl16.yaml),
    # keeping the first indices in t-major order. vrl's K is static: the expected batch
    # minimum for `keep_batch` clips (None: the `keep_quantile` quantile of the context size);
    # context_drop="tail" keeps the first K visible tokens ("random": K at random), and
    # `truncate_targets` scores the first K_pred target tokens (the expected batch minimum).
    keep_batch: int | None = 24
    keep_quantile: float = 0.1
    context_drop: Literal["tail", "random"] = "tail"
    truncate_targets: bool = True
    normalize_targets: bool = True
    # The reference predictor (jepa / vjepa2) attends over context + target tokens only:
    # "targets_only". vrl's original one fills every hidden position: "all_hidden".
    predictor_targets: Literal["all_hidden", "targets_only"] = "all_hidden"
    # Only with "targets_only": V-JEPA's "sincos_uniform" table, or "none" with RoPE (V-JEPA 2).
    predictor_posemb: Literal["sincos", "sincos_uniform", "none"] = "sincos"
    predictor_rope: bool = False
    predictor_zero_mask_tokens: bool = False  # the references start mask tokens at zero
    predictor_mask_tokens: int | None = None  # None: one per mask type (published: 2 or 10)

    name = "latent prediction"

    def predictor(self, out_dim: int) -> heads.JEPAPredictor:
        targets_only = self.predictor_targets == "targets_only"
        return heads.JEPAPredictor(
            width=self.predictor_width,
            depth=self.predictor_depth,
            heads=self.predictor_heads or self.encoder.dims[2],
            out_dim=out_dim,
            num_mask_types=self.predictor_mask_tokens or len(self.num_blocks),
            posemb=self.predictor_posemb,
            rope=self.predictor_rope,
            # The references build predictor blocks with the encoder's LayerNorm / qkv options.
            ln_epsilon=getattr(self.encoder, "ln_epsilon", 1e-6) if targets_only else 1e-6,
            qkv_bias=getattr(self.encoder, "qkv_bias", "qkv") if targets_only else "qkv",
            zero_mask_tokens=self.predictor_zero_mask_tokens,
            dtype=self.encoder.dtype,
        )

    def target_indices(self, masks: masking.MaskSet, num_tokens: int) -> jax.Array | None:
        """The tokens the "targets_only" predictor predicts, or None for "all_hidden".

        The mask op's `target_idx` where it writes one (a static count of scored tokens, as
        the reference's predictor sees); else the N - K tokens the context hides, scored
        ones first: those that are no target are predicted but carry no loss."""
        if self.predictor_targets == "all_hidden":
            return None
        if masks.target_idx is not None:
            return masks.target_idx
        keep_idx = masks.keep_idx
        batch, kept = keep_idx.shape
        hidden = (
            jnp.ones((batch, num_tokens), bool).at[jnp.arange(batch)[:, None], keep_idx].set(False)
        )
        order = jnp.where(masks.target_mask > 0, 0, 1) + jnp.where(hidden, 0, 2)
        return jnp.argsort(order, axis=1, stable=True)[:, : num_tokens - kept].astype(jnp.int32)

    def batch_ops(self, clip):
        grid = masking.token_grid(self.encoder, clip, self.name)
        return masking.mask_ops(
            "vjepa",
            grid,
            "config.objective",
            num_blocks=self.num_blocks,
            scale=self.block_scale,
            aspect=self.block_aspect,
            keep_batch=self.keep_batch,
            keep_quantile=self.keep_quantile,
            drop=self.context_drop,
            truncate_targets=self.truncate_targets,
        )

    def init_online(self, rng, batch, target_dim: int):
        enc_rng, pred_rng = jax.random.split(rng)
        x = layers.to_model_input(batch["video"], self.encoder)
        masks = masking.mask_sets(batch)[0]
        keep_idx = masks.keep_idx
        enc_vars = self.encoder.init(enc_rng, x, train=False, keep_idx=keep_idx)
        context = jnp.zeros((*keep_idx.shape, self.encoder.output_dim), self.encoder.dtype)
        grid = self.encoder.token_grid(*x.shape[1:4])
        target_idx = self.target_indices(masks, int(np.prod(grid)))
        pred_vars = self.predictor(target_dim).init(
            pred_rng, context, keep_idx, grid, mask_type=0, train=False, target_idx=target_idx
        )
        return {"encoder": enc_vars["params"], "predictor": pred_vars["params"]}

    @abc.abstractmethod
    def targets(self, extra, video) -> jax.Array:
        """Target features [B, N, D_target] of the full clip (no gradient), from the raw
        (uint8) `video`: the target network normalises it with its own pixel statistics."""

    def loss(self, params, extra, batch, rng, train):
        x = layers.to_model_input(batch["video"], self.encoder)
        targets = jax.lax.stop_gradient(self.targets(extra, batch["video"]))
        if self.normalize_targets:
            targets = layer_norm_features(targets)
        grid = self.encoder.token_grid(*x.shape[1:4])
        predictor = self.predictor(targets.shape[-1])
        losses = []
        for i, masks in enumerate(masking.mask_sets(batch)):
            keep_idx, target_mask = masks.keep_idx, masks.target_mask
            rngs = {"dropout": jax.random.fold_in(rng, i)}
            context = self.encoder.apply(
                {"params": params["encoder"]}, x, train=train, keep_idx=keep_idx, rngs=rngs
            )
            target_idx = self.target_indices(masks, targets.shape[1])
            pred = predictor.apply(
                {"params": params["predictor"]},
                context,
                keep_idx,
                grid,
                mask_type=i,
                train=train,
                rngs=rngs,
                target_idx=target_idx,
            )
            scored, weights = targets, target_mask
            if target_idx is not None:
                scored = jnp.take_along_axis(targets, target_idx[..., None], axis=1)
                weights = jnp.take_along_axis(target_mask, target_idx, axis=1)
            per_token = jnp.mean(jnp.abs(pred.astype(jnp.float32) - scored), axis=-1)
            losses.append(masking.masked_mean(per_token, weights))
        loss = jnp.mean(jnp.stack(losses))
        metrics = {f"l1_mask{i}": value for i, value in enumerate(losses)}
        return loss, (metrics, extra)


@registry.register("objective", "vjepa")
@dataclasses.dataclass(frozen=True)
class VJEPA(_LatentPrediction):
    ema_start: float = 0.998
    ema_end: float = 1.0
    # How long the momentum takes from ema_start to ema_end: one of steps, epochs or a fraction
    # of the run (see vrl/durations.py); the whole run by default. V-JEPA stretches its
    # schedules by 1.25: ema_fraction=1.25.
    ema_steps: int | None = None
    ema_epochs: float | None = None
    ema_fraction: float | None = None

    name = "vjepa"

    def for_training(self, length):
        return base.with_ema_horizon(self, length)

    def init(self, rng, batch):
        params = self.init_online(rng, batch, self.encoder.output_dim)
        # The target starts as an exact copy of the online encoder.
        return params, {"target": jax.tree.map(jnp.copy, params["encoder"])}

    def targets(self, extra, video):
        x = layers.to_model_input(video, self.encoder)
        return self.encoder.apply({"params": extra["target"]}, x, train=False)

    def momentum(self, step):
        horizon = max(self.ema_steps or 1, 1)
        frac = jnp.clip(step / horizon, 0.0, 1.0)
        return self.ema_start + (self.ema_end - self.ema_start) * frac

    def update_extra(self, extra, params, step):
        target = base.ema(extra["target"], params["encoder"], self.momentum(step))
        return {**extra, "target": target}

    def encoder_variables(self, params, extra, which="encoder"):
        if which == "target":
            return {"params": extra["target"]}
        return super().encoder_variables(params, extra, which)

    def encoders(self):
        return ("encoder", "target")


@registry.register("objective", "salt")
@dataclasses.dataclass(frozen=True)
class SALT(_LatentPrediction):
    """Stage 2: a student regresses a frozen teacher's latents (`teacher_checkpoint=WORKDIR`)."""

    teacher_checkpoint: str = ""
    teacher_step: int | None = None
    # The teacher's `config.model`; by default the one saved with its checkpoint
    # (`vrl.weights.build_objective` reads it there).
    teacher_model: dict | None = None

    name = "salt"

    def __post_init__(self):
        if not self.teacher_checkpoint:
            raise ConfigError(
                "config.objective.teacher_checkpoint: required; the workdir of a stage-1 run "
                "(videomae objective with mask='vjepa')"
            )
        try:  # a malformed URL is a config error now, not a failed read at start-up
            storage.path(self.teacher_checkpoint, "config.objective.teacher_checkpoint")
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None

    def external_models(self):
        if self.teacher_model is not None:
            return {}
        return {"teacher_model": self._teacher_run}

    @functools.cached_property
    def teacher(self) -> nn.Module:
        """The teacher's encoder module."""
        if self.teacher_model is None:
            raise ConfigError(
                "config.objective.teacher_model: unknown; build the objective with "
                "vrl.weights.build_objective, which reads it from the teacher's checkpoint"
            )
        return component(
            "model", self.teacher_model, "config.objective.teacher_model", dtype=self.encoder.dtype
        )

    def init(self, rng, batch):
        online_rng, teacher_rng = jax.random.split(rng)
        params = self.init_online(online_rng, batch, self.teacher.output_dim)
        x = layers.to_model_input(batch["video"], self.teacher)
        # Placeholder of the right shapes; `initial_weights` replaces it with the saved teacher.
        teacher = self.teacher.init(teacher_rng, x, train=False)
        return params, {"teacher": teacher}

    def initial_weights(self):
        return {"teacher": self._teacher_run}

    @property
    def _teacher_run(self) -> base.InitialWeights:
        key = "config.objective.teacher_checkpoint"
        return base.InitialWeights(self.teacher_checkpoint, self.teacher_step, key=key)

    def set_encoder_variables(self, params, extra, which, variables):
        if which == "teacher":
            return params, {**extra, "teacher": variables}
        return super().set_encoder_variables(params, extra, which, variables)

    def targets(self, extra, video):
        x = layers.to_model_input(video, self.teacher)
        return self.teacher.apply(extra["teacher"], x, train=False)

    def encoder_variables(self, params, extra, which="encoder"):
        if which == "teacher":
            return extra["teacher"]
        return super().encoder_variables(params, extra, which)

    def encoders(self):
        return ("encoder", "teacher")
