"""Heads that objectives and probes put on top of an encoder.

  ProjectionMLP    CVRL's projection head (Dense + BN + ReLU stack, then a linear output)
  MAEDecoder       VideoMAE's pixel decoder over every token position
  JEPAPredictor    V-JEPA / SALT predictor: context tokens + mask tokens -> target features
  AttentivePooler  V-JEPA's probe pooling: learned queries cross-attend over frozen tokens

The decoder and predictor share one idea: scatter the encoder's kept tokens back to their grid
positions, fill every other position with a learned mask token, add fixed 3-D sine-cosine
positions and run narrow transformer blocks. The predictor can instead follow the released
V-JEPA code exactly (`target_idx`): mask tokens only at the target positions.
"""

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl.models import layers
from vrl.models.vit import (
    Attention,
    Mlp,
    QkvBias,
    block_class,
    rope_positions,
    sincos_posemb_1d,
    sincos_posemb_3d,
)

TOKEN_AXES = ("batch", "length", "act_embed")


class ProjectionMLP(nn.Module):
    """num_hidden x (Dense + BatchNorm + ReLU), then Dense(out); `batch_norm=False` gives
    Dense(+bias) + ReLU hidden layers (MoCo's head)."""

    hidden: int = 2048
    num_hidden: int = 3
    out: int = 128
    batch_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        # Alternate the logical names so no kernel names one axis twice.
        axes = ("embed", "mlp")
        for i in range(self.num_hidden):
            x = layers.dense(
                self.hidden, axes, dtype=self.dtype, use_bias=not self.batch_norm, name=f"hidden{i}"
            )(x)
            if self.batch_norm:
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
    # VideoMAE parity options (see MAEDecoder); the defaults are vrl's own decoder.
    mlp_dim: int | None = None
    posemb: Literal["sincos", "sincos_1d"] = "sincos"
    qkv_bias: QkvBias = "qkv"
    ln_epsilon: float = 1e-6
    norm_epsilon: float | None = None
    embed_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, tokens, keep_idx, grid, mask_token, train: bool, target_idx=None
    ) -> jax.Array:
        """Every position [B, N, width]; with `target_idx` [B, M] only mask tokens at those
        positions join the kept tokens, and only they come back [B, M, width]."""
        t, h, w = grid
        # Encoder width -> head width ("mlp" on the input side so no kernel repeats a name).
        x = layers.dense(
            self.width, ("mlp", "embed"), dtype=self.dtype, use_bias=self.embed_bias, name="embed"
        )(tokens)
        if self.posemb == "sincos_1d":
            table = jnp.asarray(sincos_posemb_1d(t * h * w, self.width), x.dtype)
        else:
            table = jnp.asarray(sincos_posemb_3d(grid, self.width), x.dtype)
        kept = x.shape[1]
        if target_idx is None:
            x = scatter_tokens(x, keep_idx, mask_token, t * h * w) + table
        else:
            queries = mask_token.astype(x.dtype) + table[target_idx]
            x = jnp.concatenate([x + table[keep_idx], queries], axis=1)
        x = layers.constrain(x, TOKEN_AXES)
        block = block_class()
        mlp_dim = self.mlp_dim or self.mlp_ratio * self.width
        for i in range(self.depth):
            x = block(
                self.heads,
                mlp_dim,
                qkv_bias=self.qkv_bias,
                ln_epsilon=self.ln_epsilon,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train)
        epsilon = self.ln_epsilon if self.norm_epsilon is None else self.norm_epsilon
        x = layers.layer_norm(dtype=self.dtype, epsilon=epsilon, name="norm")(x)
        return x if target_idx is None else x[:, kept:]


def _mask_token_param(
    module: nn.Module, name: str, shape: tuple[int, ...], zero: bool = False
) -> jax.Array:
    axes = ("unsharded",) * (len(shape) - 1) + ("embed",)
    init = nn.initializers.zeros_init() if zero else nn.initializers.normal(0.02)
    return module.param(name, layers.partitioned(init, axes), shape)


class _ContextTargetTransformer(nn.Module):
    """V-JEPA's predictor body: [context tokens; mask tokens at the target positions] -> blocks.

    Only the K context and M target tokens enter attention (as in jepa / vjepa2 / HF
    `VJEPA2Predictor`), each with its own position: a sine-cosine table added to both kinds of
    token, or RoPE inside attention. Returns the normalised target tokens [B, M, width].
    Submodule names match `_MaskedSequenceTransformer`, so both read the same parameters.
    """

    width: int
    depth: int
    heads: int
    mlp_ratio: int = 4
    posemb: Literal["sincos", "sincos_uniform", "none"] = "sincos"
    rope: bool = False
    ln_epsilon: float = 1e-6
    qkv_bias: QkvBias = "qkv"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, keep_idx, target_idx, grid, mask_token, train: bool) -> jax.Array:
        x = layers.dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="embed")(tokens)
        batch, kept, _ = x.shape
        queries = jnp.broadcast_to(
            mask_token.astype(x.dtype), (batch, target_idx.shape[1], self.width)
        )
        if self.posemb != "none":
            table = sincos_posemb_3d(grid, self.width, self.posemb == "sincos_uniform")
            table = jnp.asarray(table, x.dtype)
            x, queries = x + table[keep_idx], queries + table[target_idx]
        x = layers.constrain(jnp.concatenate([x, queries], axis=1), TOKEN_AXES)
        positions = None
        if self.rope:
            positions = rope_positions(grid, jnp.concatenate([keep_idx, target_idx], axis=1))
        block = block_class()
        for i in range(self.depth):
            x = block(
                self.heads,
                self.mlp_ratio * self.width,
                qkv_bias=self.qkv_bias,
                ln_epsilon=self.ln_epsilon,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train, positions)
        x = layers.layer_norm(dtype=self.dtype, epsilon=self.ln_epsilon, name="norm")(x)
        return x[:, kept:]


class MAEDecoder(nn.Module):
    """VideoMAE decoder: predictions [B, N, patch_dim] of every tubelet's pixels, or, given
    `target_idx` [B, M], [B, M, patch_dim] for those positions only: VideoMAE V2's dual
    masking, where the decoder runs on the kept tokens and M mask tokens instead of N tokens.

    The published decoders differ from vrl's default in ways that change outputs, so each is an
    option: VideoMAE's 1-D position table (`posemb="sincos_1d"`), q/v-only biases
    (`qkv_bias="qv"`), the blocks' and the final norm's LayerNorm epsilons (Hugging Face uses
    1e-12 and 1e-5), a bias-free `encoder_to_decoder` (`embed_bias=False`) and the MLP width.
    """

    width: int = 384
    depth: int = 4
    heads: int = 6
    patch_dim: int = 2 * 16 * 16 * 3
    mlp_dim: int | None = None  # None: 4 * width
    posemb: Literal["sincos", "sincos_1d"] = "sincos"
    qkv_bias: QkvBias = "qkv"
    ln_epsilon: float = 1e-6
    norm_epsilon: float | None = None  # None: ln_epsilon
    embed_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, visible_tokens, keep_idx, grid, *, train: bool, target_idx=None
    ) -> jax.Array:
        mask_token = _mask_token_param(self, "mask_token", (self.width,))
        x = _MaskedSequenceTransformer(
            self.width,
            self.depth,
            self.heads,
            mlp_dim=self.mlp_dim,
            posemb=self.posemb,
            qkv_bias=self.qkv_bias,
            ln_epsilon=self.ln_epsilon,
            norm_epsilon=self.norm_epsilon,
            embed_bias=self.embed_bias,
            dtype=self.dtype,
            name="transformer",
        )(visible_tokens, keep_idx, tuple(grid), mask_token, train, target_idx)
        return layers.dense(
            self.patch_dim, ("embed", "unsharded"), dtype=self.dtype, name="pixels"
        )(x)


class JEPAPredictor(nn.Module):
    """V-JEPA predictor: features [B, N, out_dim] predicted for every position, or, given
    `target_idx` [B, M], [B, M, out_dim] for those positions only, as the reference does.

    One learned mask token per mask type (e.g. short- and long-range blocks), chosen by
    `mask_type`. Without `target_idx` every non-context position holds a mask token (vrl's
    original predictor); with it only the targets do (jepa / vjepa2), and `posemb` ("sincos",
    V-JEPA's "sincos_uniform" or "none"), `rope` (V-JEPA 2), `ln_epsilon` and `qkv_bias`
    apply. `zero_mask_tokens`: the references start mask tokens at zero.
    """

    width: int = 384
    depth: int = 12
    heads: int = 12
    out_dim: int = 768
    num_mask_types: int = 1
    posemb: Literal["sincos", "sincos_uniform", "none"] = "sincos"
    rope: bool = False
    ln_epsilon: float = 1e-6
    qkv_bias: QkvBias = "qkv"
    zero_mask_tokens: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, context_tokens, keep_idx, grid, *, mask_type: int, train: bool, target_idx=None
    ):
        if isinstance(mask_type, int) and not 0 <= mask_type < self.num_mask_types:
            raise ValueError(
                f"mask_type={mask_type} is out of range for num_mask_types={self.num_mask_types}"
            )
        mask_tokens = _mask_token_param(
            self, "mask_tokens", (self.num_mask_types, self.width), self.zero_mask_tokens
        )
        if target_idx is not None:
            x = _ContextTargetTransformer(
                self.width,
                self.depth,
                self.heads,
                posemb=self.posemb,
                rope=self.rope,
                ln_epsilon=self.ln_epsilon,
                qkv_bias=self.qkv_bias,
                dtype=self.dtype,
                name="transformer",
            )(context_tokens, keep_idx, target_idx, tuple(grid), mask_tokens[mask_type], train)
            return layers.dense(self.out_dim, ("embed", "mlp"), dtype=self.dtype, name="output")(x)
        reference_only = (self.posemb, self.rope, self.ln_epsilon, self.qkv_bias)
        if reference_only != ("sincos", False, 1e-6, "qkv"):
            raise ValueError(
                f"JEPAPredictor posemb={self.posemb!r}, rope={self.rope}, ln_epsilon="
                f"{self.ln_epsilon}, qkv_bias={self.qkv_bias!r} need target_idx (objective "
                "predictor_targets='targets_only')"
            )
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
