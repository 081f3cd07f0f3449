"""Heads that objectives and probes put on top of an encoder.

  ProjectionMLP    CVRL's projection head (Dense + BN + ReLU stack, then a linear output)
  MAEDecoder       VideoMAE's pixel decoder over every token position
  JEPAPredictor    V-JEPA / SALT predictor: context tokens + mask tokens -> target features
  AttentivePooler  V-JEPA's probe pooling: learned queries cross-attend over frozen tokens

The decoder and predictor share one idea: scatter the encoder's kept tokens back to their grid
positions, fill every other position with a learned mask token, add fixed 3-D sine-cosine
positions and run narrow transformer blocks.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl.models import layers
from vrl.models.vit import Attention, Mlp, block_class, sincos_posemb_3d

TOKEN_AXES = ("batch", "length", "act_embed")


class ProjectionMLP(nn.Module):
    """num_hidden x (Dense + BatchNorm + ReLU), then Dense(out)."""

    hidden: int = 2048
    num_hidden: int = 3
    out: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # Alternate the logical names so no kernel names one axis twice.
        axes = ("embed", "mlp")
        for i in range(self.num_hidden):
            x = layers.dense(
                self.hidden, axes, dtype=self.dtype, use_bias=False, name=f"hidden{i}"
            )(x)
            x = layers.batch_norm(train=train, axis=axes[1], dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.relu(x)
            axes = axes[::-1]
        return layers.dense(self.out, axes, dtype=self.dtype, name="output")(x)


def scatter_tokens(
    tokens: jax.Array, keep_idx: jax.Array, fill: jax.Array, num_tokens: int
) -> jax.Array:
    """tokens [B, K, D] placed at keep_idx [B, K] of a [B, num_tokens, D] sequence of `fill` [D]."""
    batch, kept, dim = tokens.shape
    if keep_idx.shape != (batch, kept):
        raise ValueError(f"keep_idx shape {keep_idx.shape} does not match tokens {tokens.shape}")
    base = jnp.broadcast_to(fill.astype(tokens.dtype), (batch, num_tokens, dim))
    return jax.vmap(lambda b, i, t: b.at[i].set(t))(base, keep_idx, tokens)


class _MaskedSequenceTransformer(nn.Module):
    """Embed kept tokens, scatter them among mask tokens, add positions, run blocks, norm."""

    width: int
    depth: int
    heads: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, keep_idx, grid, mask_token, train: bool) -> jax.Array:
        t, h, w = grid
        # Encoder width -> head width ("mlp" on the input side so no kernel repeats a name).
        x = layers.dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="embed")(tokens)
        x = scatter_tokens(x, keep_idx, mask_token, t * h * w)
        x = x + jnp.asarray(sincos_posemb_3d(grid, self.width), x.dtype)
        x = layers.constrain(x, TOKEN_AXES)
        block = block_class()
        for i in range(self.depth):
            x = block(self.heads, self.mlp_ratio * self.width, dtype=self.dtype, name=f"block{i}")(
                x, train
            )
        return layers.layer_norm(dtype=self.dtype, name="norm")(x)


def _mask_token_param(module: nn.Module, name: str, shape: tuple[int, ...]) -> jax.Array:
    axes = ("unsharded",) * (len(shape) - 1) + ("embed",)
    return module.param(name, layers.partitioned(nn.initializers.normal(0.02), axes), shape)


class MAEDecoder(nn.Module):
    """VideoMAE decoder: predictions [B, N, patch_dim] of every tubelet's pixels."""

    width: int = 384
    depth: int = 4
    heads: int = 6
    patch_dim: int = 2 * 16 * 16 * 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, visible_tokens, keep_idx, grid, *, train: bool) -> jax.Array:
        mask_token = _mask_token_param(self, "mask_token", (self.width,))
        x = _MaskedSequenceTransformer(
            self.width, self.depth, self.heads, dtype=self.dtype, name="transformer"
        )(visible_tokens, keep_idx, tuple(grid), mask_token, train)
        return layers.dense(
            self.patch_dim, ("embed", "unsharded"), dtype=self.dtype, name="pixels"
        )(x)


class JEPAPredictor(nn.Module):
    """V-JEPA predictor: features [B, N, out_dim] predicted for every position.

    One learned mask token per mask type (e.g. short- and long-range blocks), chosen by
    `mask_type`.
    """

    width: int = 384
    depth: int = 12
    heads: int = 12
    out_dim: int = 768
    num_mask_types: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, context_tokens, keep_idx, grid, *, mask_type: int, train: bool):
        if isinstance(mask_type, int) and not 0 <= mask_type < self.num_mask_types:
            raise ValueError(
                f"mask_type={mask_type} is out of range for num_mask_types={self.num_mask_types}"
            )
        mask_tokens = _mask_token_param(self, "mask_tokens", (self.num_mask_types, self.width))
        x = _MaskedSequenceTransformer(
            self.width, self.depth, self.heads, dtype=self.dtype, name="transformer"
        )(context_tokens, keep_idx, tuple(grid), mask_tokens[mask_type], train)
        return layers.dense(self.out_dim, ("embed", "mlp"), dtype=self.dtype, name="output")(x)


class AttentivePooler(nn.Module):
    """Learned queries cross-attend over tokens [B, N, D], then an MLP: returns [B, Q, D]."""

    num_queries: int = 1
    heads: int = 16  # divides every ViT width (192 ... 1408)
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        batch, _, dim = tokens.shape
        if dim % self.heads:
            raise ValueError(
                f"AttentivePooler: token width {dim} is not divisible by "
                f"heads={self.heads}; choose heads dividing {dim}"
            )
        queries = _mask_token_param(self, "queries", (self.num_queries, dim))
        q = jnp.broadcast_to(queries.astype(self.dtype), (batch, self.num_queries, dim))
        context = layers.layer_norm(dtype=self.dtype, name="norm_tokens")(tokens)
        q = q + Attention(self.heads, dtype=self.dtype, name="cross_attention")(q, context)
        y = layers.layer_norm(dtype=self.dtype, name="norm_mlp")(q)
        return q + Mlp(self.mlp_ratio * dim, dtype=self.dtype, name="mlp")(y)
