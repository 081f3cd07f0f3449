"""torchvision's video ResNets (Tran et al. 2018, "A Closer Look at Spatiotemporal
Convolutions"): r3d_18, mc3_18 and r2plus1d_18, laid out exactly as torchvision.models.video.

These are the nets the literature means by "R3D-18" (33.4M parameters with the 400-class
head), "MC3-18" and "R(2+1)D-18"; vrl's own CVRL-layout R3D (`cvrl_r3d`) is a different,
smaller net. They exist so that published torchvision weights (`python -m vrl.convert
--format=torchvision`) load strictly and give the same outputs:

  stem       r3d/mc3: 3x7x7 conv, stride (1, 2, 2), 64 channels; no max pool.
             r2plus1d: 1x7x7 conv to 45 channels (stride (1, 2, 2)) + BN + ReLU, 3x1x1 to 64.
  layer1-4   two BasicBlocks each, 64/128/256/512 channels; layers 2-4 start with stride 2.
             r3d: every conv 3x3x3, stride 2 in time and space.
             mc3: layer1 3x3x3; layers 2-4 1x3x3, stride 2 in space only.
             r2plus1d: every conv a 1x3x3 (stride (1, s, s)) + BN + ReLU + 3x1x1 (stride
             (s, 1, 1)) through `midplanes` channels, which keep the 3x3x3 conv's parameters.
  shortcut   1x1x1 conv + BN where the shape changes, with the block's stride.

Padding is symmetric as in PyTorch (explicit pairs, not XLA's 'SAME'), BatchNorm eps 1e-5, and
the input is normalised with Kinetics-400 pixel statistics (torchvision's transforms).
"""

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry
from vrl.models import layers

ARCHS = ("r3d_18", "mc3_18", "r2plus1d_18")
Arch = Literal["r3d_18", "mc3_18", "r2plus1d_18"]
BLOCKS = (2, 2, 2, 2)
STAGE_WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
R2PLUS1D_STEM_MID = 45
FEATURE_AXES = ("batch", None, None, None, "act_embed")


def midplanes(in_planes: int, out_planes: int) -> int:
    """Channels between R(2+1)D's spatial and temporal convs: as many parameters as 3x3x3."""
    return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


def conv_kind(arch: str, stage: int) -> str:
    """ "3d" (3x3x3), "2d" (1x3x3, no temporal stride) or "2plus1d" for stage 0..3."""
    if arch == "r2plus1d_18":
        return "2plus1d"
    if arch == "mc3_18" and stage > 0:
        return "2d"
    return "3d"


def _pads(kernel: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
    """PyTorch's symmetric padding k // 2 on each side (odd kernels)."""
    return tuple((k // 2, k // 2) for k in kernel)


class Conv2Plus1D(nn.Module):
    """1x3x3 conv (spatial stride) -> BN -> ReLU -> 3x1x1 conv (temporal stride)."""

    features: int
    mid: int
    stride: int
    conv_impl: layers.ConvImpl = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = dict(impl=self.conv_impl, dtype=self.dtype)
        s = self.stride
        x = layers.Conv3D(
            self.mid, (1, 3, 3), (1, s, s), padding=_pads((1, 3, 3)), name="spatial", **conv
        )(x)
        x = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="bn")(x))
        return layers.Conv3D(
            self.features, (3, 1, 1), (s, 1, 1), padding=_pads((3, 1, 1)), name="temporal", **conv
        )(x)


class BasicBlock(nn.Module):
    """Two convs of the stage's kind with BN, plus the (projected) input."""

    features: int
    stride: int
    kind: str
    mid: int = 0  # R(2+1)D only: channels inside both factorised convs of this block
    conv_impl: layers.ConvImpl = "auto"
    dtype: Any = jnp.float32

    def _conv(self, stride: int, name: str):
        if self.kind == "2plus1d":
            return Conv2Plus1D(
                self.features, self.mid, stride, self.conv_impl, self.dtype, name=name
            )
        kernel = (3, 3, 3) if self.kind == "3d" else (1, 3, 3)
        strides = (stride, stride, stride) if self.kind == "3d" else (1, stride, stride)
        conv = layers.Conv3D(
            self.features,
            kernel,
            strides,
            padding=_pads(kernel),
            impl=self.conv_impl,
            dtype=self.dtype,
            name=name,
        )
        return lambda x, train: conv(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = self._conv(self.stride, "conv1")(x, train)
        y = nn.relu(layers.batch_norm(train=train, dtype=self.dtype, name="bn1")(y))
        y = self._conv(1, "conv2")(y, train)
        y = layers.batch_norm(train=train, dtype=self.dtype, name="bn2")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            s = self.stride
            strides = (1, s, s) if self.kind == "2d" else (s, s, s)
            shortcut = layers.Conv3D(
                self.features,
                (1, 1, 1),
                strides,
                padding=_pads((1, 1, 1)),
                impl=self.conv_impl,
                dtype=self.dtype,
                name="downsample",
            )(x)
            shortcut = layers.batch_norm(train=train, dtype=self.dtype, name="downsample_bn")(
                shortcut
            )
        return nn.relu(y + shortcut)


@registry.register("model", "video_resnet")
class VideoResNet(nn.Module):
    """torchvision's r3d_18 / mc3_18 / r2plus1d_18 as a vrl encoder (tokens = last feature map).

    `pool` is the global average that torchvision's AdaptiveAvgPool3d computes before its fc;
    a supervised objective's ClassifierHead plays the fc.
    """

    arch: Arch = "r3d_18"
    conv_impl: layers.ConvImpl = "auto"
    # Pixel statistics of the input (layers.to_model_input): torchvision trained on Kinetics'.
    pixel_norm: layers.PixelNorm = "kinetics"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool, keep_idx=None) -> jax.Array:
        self._check()
        if keep_idx is not None:
            raise ValueError(
                "model video_resnet cannot drop tokens (keep_idx was given): a convolutional "
                "encoder sees the whole clip; use a masked objective with model.name='vit'"
            )
        if video.ndim != 5:
            raise ValueError(f"video_resnet expects video [B, T, H, W, 3], got shape {video.shape}")
        conv = dict(impl=self.conv_impl, dtype=self.dtype)
        bn = dict(train=train, dtype=self.dtype)

        x = video.astype(self.dtype)
        if self.arch == "r2plus1d_18":
            x = layers.Conv3D(
                R2PLUS1D_STEM_MID,
                (1, 7, 7),
                (1, 2, 2),
                padding=_pads((1, 7, 7)),
                name="stem_spatial",
                **conv,
            )(x)
            x = nn.relu(layers.batch_norm(name="stem_spatial_bn", **bn)(x))
            x = layers.Conv3D(
                STEM_WIDTH, (3, 1, 1), padding=_pads((3, 1, 1)), name="stem_temporal", **conv
            )(x)
        else:
            x = layers.Conv3D(
                STEM_WIDTH, (3, 7, 7), (1, 2, 2), padding=_pads((3, 7, 7)), name="stem", **conv
            )(x)
        x = nn.relu(layers.batch_norm(name="stem_bn", **bn)(x))

        in_planes = STEM_WIDTH
        for stage, (count, planes) in enumerate(zip(BLOCKS, STAGE_WIDTHS)):
            kind = conv_kind(self.arch, stage)
            for i in range(count):
                x = BasicBlock(
                    planes,
                    stride=2 if (stage > 0 and i == 0) else 1,
                    kind=kind,
                    mid=midplanes(in_planes, planes) if kind == "2plus1d" else 0,
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_block{i}",
                )(x, train)
                in_planes = planes
            x = layers.constrain(x, FEATURE_AXES)
        batch, t, h, w, channels = x.shape
        tokens = x.reshape(batch, t * h * w, channels)
        return layers.constrain(tokens, ("batch", "length", "act_embed"))

    def pool(self, tokens: jax.Array) -> jax.Array:
        """Global average over the final feature map (torchvision's AdaptiveAvgPool3d(1))."""
        return jnp.mean(tokens, axis=1)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) of the final map: space /16 (stem, layers 2-4), time /8 except mc3_18
        (time kept); every stride-2 step rounds up, as PyTorch's padding-1 convs do."""
        self._check()
        t, h, w = frames, math.ceil(height / 2), math.ceil(width / 2)
        for stage in range(1, len(BLOCKS)):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
            if conv_kind(self.arch, stage) != "2d":
                t = math.ceil(t / 2)
        return t, h, w

    @property
    def output_dim(self) -> int:
        return STAGE_WIDTHS[-1]

    def _check(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"video_resnet arch {self.arch!r} is not allowed; allowed: {', '.join(ARCHS)}"
            )
