"""torchvision video ResNets (r3d_18, mc3_18, r2plus1d_18) -> model `video_resnet`.

    python -m vrl.convert --format=torchvision --src=r3d_18.pth --workdir=runs/r3d_18

`src` is a state dict saved with `torch.save(model.state_dict(), path)` (the files behind
torchvision's `R3D_18_Weights` etc. are exactly that) or a checkpoint of torchvision's
reference training script (the state dict under "model"). The architecture is read from the
shapes (R(2+1)D's stem has 45 channels; MC3's layer2 convs have temporal kernel 1) unless
`--arch` names it, and then the two must agree. The run's objective is `supervised` with
`num_classes` from `fc.weight`, so the classifier is kept. The clip defaults to 16 frames of
112x112 pixels, the size of torchvision's training clips (its transforms resize to 128x171 and
crop 112); `--frames` / `--image_size` override it. BatchNorm running statistics become
`batch_stats`; `num_batches_tracked` is ignored (vrl's BatchNorm has a fixed momentum). Every
other tensor must be used, and every difference (unknown key, missing key, shape) is listed.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl.convert import common
from vrl.models import video_resnet

DEFAULT_FRAMES = 16
DEFAULT_IMAGE_SIZE = 112
# torchvision's eval transform: resize to 128 (short side) for a 112 crop.
RESIZE_RATIO = 128 / 112


def infer_arch(state: dict, source: str) -> str:
    """The architecture whose stem and layer2 shapes the state dict has."""
    stem = tuple(np.shape(state.get("stem.0.weight", ())))
    if len(stem) != 5:
        raise common.ConversionError(
            f"{source}: no 5-D 'stem.0.weight'; not a torchvision video ResNet state "
            "dict (save it with torch.save(model.state_dict(), path))"
        )
    if stem[0] == video_resnet.R2PLUS1D_STEM_MID:
        return "r2plus1d_18"
    layer2 = tuple(np.shape(state.get("layer2.0.conv1.0.weight", ())))
    if len(layer2) == 5 and layer2[2] == 1:
        return "mc3_18"
    return "r3d_18"


def _conv(array: np.ndarray) -> np.ndarray:
    """PyTorch Conv3d weight [out, in, t, h, w] -> vrl kernel [t, h, w, in, out]."""
    return np.transpose(array, (2, 3, 4, 1, 0))


def _plan(arch: str) -> list[tuple[str, str, str]]:
    """(torch key, vrl path, kind) for every tensor of `arch`; kind: conv, bn_*, dense_*."""
    plan = []

    def conv(key: str, path: str) -> None:
        plan.append((f"{key}.weight", f"{path}/kernel", "conv"))

    def bn(key: str, path: str) -> None:
        plan.append((f"{key}.weight", f"params/encoder/{path}/scale", "vector"))
        plan.append((f"{key}.bias", f"params/encoder/{path}/bias", "vector"))
        plan.append((f"{key}.running_mean", f"extra/batch_stats/encoder/{path}/mean", "vector"))
        plan.append((f"{key}.running_var", f"extra/batch_stats/encoder/{path}/var", "vector"))

    enc = "params/encoder"
    if arch == "r2plus1d_18":
        conv("stem.0", f"{enc}/stem_spatial")
        bn("stem.1", "stem_spatial_bn")
        conv("stem.3", f"{enc}/stem_temporal")
        bn("stem.4", "stem_bn")
    else:
        conv("stem.0", f"{enc}/stem")
        bn("stem.1", "stem_bn")
    for stage in range(len(video_resnet.BLOCKS)):
        for i in range(video_resnet.BLOCKS[stage]):
            key, path = f"layer{stage + 1}.{i}", f"layer{stage + 1}_block{i}"
            for n in (1, 2):
                if arch == "r2plus1d_18":
                    conv(f"{key}.conv{n}.0.0", f"{enc}/{path}/conv{n}/spatial")
                    bn(f"{key}.conv{n}.0.1", f"{path}/conv{n}/bn")
                    conv(f"{key}.conv{n}.0.3", f"{enc}/{path}/conv{n}/temporal")
                else:
                    conv(f"{key}.conv{n}.0", f"{enc}/{path}/conv{n}")
                bn(f"{key}.conv{n}.1", f"{path}/bn{n}")
            if stage > 0 and i == 0:
                conv(f"{key}.downsample.0", f"{enc}/{path}/downsample")
                bn(f"{key}.downsample.1", f"{path}/downsample_bn")
    plan.append(("fc.weight", "params/head/logits/kernel", "dense"))
    plan.append(("fc.bias", "params/head/logits/bias", "vector"))
    return plan


def _expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """vrl path -> shape that `video_resnet(arch)` + a `num_classes` head builds."""
    model = video_resnet.VideoResNet(arch=arch)
    variables = jax.eval_shape(
        lambda r: nn.meta.unbox(model.init(r, jnp.zeros((1, 4, 32, 32, 3)), train=False)),
        jax.random.key(0),
    )
    out = {}
    for tree, prefix in (
        ("params", "params/encoder"),
        ("batch_stats", "extra/batch_stats/encoder"),
    ):
        for keys, leaf in jax.tree_util.tree_leaves_with_path(variables[tree]):
            out["/".join([prefix, *(k.key for k in keys)])] = tuple(leaf.shape)
    out["params/head/logits/kernel"] = (video_resnet.STAGE_WIDTHS[-1], num_classes)
    out["params/head/logits/bias"] = (num_classes,)
    return out


def _to_torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":
        return (shape[4], shape[3], *shape[:3])
    if kind == "dense":
        return shape[::-1]
    return shape


def from_torchvision(src: str, options) -> tuple[common.Converted, common.Tensors]:
    """A torchvision video ResNet state dict as a `video_resnet` + `supervised` run."""
    # A bare state dict, or torchvision's reference training checkpoint ({"model": ...}, with
    # "module." from DistributedDataParallel).
    state = common.unwrap(common.read_tensors(src), ("model", "state_dict"), strip=("module.",))
    tensors = common.Tensors(state, src)
    inferred = infer_arch(state, src)
    arch = options.arch or inferred
    if arch not in video_resnet.ARCHS:
        raise common.ConversionError(
            f"--arch={arch!r} is not a torchvision video ResNet; allowed: "
            f"{', '.join(video_resnet.ARCHS)}"
        )
    if arch != inferred:
        raise common.ConversionError(
            f"{src}: --arch={arch} but the tensor shapes are those of {inferred} (stem.0.weight "
            f"{list(np.shape(state['stem.0.weight']))}); drop --arch or fix it"
        )
    if "fc.weight" not in tensors:
        raise common.ConversionError(
            f"{src}: missing tensor 'fc.weight' (the classifier sets num_classes)"
        )
    num_classes = int(np.shape(state["fc.weight"])[0])
    frames = options.frames or DEFAULT_FRAMES
    size = options.image_size or DEFAULT_IMAGE_SIZE
    resize = round(size * RESIZE_RATIO)
    converted = common.Converted(
        model={"name": "video_resnet", "arch": arch},
        objective={"name": "supervised", "num_classes": num_classes},
        clip=(frames, size, size),
        data={
            "test_pp": f"center_clip(frames={frames}, stride=2)|resize_short(size={resize})"
            f"|center_crop(size={size})"
        },
    )
    expected = _expected_shapes(arch, num_classes)
    problems = []
    for key, path, kind in _plan(arch):
        if key not in tensors:
            problems.append(f"missing tensor {key}")
            continue
        array = tensors.take(key)
        want = expected[path]
        if kind == "conv" and array.ndim == 5:
            array = _conv(array)
        elif kind == "dense" and array.ndim == 2:
            array = array.T
        if tuple(array.shape) != want:
            got = list(np.shape(state[key]))
            problems.append(
                f"{key} has shape {got}, {arch} needs {list(_to_torch_shape(kind, want))}"
            )
            continue
        converted.put(path, array, key)
    for key in tensors.keys():
        if key.endswith(".num_batches_tracked"):
            tensors.ignore(key)
    problems += [f"unknown tensor {key}" for key in tensors.unused()]
    if problems:
        raise common.ConversionError(
            f"{src}: not a torchvision {arch} state dict ({len(problems)} differences): "
            + "; ".join(problems)
        )
    return converted, tensors
