"""TokenLearner and TokenFuser (Ryoo et al., NeurIPS 2021).

TokenLearner replaces a frame's h*w tokens by S learned ones, each a spatially weighted sum of
the inputs, so every later block costs a fraction of the full grid. TokenFuser maps S tokens
back onto the h*w positions. Inputs are image-like `[..., H, W, C]`; leading axes (batch,
frames) are kept, so a video applies the modules per frame. The spatial attention maps are
sown into the "intermediates" collection as `attention_maps` `[..., S, H, W]`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl.models import layers


def _check_image_like(x: jax.Array, what: str) -> None:
    if x.ndim < 4:
        raise ValueError(f"{what} expects [..., H, W, C] input (at least 4 axes), got {x.shape}")


def _weighted_sums(maps: jax.Array, features: jax.Array) -> jax.Array:
    """maps [..., S, N], features [..., N, C] -> [..., S, C]."""
    return jnp.einsum("...sn,...nc->...sc", maps.astype(features.dtype), features)


class TokenLearnerV11(nn.Module):
    """v1.1: LayerNorm -> MLP (bottleneck, GELU) -> S maps -> softmax over space -> sums."""

    num_tokens: int = 8
    bottleneck: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_image_like(x, "TokenLearnerV11")
        *lead, height, width, channels = x.shape
        flat = x.reshape(*lead, height * width, channels)
        logits = layers.layer_norm(dtype=self.dtype, name="norm")(flat)
        logits = layers.dense(
            self.bottleneck, ("embed", "unsharded"), dtype=self.dtype, name="fc1"
        )(logits)
        logits = layers.dense(
            self.num_tokens, ("unsharded", "unsharded"), dtype=self.dtype, name="fc2"
        )(nn.gelu(logits, approximate=False))
        # Softmax in float32 over the h*w positions: each learned token is a convex combination.
        maps = jax.nn.softmax(jnp.swapaxes(logits, -1, -2).astype(jnp.float32), axis=-1)
        self.sow("intermediates", "attention_maps", maps.reshape(*lead, -1, height, width))
        return _weighted_sums(maps, flat)


class TokenLearnerV10(nn.Module):
    """v1.0: LayerNorm -> 3 x (3x3 conv, S channels, GELU) -> 3x3 conv -> sigmoid maps -> sums."""

    num_tokens: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_image_like(x, "TokenLearnerV10")
        *lead, height, width, channels = x.shape
        maps = layers.layer_norm(dtype=self.dtype, name="norm")(x)
        for i in range(4):
            maps = nn.Conv(
                self.num_tokens,
                (3, 3),
                padding="SAME",
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=layers.partitioned(
                    layers.default_kernel_init, ("unsharded", "unsharded", "conv_in", "conv_out")
                ),
                name=f"conv{i}",
            )(maps)
            if i < 3:
                maps = nn.gelu(maps, approximate=False)
        maps = jax.nn.sigmoid(maps.astype(jnp.float32)).reshape(*lead, height * width, -1)
        maps = jnp.swapaxes(maps, -1, -2)  # [..., S, h*w]
        self.sow("intermediates", "attention_maps", maps.reshape(*lead, -1, height, width))
        # Sum pooling, as in the paper's released model.
        return _weighted_sums(maps, x.reshape(*lead, height * width, channels))


class TokenFuser(nn.Module):
    """Maps S learned tokens back to every position of the original [..., H, W, C] grid.

    The learned tokens are mixed across the token axis (LayerNorm -> Dense over S -> LayerNorm);
    an MLP on the original features gives each position sigmoid weights over the S tokens.
    The token-mixing Dense starts at zero so a freshly inserted fuser adds nothing to the
    residual stream.
    """

    bottleneck: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, original: jax.Array) -> jax.Array:
        _check_image_like(original, "TokenFuser")
        *lead, height, width, channels = original.shape
        if tokens.shape[:-2] != tuple(lead) or tokens.shape[-1] != channels:
            raise ValueError(
                f"TokenFuser tokens {tokens.shape} do not match original {original.shape}: "
                "expected [..., S, C] with the same leading axes and C"
            )
        num_tokens = tokens.shape[-2]
        mixed = layers.layer_norm(dtype=self.dtype, name="tokens_norm1")(tokens)
        mixed = layers.dense(
            num_tokens,
            ("unsharded", "unsharded"),
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros_init(),
            name="token_mix",
        )(jnp.swapaxes(mixed, -1, -2))
        mixed = layers.layer_norm(dtype=self.dtype, name="tokens_norm2")(
            jnp.swapaxes(mixed, -1, -2)
        )

        flat = original.reshape(*lead, height * width, channels)
        weights = layers.layer_norm(dtype=self.dtype, name="original_norm")(flat)
        weights = layers.dense(
            self.bottleneck, ("embed", "unsharded"), dtype=self.dtype, name="fc1"
        )(weights)
        weights = layers.dense(
            num_tokens, ("unsharded", "unsharded"), dtype=self.dtype, name="fc2"
        )(nn.gelu(weights, approximate=False))
        weights = jax.nn.sigmoid(weights.astype(jnp.float32))  # [..., h*w, S]
        fused = jnp.einsum("...ns,...sc->...nc", weights.astype(mixed.dtype), mixed)
        return fused.reshape(*lead, height, width, channels)
