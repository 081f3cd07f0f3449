"""torchvision video ResNets -> vrl: converted weights give torchvision's features and logits.

Each reference model is built by torchvision with random weights (BatchNorm statistics and
affines randomised so that they matter, eval mode), saved with torch.save(state_dict()),
converted (r2plus1d_18 through the real CLI), and both sides see the same uint8 clips with
their own preprocessing: torchvision float/255, Kinetics mean/std, [B, C, T, H, W]; vrl
`api.load_encoder(workdir).embed(uint8)` and the supervised objective's logits. Differences are
printed (pytest -s) for docs/PARITY.md. Nothing is downloaded.
"""

import os
import subprocess
import sys
from functools import partial

import flax.linen as nn
import jax
import numpy as np
import pytest

from vrl import api, convert, weights
from vrl import checkpoint as ckpt_lib
from vrl.models import layers, video_resnet
from vrl.objectives import base

torch = pytest.importorskip("torch")
tv_video = pytest.importorskip("torchvision.models.video")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"}
NUM_CLASSES = 10
SHAPES = ((4, 32, 32), (8, 48, 64))
ODD_SHAPE = (5, 33, 47)  # odd sizes: every stride-2 layer rounds up
VIA_CLI = "r2plus1d_18"
TOL = 1e-4  # max abs difference relative to the largest reference value


def reference(arch: str, num_classes: int = NUM_CLASSES, seed: int = 0):
    """A torchvision model with random weights, BatchNorm statistics included, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(tv_video, arch)(num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        model.fc.weight.normal_(0.0, 0.1, generator=gen)
        model.fc.bias.normal_(0.0, 0.1, generator=gen)
    return model.eval()


def torch_outputs(model, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pooled features [B, 512], logits) with torchvision's preprocessing of uint8 clips."""
    mean, std = (torch.tensor(s).view(1, 3, 1, 1, 1) for s in layers.PIXEL_STATS["kinetics"])
    x = torch.from_numpy(video).float().div(255.0).permute(0, 4, 1, 2, 3)
    x = (x - mean) / std
    seen = {}
    hook = model.fc.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    return seen["x"].numpy(), logits.numpy()


def clips(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, *shape, 3), np.uint8)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vrl.convert", "--format=torchvision", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip


@pytest.fixture(scope="module", params=video_resnet.ARCHS)
def converted(request, tmp_path_factory):
    arch = request.param
    model = reference(arch)
    folder = tmp_path_factory.mktemp(arch)
    src, workdir = str(folder / f"{arch}.pth"), str(folder / "run")
    torch.save(model.state_dict(), src)
    if arch == VIA_CLI:
        result = cli(f"--src={src}", f"--workdir={workdir}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"wrote {workdir}: model video_resnet, objective supervised" in result.stdout
    else:
        convert.convert("torchvision", src, workdir)
    return arch, model, workdir


class Vrl:
    """The converted run: the api encoder (pooled features) and the objective (logits)."""

    def __init__(self, workdir: str):
        self.encoder = api.load_encoder(workdir, batch_size=8)
        meta, step = ckpt_lib.load_meta(workdir)
        self.objective = base.build(meta["config"])
        self.params, self.extra = weights.restore_variables(workdir, step, self.objective, meta)
        self._logits = jax.jit(
            lambda p, e, v: self.objective.logits(p, e, v, jax.random.key(0), False)[0]
        )
        head = self.objective.head
        self._head = jax.jit(lambda p, f: head.apply({"params": p}, f, train=False))

    def logits(self, video: np.ndarray) -> np.ndarray:
        """The supervised objective's own path: uint8 -> to_model_input -> encoder -> head."""
        return np.asarray(self._logits(self.params, self.extra, video))

    def head(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self._head(self.params["head"], features))


def compare(arch, model, vrl: Vrl, shape, full_logits: bool) -> None:
    """Pooled features from `embed` and logits through the whole supervised objective, or
    (one compile less) from `tokens`, pooled by the model, and the head."""
    video = clips(shape)
    pooled_ref, logits_ref = torch_outputs(model, video)
    if full_logits:
        pooled, logits = vrl.encoder.embed(video), vrl.logits(video)
    else:
        tokens = vrl.encoder.tokens(video)
        assert tokens.shape[1] == np.prod(vrl.encoder.module.token_grid(*shape))
        pooled = np.asarray(vrl.encoder.module.pool(tokens))
        logits = vrl.head(pooled)
    feature_diff = np.abs(pooled - pooled_ref).max()
    logit_diff = np.abs(logits - logits_ref).max()
    feature_scale, logit_scale = np.abs(pooled_ref).max(), np.abs(logits_ref).max()
    print(
        f"\nPARITY {arch} {'x'.join(map(str, shape))}: pooled max abs diff {feature_diff:.2e} "
        f"(scale {feature_scale:.3g}), logits {logit_diff:.2e} (scale {logit_scale:.3g})"
    )
    assert pooled.shape == (2, 512) and logits.shape == (2, NUM_CLASSES)
    assert feature_diff <= TOL * feature_scale
    assert logit_diff <= TOL * logit_scale
    np.testing.assert_array_equal(logits.argmax(-1), logits_ref.argmax(-1))


def test_features_and_logits_match_torchvision(converted):
    arch, model, workdir = converted
    vrl = Vrl(workdir)
    config = vrl.encoder.config
    assert config["model"]["name"] == "video_resnet" and config["model"]["arch"] == arch
    assert config["model"]["pixel_norm"] == "kinetics"
    assert config["objective"] == {**config["objective"], "name": "supervised", "num_classes": 10}
    assert "resize_short(size=128)|center_crop(size=112)" in config["data"]["test_pp"]
    assert vrl.extra["batch_stats"]["encoder"]["stem_bn"]["var"].shape == (64,)
    for i, shape in enumerate(SHAPES):
        compare(arch, model, vrl, shape, full_logits=i == 0)


@pytest.mark.slow
def test_odd_clip_sizes_match_torchvision(converted):
    """Odd sizes: PyTorch's symmetric padding, not XLA's 'SAME' (which pads the end)."""
    arch, model, workdir = converted
    compare(arch, model, Vrl(workdir), ODD_SHAPE, full_logits=False)


def test_parameter_counts_equal_torchvision():
    """r3d_18 has 33,371,472 parameters with its 400-class fc (33,166,272 without)."""
    video = jax.ShapeDtypeStruct((1, 4, 32, 32, 3), np.float32)
    for arch in video_resnet.ARCHS:
        module = video_resnet.VideoResNet(arch=arch)
        shapes = jax.eval_shape(partial(module.init, jax.random.key(0), train=False), video)
        ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))
        theirs = sum(p.numel() for p in getattr(tv_video, arch)().parameters())
        assert ours + 512 * 400 + 400 == theirs, arch
    assert theirs == 31_505_325  # r2plus1d_18, as torchvision's weights metadata says


@pytest.fixture(scope="module")
def mc3_state():
    return reference("mc3_18").state_dict()


def test_arch_is_read_from_the_shapes_and_a_wrong_arch_is_refused(mc3_state, tmp_path):
    src = str(tmp_path / "mc3.pth")
    torch.save(mc3_state, src)
    converted, tensors = convert.read("torchvision", src)
    assert converted.model == {"name": "video_resnet", "arch": "mc3_18"}
    assert converted.clip == (16, 112, 112)
    assert tensors.unused() == []
    with pytest.raises(convert.ConversionError, match="--arch=r3d_18 but the tensor shapes are"):
        convert.read("torchvision", src, convert.Options(arch="r3d_18"))
    with pytest.raises(convert.ConversionError, match="allowed: r3d_18, mc3_18, r2plus1d_18"):
        convert.read("torchvision", src, convert.Options(arch="r50"))
    # torchvision's reference training checkpoint: {"model": state dict}, DDP's "module." prefix.
    torch.save({"model": {f"module.{k}": v for k, v in mc3_state.items()}, "epoch": 3}, src)
    wrapped, _ = convert.read("torchvision", src, convert.Options(frames=8, image_size=64))
    assert wrapped.model["arch"] == "mc3_18" and wrapped.clip == (8, 64, 64)


@pytest.mark.slow
def test_cli_refuses_a_wrong_arch_in_one_line(mc3_state, tmp_path):
    src = str(tmp_path / "mc3.pth")
    torch.save(mc3_state, src)
    result = cli(f"--src={src}", f"--workdir={tmp_path / 'w'}", "--arch=r2plus1d_18")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--arch=r2plus1d_18 but the tensor shapes are those of" in errors[0]
    assert not (tmp_path / "w").exists()


def test_every_difference_is_listed_and_nothing_is_written(mc3_state, tmp_path):
    state = dict(mc3_state)
    state["layer5.0.conv1.0.weight"] = torch.zeros(3)
    del state["layer1.0.conv1.1.running_var"], state["layer4.1.conv2.0.weight"]
    state["layer3.1.conv2.0.weight"] = torch.zeros(256, 256, 3, 3, 3)  # mc3: 1x3x3 there
    src = str(tmp_path / "broken.pth")
    torch.save(state, src)
    with pytest.raises(convert.ConversionError) as info:
        convert.convert("torchvision", src, str(tmp_path / "w"))
    message = str(info.value)
    assert "(4 differences)" in message
    assert "missing tensor layer1.0.conv1.1.running_var" in message
    assert "missing tensor layer4.1.conv2.0.weight" in message
    assert (
        "layer3.1.conv2.0.weight has shape [256, 256, 3, 3, 3], mc3_18 needs [256, 256, 1, 3, 3]"
        in message
    )
    assert "unknown tensor layer5.0.conv1.0.weight" in message
    assert "num_batches_tracked" not in message
    assert not (tmp_path / "w").exists()
    torch.save({"conv.weight": torch.zeros(3)}, src)
    with pytest.raises(convert.ConversionError, match="not a torchvision video ResNet"):
        convert.read("torchvision", src)
