"""Encoders (CVRL R3D, torchvision video ResNets, ViT) and heads: parameter counts, equivalences,
shapes, sharded execution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import config as vrl_config
from vrl import sharding
from vrl.models import heads, layers
from vrl.models.r3d import R3D
from vrl.models.video_resnet import VideoResNet
from vrl.models.vit import Block, TubeletEmbed, ViT, sincos_posemb_3d
from vrl.objectives import base

TINY_VIT = dict(size="Ti", width=32, depth=2, heads=2, patch=(2, 4, 4))


def count_params(module: nn.Module, clip_shape) -> int:
    """Parameter count from abstract shapes only (no real initialisation)."""
    video = jax.ShapeDtypeStruct(clip_shape, jnp.float32)
    shapes = jax.eval_shape(lambda v: module.init(jax.random.key(0), v, train=False), video)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes["params"])))


def video(seed: int, shape=(2, 4, 8, 8, 3)) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def key(seed: int) -> jax.Array:
    """An "rbg" key: XLA compiles threefry's many per-parameter hashes slowly on CPU (R3D-18
    init: 26 s threefry vs 5 s rbg), and these tests only need determinism."""
    return jax.random.key(seed, impl="rbg")


def jit_init(module, *args, seed: int = 0, **kwargs):
    """module.init under jit (one compile instead of op-by-op dispatch); args are constants."""
    return jax.jit(lambda: module.init(key(seed), *args, **kwargs))()


def jit_apply(module, variables, *args, **kwargs):
    return jax.jit(lambda v: module.apply(v, *args, **kwargs))(variables)


# ----------------------------------------------------------------------------------------- R3D


def test_r3d50_has_cvrl_parameter_count_and_token_grid():
    model = R3D(depth=50)
    assert count_params(model, (1, 16, 224, 224, 3)) == pytest.approx(31.7e6, rel=0.02)
    tokens = jax.eval_shape(
        lambda v: model.init_with_output(jax.random.key(0), v, train=False)[0],
        jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32),
    )
    t, h, w = model.token_grid(16, 224, 224)
    assert (t, h, w) == (8, 7, 7)
    assert tokens.shape == (2, t * h * w, model.output_dim) == (2, 392, 2048)


# torchvision's published num_params (with the 400-class fc) and its fc's share.
TORCHVISION_PARAMS = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325}
FC_400 = 512 * 400 + 400


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_video_resnet_has_torchvision_parameter_count_and_token_grid(arch):
    """The literature's R3D-18 has 33.37M parameters with its head; CVRL R3D-18 20.06M."""
    model = VideoResNet(arch=arch)
    assert count_params(model, (1, 4, 32, 32, 3)) + FC_400 == TORCHVISION_PARAMS[arch]
    clip = jax.ShapeDtypeStruct((2, 5, 33, 47, 3), jnp.float32)  # odd sizes round up
    tokens = jax.eval_shape(
        lambda v: model.init_with_output(jax.random.key(0), v, train=False)[0], clip
    )
    t, h, w = model.token_grid(5, 33, 47)
    assert (h, w) == (3, 3) and t == (5 if arch == "mc3_18" else 1)
    assert tokens.shape == (2, t * h * w, model.output_dim)
    if arch == "r3d_18":
        assert count_params(R3D(depth=18), (1, 4, 32, 32, 3)) == 20_061_504


def test_conv3d_explicit_padding_is_symmetric_like_pytorch():
    """Stride 2 on an even size: 'SAME' pads (0, 1), PyTorch's padding=1 pads (1, 1)."""
    x = video(0, (1, 4, 8, 8, 3))
    pads = ((1, 1), (1, 1), (1, 1))
    conv = layers.Conv3D(4, (3, 3, 3), (2, 2, 2), padding=pads, impl="sum2d")
    params = jit_init(conv, x, seed=1)
    kernel = nn.unbox(params)["params"]["kernel"]
    expected = jax.lax.conv_general_dilated(
        x, kernel, (2, 2, 2), pads, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
    np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)
    same = layers.Conv3D(4, (3, 3, 3), (2, 2, 2), impl="sum2d").apply(params, x)
    assert same.shape == expected.shape and not np.allclose(same, expected, atol=1e-3)


@pytest.mark.parametrize(
    "kernel,strides,shape",
    [
        ((3, 3, 3), (1, 1, 1), (2, 4, 6, 6, 3)),
        ((3, 3, 3), (2, 2, 2), (1, 5, 9, 7, 3)),  # odd sizes: asymmetric 'SAME' padding
        ((3, 1, 1), (1, 2, 2), (1, 4, 5, 5, 3)),
    ],
)
def test_conv3d_implementations_agree(kernel, strides, shape):
    """sum2d and im2col compute the native 3-D convolution: same outputs, same gradients."""
    x = video(0, shape)
    make = lambda impl: layers.Conv3D(4, kernel, strides, use_bias=True, impl=impl)
    params = jit_init(make("native"), x, seed=1)
    assert nn.unbox(params)["params"]["kernel"].shape == (*kernel, 3, 4)

    def loss(impl, p, x):
        return jnp.sum(jnp.sin(make(impl).apply(p, x)))

    impls = ("native", "sum2d", "im2col")
    outs = {impl: jax.jit(make(impl).apply)(params, x) for impl in impls}
    grad = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)
    grads = {impl: grad(impl, params, x) for impl in impls}
    for impl in impls[1:]:
        np.testing.assert_allclose(outs[impl], outs["native"], rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(grads[impl]), jax.tree.leaves(grads["native"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_impl_auto_choice():
    resolve = layers.resolve_conv_impl
    assert resolve("auto", (3, 3, 3), (28, 28), backend="gpu") == "native"
    assert resolve("auto", (3, 3, 3), (28, 28), backend="cpu") == "sum2d"
    assert resolve("auto", (1, 3, 3), (2, 2), backend="cpu") == "im2col"  # tiny map
    assert resolve("auto", (3, 1, 1), (56, 56), backend="cpu") == "im2col"  # pointwise
    assert resolve("sum2d", (3, 3, 3), (2, 2), backend="tpu") == "sum2d"
    with pytest.raises(ValueError, match="'native', 'sum2d', 'im2col'"):
        resolve("fft", (3, 3, 3), (2, 2))


def test_r3d18_trains_batch_norm_and_matches_its_token_grid():
    model = R3D(depth=18, width=0.125)
    x = video(0, (2, 4, 32, 32, 3))
    variables = jit_init(model, x, train=False)
    params = nn.unbox(variables["params"])
    # Zero-initialised last BN scale: every residual branch starts as the identity.
    for name, block in params.items():
        if name.startswith("res"):
            np.testing.assert_array_equal(block["bn2"]["scale"], 0.0)
            assert np.all(block["bn1"]["scale"] == 1.0)
    train_step = jax.jit(lambda p, v: model.apply(p, v, train=True, mutable=["batch_stats"]))
    tokens, state = train_step(variables, x)
    t, h, w = model.token_grid(4, 32, 32)
    assert tokens.shape == (2, t * h * w, model.output_dim) == (2, 2, 64)
    assert np.isfinite(tokens).all()
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(state["batch_stats"]["stem_bn"]["mean"], before)
    assert model.pool(tokens).shape == (2, 64)
    with pytest.raises(ValueError, match="keep_idx"):
        model.apply(variables, x, train=False, keep_idx=jnp.zeros((2, 1), jnp.int32))


# ----------------------------------------------------------------------------------------- ViT


def test_vit_b16_video_parameter_count():
    assert count_params(ViT(size="B"), (1, 16, 224, 224, 3)) == pytest.approx(86.6e6, rel=0.01)


def test_vit_keep_idx_runs_blocks_on_gathered_tokens_only():
    model = ViT(**TINY_VIT)
    x = video(0)
    keep_idx = jnp.array([[0, 3, 5], [7, 2, 1]], jnp.int32)
    out, variables = jax.jit(
        lambda: model.init_with_output(key(1), x, train=False, keep_idx=keep_idx)
    )()
    assert out.shape == (2, 3, 32)
    params = variables["params"]

    @jax.jit
    def by_hand(params):
        """Embed, gather the kept rows explicitly, run every block and the final norm."""
        embedded = TubeletEmbed(32, (2, 4, 4)).apply({"params": params["embed"]}, x)
        tokens = embedded.reshape(2, -1, 32)
        y = jnp.stack([tokens[b, keep_idx[b]] for b in range(2)])
        for i in range(2):
            y = Block(2, 128).apply({"params": params[f"block{i}"]}, y)
        return layers.layer_norm().apply({"params": params["norm"]}, y)

    np.testing.assert_allclose(out, by_hand(params), rtol=1e-5, atol=1e-5)


def test_vit_learned_posemb_is_resized_for_other_clip_sizes():
    model = ViT(**TINY_VIT, posemb="learned")
    params = jit_init(model, video(0), train=False)["params"]
    assert nn.unbox(params)["embed"]["posemb"].shape == (2, 2, 2, 32)
    out = jit_apply(model, {"params": params}, video(1, (1, 8, 16, 16, 3)), train=False)
    assert out.shape == (1, 4 * 4 * 4, 32) and np.isfinite(out).all()


def test_vit_remat_and_drop_path():
    x = video(0)
    small = {**TINY_VIT, "width": 16}  # drop-path rates 0 and 0.5 (linear in depth)
    plain = ViT(**small, drop_path=0.5)
    rematted = ViT(**small, drop_path=0.5, remat=True, remat_policy="dots_saveable")
    params = jit_init(plain, x, seed=1, train=False)

    def loss(model, p, rng):
        out = model.apply(p, x, train=True, rngs={"dropout": rng})
        return jnp.mean(out**2)

    rng = key(2)
    grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    for a, b in zip(
        jax.tree.leaves(grad(plain, params, rng)), jax.tree.leaves(grad(rematted, params, rng))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # At rate 0.5, some seeds keep and some drop the last block's branches of an example.
    train = jax.jit(lambda p, r: plain.apply(p, x, train=True, rngs={"dropout": r}))
    outs = [train(params, key(seed)) for seed in range(3, 9)]
    assert len({tuple(np.round(np.asarray(o[:, 0, 0]), 5)) for o in outs}) > 1


@pytest.mark.parametrize("version,fuser", [("1.1", False), ("1.0", False), ("1.1", True)])
def test_vit_tokenlearner_reduces_tokens_per_frame(version, fuser):
    model = ViT(
        **TINY_VIT,
        tokenlearner_layer=1,
        tokenlearner_tokens=3,
        tokenlearner_version=version,
        tokenfuser=fuser,
    )
    x = video(0, (2, 4, 8, 8, 3))  # grid (2, 2, 2)
    out, variables = jax.jit(lambda: model.init_with_output(key(0), x, train=False))()
    t, h, w = model.token_grid(4, 8, 8)
    assert out.shape == (2, t * h * w, 32)
    assert (t, h, w) == ((2, 2, 2) if fuser else (2, 3, 1))
    with pytest.raises(ValueError, match="keep_idx"):
        model.apply(variables, x, train=False, keep_idx=jnp.zeros((2, 2), jnp.int32))


def test_vit_rejects_clips_that_do_not_fit_the_patch():
    with pytest.raises(ValueError, match="not divisible by patch"):
        ViT(**TINY_VIT).init(key(0), video(0, (1, 3, 8, 8, 3)), train=False)


def test_sincos_posemb_3d_rows_are_distinct_and_bounded():
    table = sincos_posemb_3d((2, 3, 4), 40)  # 40 is not a multiple of 8: zero padding
    assert table.shape == (24, 40) and np.abs(table).max() <= 1.0
    assert len({tuple(np.round(r, 6)) for r in table}) == 24


def test_models_are_configurable_by_name_with_checked_keys():
    model = vrl_config.component("model", {"name": "vit", "size": "S", "patch": [2, 8, 8]}, "m")
    assert model.patch == (2, 8, 8) and model.output_dim == 384
    assert vrl_config.component("model", {"name": "cvrl_r3d", "depth": 18}, "m").output_dim == 512
    with pytest.raises(vrl_config.ConfigError, match="'Ti', 'S', 'B'"):
        vrl_config.component("model", {"name": "vit", "size": "XL"}, "m")
    with pytest.raises(vrl_config.ConfigError, match="18, 34, 50, 101, 152"):
        vrl_config.component("model", {"name": "cvrl_r3d", "depth": 42}, "m")


def test_old_name_r3d_still_builds_cvrl_r3d():
    """Runs saved before the rename say model.name='r3d': their configs build the same net."""
    old = vrl_config.component("model", {"name": "r3d", "depth": 18, "width": 0.125}, "m")
    new = vrl_config.component("model", {"name": "cvrl_r3d", "depth": 18, "width": 0.125}, "m")
    assert type(old) is R3D and old == new
    run = {
        "model": {"name": "r3d", "depth": 18, "width": 0.125, "conv_impl": "auto"},
        "objective": {"name": "supervised", "num_classes": 3},
    }
    objective = base.build(run)
    assert objective.encoder == new
    x = jax.ShapeDtypeStruct((2, 4, 32, 32, 3), jnp.uint8)
    params, _ = jax.eval_shape(objective.init, jax.random.key(0), {"video": x})
    assert params["encoder"]["stem"]["kernel"].value.shape == (5, 7, 7, 3, 8)


def test_r3d_runs_sharded_with_global_batch_norm():
    """FSDP + tensor-parallel layout on 8 fake devices: init traces with every parameter's
    logical names, and a train-mode forward on sharded parameters and batch gives the unsharded
    result, batch statistics included (the ViT is covered by tests/test_sharding.py)."""
    model = R3D(depth=18, width=0.125)
    x = video(0, (4, 4, 32, 32, 3))
    rules = sharding.RULES["fsdp_tensor"]
    mesh = jax.make_mesh(
        (2, 2, 2), ("data", "fsdp", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    init = lambda v: model.init(key(0), v, train=False)
    forward = jax.jit(lambda p, v: model.apply(p, v, train=True, mutable=["batch_stats"]))
    variables = jax.jit(init)(x)
    expected = forward(variables, x)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init, x)
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
        assert jax.tree.structure(abstract) == jax.tree.structure(variables)
        out = forward(
            jax.device_put(variables, shardings),
            jax.device_put(x, sharding.batch_sharding(mesh, x.ndim)),
        )
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    specs = [s for s in jax.tree.leaves(nn.get_partition_spec(abstract)) if s != ()]
    assert any(axis is not None for spec in specs for axis in spec)  # something is sharded


@pytest.mark.parametrize(
    "model",
    [ViT(**TINY_VIT, dtype=jnp.bfloat16), R3D(depth=18, width=0.125, dtype=jnp.bfloat16)],
    ids=["vit", "cvrl_r3d"],
)
def test_compute_dtype_leaves_parameters_float32(model):
    clip = jax.ShapeDtypeStruct((2, 4, 32, 32, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda v: model.init_with_output(key(0), v, train=False), clip)
    assert out.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype(jnp.float32)}


# --------------------------------------------------------------------------------------- heads


def _outputs_differ(apply, variables, inputs, out_shape):
    """apply(variables, *args) for two argument tuples: shaped, finite, and not equal."""
    outs = [apply(variables, *args) for args in inputs]
    for out in outs:
        assert out.shape == out_shape and np.isfinite(out).all()
    assert not np.allclose(outs[0], outs[1])


def test_projection_mlp():
    head = heads.ProjectionMLP(hidden=16, num_hidden=2, out=8)
    variables = jit_init(head, video(0, (4, 12)), train=False)
    apply = jax.jit(lambda v, x: head.apply(v, x, train=False))
    _outputs_differ(apply, variables, [(video(1, (4, 12)),), (video(2, (4, 12)),)], (4, 8))
    _, state = jit_apply(head, variables, video(1, (4, 12)), train=True, mutable=["batch_stats"])
    assert set(state["batch_stats"]) == {"bn0", "bn1"}


KEEP = jnp.array([[0, 5, 6], [1, 2, 7]], jnp.int32)
GRID = (2, 2, 2)


def test_mae_decoder_predicts_every_position():
    decoder = heads.MAEDecoder(width=16, depth=1, heads=2, patch_dim=2 * 4 * 4 * 3)
    variables = jit_init(decoder, video(0, (2, 3, 24)), KEEP, GRID, train=False)
    apply = jax.jit(lambda v, tokens: decoder.apply(v, tokens, KEEP, GRID, train=False))
    inputs = [(video(1, (2, 3, 24)),), (video(2, (2, 3, 24)),)]
    _outputs_differ(apply, variables, inputs, (2, 8, 96))


def test_jepa_predictor_mask_types():
    predictor = heads.JEPAPredictor(width=16, depth=1, heads=2, out_dim=24, num_mask_types=2)
    tokens = video(0, (2, 3, 24))
    variables = jit_init(predictor, tokens, KEEP, GRID, mask_type=0, train=False)
    apply = jax.jit(lambda v, x, m: predictor.apply(v, x, KEEP, GRID, mask_type=m, train=False))
    _outputs_differ(apply, variables, [(tokens, 1), (video(1, (2, 3, 24)), 1)], (2, 8, 24))
    # One learned mask token per type: same context, another type, another prediction.
    _outputs_differ(apply, variables, [(tokens, 0), (tokens, 1)], (2, 8, 24))
    with pytest.raises(ValueError, match="num_mask_types"):
        predictor.apply(variables, tokens, KEEP, GRID, mask_type=2, train=False)


def test_attentive_pooler():
    pooler = heads.AttentivePooler(num_queries=2, heads=4)
    variables = jit_init(pooler, video(0, (3, 10, 16)))
    inputs = [(video(1, (3, 10, 16)),), (video(2, (3, 10, 16)),)]
    _outputs_differ(jax.jit(pooler.apply), variables, inputs, (3, 2, 16))
    with pytest.raises(ValueError, match="divisible by heads"):
        heads.AttentivePooler(heads=5).init(key(0), video(0, (1, 4, 16)))
