"""vrl.api: loading encoders strictly, embedding in batches on every device, features of a split."""

import types

import jax
import numpy as np
import pytest
from test_probe_checkpoint import tiny_checkpoint

from vrl import api, weights
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib


@pytest.fixture(scope="module")
def encoder():
    return api.load_encoder(tiny_checkpoint(), batch_size=8)


def clips(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 16, 16, 3), np.uint8)


def test_embed_and_tokens_shapes_and_metadata(encoder):
    assert jax.device_count() == 8
    assert encoder.step == 2 and encoder.which == "encoder"
    assert encoder.config["model"]["width"] == 32
    video = clips(3)
    assert encoder.embed(video).shape == (3, 32)
    tokens = encoder.tokens(video)
    assert tokens.shape == (3, 8, 32)  # (4/2) x (16/8) x (16/8) tubelets
    np.testing.assert_allclose(encoder.embed(video), tokens.mean(axis=1), atol=1e-5)


def test_batching_matches_one_call_per_clip(encoder):
    """19 clips in chunks of 8 (padded tail) give what each clip gives on its own."""
    video = clips(19, seed=1)
    batched = encoder.embed(video)
    single = np.concatenate([encoder.embed(video[i : i + 1]) for i in (0, 7, 8, 18)])
    np.testing.assert_allclose(batched[[0, 7, 8, 18]], single, atol=1e-5)
    assert encoder.embed(video[:0]).shape == (0, 32)


def test_uint8_and_unit_float_inputs_agree(encoder):
    video = clips(2, seed=2)
    np.testing.assert_allclose(
        encoder.embed(video), encoder.embed(video.astype(np.float32) / 255.0), atol=1e-5
    )


def test_multi_view_inputs_keep_the_view_axis(encoder):
    video = np.stack([clips(3, seed=3), clips(3, seed=4)], axis=1)  # [3, 2, T, H, W, 3]
    out = encoder.embed(video)
    assert out.shape == (3, 2, 32)
    np.testing.assert_allclose(out[:, 1], encoder.embed(video[:, 1]), atol=1e-5)
    assert encoder.tokens(video).shape == (3, 2, 8, 32)
    with pytest.raises(ValueError, match=r"expected video \[B, T, H, W, 3\]"):
        encoder.embed(video[0, 0])


def test_random_encoder_is_the_architecture_at_init(encoder):
    random = api.load_encoder(tiny_checkpoint(), which="random")
    assert random.which == "random"
    jax.tree.map(
        lambda a, b: np.testing.assert_equal(a.shape, b.shape), random.variables, encoder.variables
    )
    assert np.abs(random.embed(clips(2)) - encoder.embed(clips(2))).max() > 1e-3


def test_unknown_encoder_names_the_allowed_ones():
    message = "no 'target' encoder; allowed: encoder, random"
    with pytest.raises(config_lib.ConfigError, match=message):
        api.load_encoder(tiny_checkpoint(), which="target")


def test_mismatched_checkpoint_is_rejected_with_the_differences():
    """The checkpoint holds a 32-wide ViT; asking for a 16-wide one must fail, listing leaves."""
    with pytest.raises(ckpt_lib.CheckpointError) as info:
        api.load_encoder(tiny_checkpoint(), overrides={"model": {"width": 16}})
    message = str(info.value)
    assert "does not match the model" in message
    assert "(21 differences)" in message
    expected = "shape encoder/block0/attention/query/kernel: saved (32, 2, 16), expected (16, 2, 8)"
    assert expected in message
    assert "shape encoder/norm/bias: saved (32,), expected (16,)" in message
    with pytest.raises(ckpt_lib.CheckpointError, match="no step 7"):
        api.load_encoder(tiny_checkpoint(), step=7)


def test_extract_features_of_a_split(encoder):
    feats, labels = api.extract_features(encoder, {}, "test")
    assert feats.shape == (16, 32)
    assert set(labels) == {"motion", "appearance"}
    assert labels["motion"].shape == (16,) and labels["motion"].dtype == np.int32
    # The pipeline's clips embed to the same vectors as the clips themselves.
    video = api.load_clips(encoder, {}, "test", [0, 5])
    assert video.shape == (2, 4, 16, 16, 3) and video.dtype == np.uint8
    np.testing.assert_allclose(encoder.embed(video), feats[[0, 5]], atol=1e-5)
    tokens, _ = api.extract_features(encoder, {}, "test", kind="tokens")
    assert tokens.shape == (16, 8, 32)
    multiview = (
        "multiview_clips(num_clips=2, frames=4, stride=2)|resize_short(size=16)|three_crop(size=16)"
    )
    views, _ = api.extract_features(encoder, {}, "test", pp=multiview)
    assert views.shape == (16, 6, 32)


def test_teacher_parameters_are_applied_by_the_teacher_module():
    """SALT's teacher may be another architecture than the student it trains."""
    from vrl.models.vit import ViT  # noqa: PLC0415

    student, teacher = ViT(size="Ti", width=32, depth=1), ViT(size="Ti", width=16, depth=1)
    objective = types.SimpleNamespace(encoder=student, teacher=teacher)
    assert weights.encoder_module(objective, "teacher") is teacher
    assert weights.encoder_module(objective, "target") is student  # V-JEPA's EMA copy
    assert weights.encoder_module(objective, "encoder") is student
    assert weights.encoder_module(objective, "random") is student
