"""VideoMAE: reconstruct the pixels of hidden tubelets from the visible ones (Tong et al. 2022).

Only the visible tokens enter the encoder (90% tube masking by default); a narrow decoder fills
every position with a mask token, adds positions and predicts pixels. The loss is the MSE on
hidden tubelets against pixels normalised per tubelet and channel. With `mask="vjepa"` this is
SALT's stage 1: a pixel-reconstruction teacher under V-JEPA's multi-block masks.

VideoMAE V2's dual masking (Wang et al. 2023), `decoder_mask="running_cell"`: the decoder
gets mask tokens only at a running-cell subset of the positions (half of them at the
published `decoder_mask_ratio=0.5`) and the loss scores the hidden tokens among them, so the
decoder runs on K + N/2 tokens instead of N.
"""

import dataclasses
from typing import Literal

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry
from vrl.models import heads, layers
from vrl.models.vit import QkvBias
from vrl.objectives import base, masking


def tubelet_targets(
    video: jax.Array,
    patch: tuple[int, int, int],
    normalize: bool,
    eps_inside_sqrt: bool = True,
) -> jax.Array:
    """uint8 video [B, T, H, W, 3] -> per-tubelet pixel targets [B, N, pt*ph*pw*3] in [0, 1],
    optionally normalised per tubelet and channel (mean/std over the tubelet's pixels).

    The std is sqrt(var + 1e-6) by default; `eps_inside_sqrt=False` gives the published
    VideoMAE code's sqrt(var) + 1e-6 (unbiased var in both), which converted runs use.
    """
    x = layers.to_unit_float(video)
    pt, ph, pw = patch
    x = einops.rearrange(
        x, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw) c", pt=pt, ph=ph, pw=pw
    )
    if normalize:
        mean = x.mean(axis=-2, keepdims=True)
        var = x.var(axis=-2, keepdims=True, ddof=1)
        std = jnp.sqrt(var + 1e-6) if eps_inside_sqrt else jnp.sqrt(var) + 1e-6
        x = (x - mean) / std
    return einops.rearrange(x, "b n p c -> b n (p c)")


@registry.register("objective", "videomae")
@dataclasses.dataclass(frozen=True)
class VideoMAE(base.Objective):
    encoder: nn.Module
    mask: masking.MaskKind = "tube"
    mask_ratio: float = 0.9
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    norm_pix_loss: bool = True
    # Published-checkpoint parity (set by `python -m vrl.convert`; see heads.MAEDecoder and
    # tubelet_targets): the defaults are vrl's own recipe.
    norm_pix_eps_inside_sqrt: bool = True
    decoder_mlp_dim: int | None = None
    decoder_posemb: Literal["sincos", "sincos_1d"] = "sincos"
    decoder_qkv_bias: QkvBias = "qkv"
    decoder_ln_epsilon: float = 1e-6
    decoder_norm_epsilon: float | None = None
    decoder_embed_bias: bool = True
    # VideoMAE V2: the decoder reconstructs only the positions this mask keeps (None: all).
    decoder_mask: masking.DecoderMaskKind | None = None
    decoder_mask_ratio: float = 0.5

    @property
    def decoder(self) -> heads.MAEDecoder:
        pt, ph, pw = self.encoder.patch
        return heads.MAEDecoder(
            width=self.decoder_width,
            depth=self.decoder_depth,
            heads=self.decoder_heads,
            patch_dim=pt * ph * pw * 3,
            mlp_dim=self.decoder_mlp_dim,
            posemb=self.decoder_posemb,
            qkv_bias=self.decoder_qkv_bias,
            ln_epsilon=self.decoder_ln_epsilon,
            norm_epsilon=self.decoder_norm_epsilon,
            embed_bias=self.decoder_embed_bias,
            dtype=self.encoder.dtype,
        )

    def batch_ops(self, clip):
        grid = masking.token_grid(self.encoder, clip, "videomae")
        kwargs = {} if self.mask in ("multiblock", "vjepa") else {"ratio": self.mask_ratio}
        ops = masking.mask_ops(self.mask, grid, "config.objective.mask", **kwargs)
        if self.decoder_mask is not None:
            path = "config.objective.decoder_mask"
            ops += masking.decoder_mask_ops(self.decoder_mask, grid, path, self.decoder_mask_ratio)
        return ops

    def init(self, rng, batch):
        enc_rng, dec_rng = jax.random.split(rng)
        x = layers.to_model_input(batch["video"], self.encoder)
        keep_idx = masking.mask_sets(batch)[0].keep_idx
        enc_vars = self.encoder.init(enc_rng, x, train=False, keep_idx=keep_idx)
        visible = jnp.zeros((*keep_idx.shape, self.encoder.output_dim), self.encoder.dtype)
        dec_vars = self.decoder.init(dec_rng, visible, keep_idx, self._grid(x), train=False)
        return {"encoder": enc_vars["params"], "decoder": dec_vars["params"]}, {}

    def loss(self, params, extra, batch, rng, train):
        video = batch["video"]
        x = layers.to_model_input(video, self.encoder)
        targets = tubelet_targets(
            video, self.encoder.patch, self.norm_pix_loss, self.norm_pix_eps_inside_sqrt
        )
        grid = self._grid(x)
        decoded = masking.decoder_idx(batch)
        if decoded is not None:
            # VideoMAE V2: predictions, targets and scores at the decoded positions only.
            targets = jnp.take_along_axis(targets, decoded[..., None], axis=1)
        losses = []
        for i, (keep_idx, target_mask, _) in enumerate(masking.mask_sets(batch)):
            rngs = {"dropout": jax.random.fold_in(rng, i)}
            tokens = self.encoder.apply(
                {"params": params["encoder"]}, x, train=train, keep_idx=keep_idx, rngs=rngs
            )
            pred = self.decoder.apply(
                {"params": params["decoder"]},
                tokens,
                keep_idx,
                grid,
                train=train,
                target_idx=decoded,
                rngs=rngs,
            )
            if decoded is not None:
                target_mask = jnp.take_along_axis(target_mask, decoded, axis=1)
            per_token = jnp.mean((pred.astype(jnp.float32) - targets) ** 2, axis=-1)
            losses.append(masking.masked_mean(per_token, target_mask))
        loss = jnp.mean(jnp.stack(losses))
        return loss, ({"reconstruction_mse": loss}, extra)

    def _grid(self, x):
        return self.encoder.token_grid(*x.shape[1:4])
