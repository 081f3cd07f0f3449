"""Building blocks shared by every model: annotated parameters, activation constraints, inputs.

Every parameter carries logical axis names so that the mesh rules in `vrl.sharding` decide how
it is laid out (replicated, FSDP or tensor-parallel) without touching model code. The logical
names used across models:

  parameters   embed, mlp, heads, kv, conv_in, conv_out, classes, unsharded
  activations  batch, length, act_embed, act_mlp, act_heads, act_kv

`unsharded` marks small dimensions (kernel sizes, positions) that no rule ever splits.
"""

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Per-channel statistics of the pixels a model was trained on: ImageNet's for every published
# video SSL recipe we follow, Kinetics-400's for torchvision's video ResNets.
PIXEL_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "kinetics": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
}
PixelNorm = Literal["imagenet", "kinetics"]
MEAN_RGB = np.array(PIXEL_STATS["imagenet"][0], np.float32)
STDDEV_RGB = np.array(PIXEL_STATS["imagenet"][1], np.float32)

default_kernel_init = nn.initializers.lecun_normal()


def to_unit_float(video: jax.Array) -> jax.Array:
    """float32 video in [0, 1] from uint8 pixels (the pipeline's) or from float video as is."""
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 255.0
    return video.astype(jnp.float32)


def to_model_input(video: jax.Array, model: nn.Module) -> jax.Array:
    """uint8 (or [0, 1] float) video -> the normalised input of `model`, in its dtype, on device.

    The pipeline ships uint8 to the accelerator (4x less host->device traffic) and this one
    function turns it into model input, for training and probing alike. The statistics are the
    model's own (`model.pixel_norm`), so a converted published model sees what it was trained on.
    """
    mean, std = PIXEL_STATS[model.pixel_norm]
    video = (to_unit_float(video) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return video.astype(model.dtype)


def partitioned(init, axes: Sequence[str | None]):
    """An initializer whose parameter carries logical axis names ("unsharded" -> None)."""
    return nn.with_logical_partitioning(init, tuple(None if a == "unsharded" else a for a in axes))


def dense(
    features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype=jnp.float32,
    use_bias: bool = True,
    kernel_init=default_kernel_init,
    name: str | None = None,
) -> nn.Dense:
    """nn.Dense with logically partitioned kernel [in, out] and bias [out]."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=partitioned(kernel_init, axes),
        bias_init=partitioned(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
    )


def layer_norm(axis: str = "embed", *, dtype=jnp.float32, epsilon: float = 1e-6, name=None):
    """nn.LayerNorm with logically partitioned scale and bias."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones_init(), (axis,)),
        bias_init=partitioned(nn.initializers.zeros_init(), (axis,)),
        name=name,
    )


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pins an activation's layout by logical names (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, tuple(axes))


# ---------------------------------------------------------------------------------------------
# Convolutional layers (R3D): kernels are [kt, kh, kw, in, out] with axes
# ("unsharded", "unsharded", "unsharded", "conv_in", "conv_out").

CONV_KERNEL_AXES = ("unsharded", "unsharded", "unsharded", "conv_in", "conv_out")
ConvImpl = Literal["auto", "native", "sum2d", "im2col"]
CONV_IMPLS = ("auto", "native", "sum2d", "im2col")

# He initialisation (fan-out) keeps activation scale through deep ReLU networks.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# On CPU, maps with at most this many output positions per frame use im2col (see below).
SMALL_MAP_POSITIONS = 16


def resolve_conv_impl(
    impl: str, kernel_size: Sequence[int], out_hw: Sequence[int], backend: str | None = None
) -> str:
    """The implementation a Conv3D uses; "auto" picks per layer from measurements on XLA:CPU.

    Off CPU "auto" is "native". On CPU, XLA's 3-D convolution is slow (sum2d: ~2x faster
    fwd+grad for a 3x3x3 conv on 28x28 maps) and its 2-D convolution is pathologically slow on
    tiny maps (3x3 conv, 512 channels, 2x2 maps: ~35x slower than a matmul over patches), while
    pointwise kernels are plain matmuls. So: 1x1 spatial kernels and maps of at most
    SMALL_MAP_POSITIONS outputs -> "im2col"; everything else -> "sum2d".
    """
    if impl not in CONV_IMPLS:
        allowed = ", ".join(repr(i) for i in CONV_IMPLS)
        raise ValueError(f"conv impl {impl!r} is not allowed; allowed: {allowed}")
    if impl != "auto":
        return impl
    if (backend or jax.default_backend()) != "cpu":
        return "native"
    pointwise = kernel_size[1] == kernel_size[2] == 1
    return "im2col" if pointwise or out_hw[0] * out_hw[1] <= SMALL_MAP_POSITIONS else "sum2d"


def _conv2d(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(strides), tuple(pads), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _out_size(size: int, kernel: int, stride: int) -> int:
    """Output length of a 'VALID' window over an already padded axis."""
    return (size - kernel) // stride + 1


def _pad_axes(x: jax.Array, pads, axes) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    for axis, pad in zip(axes, pads):
        widths[axis] = tuple(pad)
    return jnp.pad(x, widths)


def conv3d_sum2d(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    """3-D convolution as a sum of 2-D convolutions over the temporal kernel offsets.

    x [B, T, H, W, C], kernel [kt, kh, kw, C, F], `pads` three (low, high) pairs. Mathematically
    identical to the 3-D convolution; on CPU it is markedly faster forward and backward.
    """
    kt = kernel.shape[0]
    st = strides[0]
    x = _pad_axes(x, pads[:1], (1,))
    batch, frames, height, width, channels = x.shape
    t_out = _out_size(frames, kt, st)
    out = None
    for dt in range(kt):
        # Frames dt, dt + st, ...: the inputs that kernel slice dt sees for every output frame.
        xs = jax.lax.slice_in_dim(x, dt, dt + st * (t_out - 1) + 1, stride=st, axis=1)
        y = _conv2d(
            xs.reshape(batch * t_out, height, width, channels), kernel[dt], strides[1:], pads[1:]
        )
        out = y if out is None else out + y
    return out.reshape(batch, t_out, *out.shape[1:])


def conv3d_im2col(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    """3-D convolution as one matmul over explicitly gathered patches.

    The patch tensor is kt*kh*kw times the input, so this is only for pointwise kernels and
    small maps, where it is by far the fastest form on CPU (and its gradient is slices + a
    matmul, never a transposed convolution).
    """
    kernel_size = kernel.shape[:3]
    x = _pad_axes(x, pads, (1, 2, 3))
    outs = [_out_size(n, k, s) for n, k, s in zip(x.shape[1:4], kernel_size, strides)]
    columns = []
    for offsets in itertools.product(*(range(k) for k in kernel_size)):
        patch = x
        for axis, (start, n, s) in enumerate(zip(offsets, outs, strides), start=1):
            patch = jax.lax.slice_in_dim(patch, start, start + s * (n - 1) + 1, stride=s, axis=axis)
        columns.append(patch)
    # Offsets vary slowest, channels fastest: the row order of kernel.reshape(-1, F).
    patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
    return jnp.einsum("bthwk,kf->bthwf", patches, kernel.reshape(-1, kernel.shape[-1]))


def conv3d_native(x: jax.Array, kernel: jax.Array, strides, pads) -> jax.Array:
    """XLA's 3-D convolution (fast on GPU/TPU); temporal-kernel-1 convs become 2-D convs."""
    if kernel.shape[0] == 1:
        return conv3d_sum2d(x, kernel, strides, pads)
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(strides), tuple(pads), dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


CONV3D_FUNCTIONS = {"native": conv3d_native, "sum2d": conv3d_sum2d, "im2col": conv3d_im2col}


class Conv3D(nn.Module):
    """3-D convolution with one parameter layout for every implementation.

    `impl` only changes how XLA is asked to compute it (see `resolve_conv_impl`), so
    checkpoints move freely between a CPU run and an accelerator run. `padding` is "SAME" or
    explicit (low, high) pairs per (t, h, w): PyTorch pads symmetrically, while XLA's "SAME"
    puts the odd pixel at the end (a stride-2 conv on an even size), so ported nets pass pairs.
    """

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int, int] = (1, 1, 1)
    padding: str | tuple[tuple[int, int], ...] = "SAME"
    use_bias: bool = False
    impl: ConvImpl = "auto"
    dtype: Any = jnp.float32
    kernel_init: Callable = conv_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 5:
            raise ValueError(f"Conv3D expects [B, T, H, W, C] input, got shape {x.shape}")
        kernel = self.param(
            "kernel",
            partitioned(self.kernel_init, CONV_KERNEL_AXES),
            (*self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if isinstance(self.padding, str):
            pads = jax.lax.padtype_to_pads(x.shape[1:4], self.kernel_size, self.strides, "SAME")
        else:
            pads = [tuple(p) for p in self.padding]
        out_hw = [
            _out_size(n + lo + hi, k, s)
            for n, (lo, hi), k, s in zip(
                x.shape[2:4], pads[1:], self.kernel_size[1:], self.strides[1:]
            )
        ]
        impl = resolve_conv_impl(self.impl, self.kernel_size, out_hw)
        y = CONV3D_FUNCTIONS[impl](x, kernel, self.strides, pads)
        if self.use_bias:
            bias = self.param(
                "bias", partitioned(nn.initializers.zeros_init(), ("conv_out",)), (self.features,)
            )
            y = y + bias.astype(y.dtype)
        return y


def batch_norm(
    *,
    train: bool,
    axis: str = "conv_out",
    dtype=jnp.float32,
    zero_scale: bool = False,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    name: str | None = None,
) -> nn.BatchNorm:
    """nn.BatchNorm with logically partitioned scale/bias.

    No `axis_name`: under jit the batch axis is global, so statistics already span every
    device. `zero_scale` starts a residual branch as the identity (Goyal et al. 2017).
    """
    scale_init = nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init()
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=partitioned(scale_init, (axis,)),
        bias_init=partitioned(nn.initializers.zeros_init(), (axis,)),
        name=name,
    )
