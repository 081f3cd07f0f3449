"""3-D ResNets in the CVRL layout (Qian et al. 2021): model `cvrl_r3d`, "CVRL R3D-18/34/50/
101/152", with a width multiplier (`r3d` is the same model's old name, kept so that saved
configs still load).

The stem is a 5x7x7 convolution with temporal and spatial stride 2 followed by a 1x3x3 max
pool; res2/res3 use temporal kernel 1 and res4/res5 temporal kernel 3 in the first convolution
of every block, so early layers see single frames and late layers mix time. CVRL R3D-50 has
about 31.7M parameters without a head. Output tokens are the final feature map flattened to
[B, t*h*w, C] so that every objective and probe treats CNNs and ViTs alike.

This is not the literature's "R3D-18" (Tran et al. 2018, torchvision's r3d_18, model
`video_resnet`): that net uses full 3x3x3 kernels in every block, a 3x7x7 stem without temporal
stride and no max pool, and has 33.17M parameters without its classifier (33.37M with the
400-class fc), while CVRL R3D-18 has 20.1M (temporal kernels 1 in res2/res3, 1x3x3 second
convs). Compare numbers across the two only by these names.
"""

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry
from vrl.models import layers

# depth -> (block type, blocks per stage res2..res5)
STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
TEMPORAL_KERNELS = (1, 1, 3, 3)
BOTTLENECK_EXPANSION = 4
FEATURE_AXES = ("batch", None, None, None, "act_embed")


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the first one carries the temporal kernel."""

    features: int
    spatial_stride: int
    temporal_kernel: int
    conv_impl: layers.ConvImpl = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = dict(impl=self.conv_impl, dtype=self.dtype)
        s = self.spatial_stride
        kt = self.temporal_kernel
        y = layers.Conv3D(self.features, (kt, 3, 3), (1, s, s), name="conv1", **conv)(x)
        y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
        y = layers.Conv3D(self.features, (1, 3, 3), name="conv2", **conv)(y)
        y = layers.batch_norm(train=train, dtype=self.dtype, zero_scale=True, name="bn2")(y)
        return nn.relu(y + _shortcut(x, self.features, s, train, conv))


class BottleneckBlock(nn.Module):
    """1x1 (temporal kernel kt) -> 1x3x3 (spatial stride) -> 1x1 expanding by 4."""

    features: int
    spatial_stride: int
    temporal_kernel: int
    conv_impl: layers.ConvImpl = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = dict(impl=self.conv_impl, dtype=self.dtype)
        s = self.spatial_stride
        out = self.features * BOTTLENECK_EXPANSION
        y = layers.Conv3D(self.features, (self.temporal_kernel, 1, 1), name="conv1", **conv)(x)
        y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
        y = layers.Conv3D(self.features, (1, 3, 3), (1, s, s), name="conv2", **conv)(y)
        y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y))
        y = layers.Conv3D(out, (1, 1, 1), name="conv3", **conv)(y)
        y = layers.batch_norm(train=train, dtype=self.dtype, zero_scale=True, name="bn3")(y)
        return nn.relu(y + _shortcut(x, out, s, train, conv))


def _shortcut(x: jax.Array, features: int, stride: int, train: bool, conv: dict) -> jax.Array:
    """Identity, or a strided 1x1x1 projection + BN where the shape changes."""
    if x.shape[-1] == features and stride == 1:
        return x
    y = layers.Conv3D(features, (1, 1, 1), (1, stride, stride), name="projection", **conv)(x)
    return layers.batch_norm(train=train, dtype=conv["dtype"], name="projection_bn")(y)


@registry.register("model", "r3d")  # the old name: configs saved before the rename say it
@registry.register("model", "cvrl_r3d")
class R3D(nn.Module):
    """CVRL's 3-D ResNet encoder (not torchvision's r3d_18: see the module docstring).

    `width` multiplies every channel count (CVRL's R3D-152 2x uses 2.0). `conv_impl` picks how
    convolutions are computed ("auto": native on accelerators, the fastest CPU form per layer,
    see `layers.resolve_conv_impl`); the parameters are the same either way.
    """

    depth: Literal[18, 34, 50, 101, 152] = 50
    width: float = 1.0
    conv_impl: layers.ConvImpl = "auto"
    # Pixel statistics the input is normalised with (layers.to_model_input).
    pixel_norm: layers.PixelNorm = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool, keep_idx=None) -> jax.Array:
        if keep_idx is not None:
            raise ValueError(
                "model cvrl_r3d cannot drop tokens (keep_idx was given): a convolutional encoder "
                "sees the whole clip; use a masked objective with model.name='vit'"
            )
        if video.ndim != 5:
            raise ValueError(f"cvrl_r3d expects video [B, T, H, W, 3], got shape {video.shape}")
        block_type, counts = self._spec()
        block_cls = BasicBlock if block_type == "basic" else BottleneckBlock
        conv = dict(impl=self.conv_impl, dtype=self.dtype)

        x = video.astype(self.dtype)
        x = layers.Conv3D(_scaled(64, self.width), (5, 7, 7), (2, 2, 2), name="stem", **conv)(x)
        x = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="stem_bn")(x))
        x = nn.max_pool(x, (1, 3, 3), strides=(1, 2, 2), padding="SAME")
        for stage, (count, base, kt) in enumerate(zip(counts, STAGE_WIDTHS, TEMPORAL_KERNELS)):
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                x = block_cls(
                    _scaled(base, self.width),
                    spatial_stride=stride,
                    temporal_kernel=kt,
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"res{stage + 2}_block{i}",
                )(x, train)
            x = layers.constrain(x, FEATURE_AXES)
        batch, t, h, w, channels = x.shape
        tokens = x.reshape(batch, t * h * w, channels)
        return layers.constrain(tokens, ("batch", "length", "act_embed"))

    def pool(self, tokens: jax.Array) -> jax.Array:
        """Global average pooling over the final feature map: the clip vector [B, C]."""
        return jnp.mean(tokens, axis=1)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the final feature map: time /2 (stem), space /32, 'SAME' rounding up."""
        spatial = (2, 2, 2, 2, 2)  # stem conv, max pool, res3, res4, res5
        h, w = height, width
        for s in spatial:
            h, w = math.ceil(h / s), math.ceil(w / s)
        return math.ceil(frames / 2), h, w

    @property
    def output_dim(self) -> int:
        block_type, _ = self._spec()
        expansion = BOTTLENECK_EXPANSION if block_type == "bottleneck" else 1
        return _scaled(STAGE_WIDTHS[-1], self.width) * expansion

    def _spec(self) -> tuple[str, tuple[int, ...]]:
        if self.depth not in STAGES:
            allowed = ", ".join(str(d) for d in STAGES)
            raise ValueError(f"cvrl_r3d depth {self.depth!r} is not allowed; allowed: {allowed}")
        if self.width <= 0:
            raise ValueError(f"cvrl_r3d width must be > 0, got {self.width}")
        return STAGES[self.depth]
