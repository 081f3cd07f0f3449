"""configs/videomae_vitb_k400.py against the released VideoMAE code (MCG-NJU/VideoMAE).

Each reference function is copied here from their files, so a difference fails a test. The
recipe's crop (`GroupMultiScaleCrop`) is tested in test_spatial.py.
"""

import os

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import config as config_lib
from vrl import weights
from vrl.models import heads, vit
from vrl.objectives import mae

RECIPE = os.path.join(os.path.dirname(__file__), "..", "configs", "videomae_vitb_k400.py")


def get_sinusoid_encoding_table(n_position, d_hid):
    """modeling_finetune.py, as released (returned as numpy instead of a torch tensor)."""

    def get_position_angle_vec(position):
        return [position / np.power(10000, 2 * (hid_j // 2) / d_hid) for hid_j in range(d_hid)]

    sinusoid_table = np.array([get_position_angle_vec(pos_i) for pos_i in range(n_position)])
    sinusoid_table[:, 0::2] = np.sin(sinusoid_table[:, 0::2])  # dim 2i
    sinusoid_table[:, 1::2] = np.cos(sinusoid_table[:, 1::2])  # dim 2i+1
    return sinusoid_table.astype(np.float32)


def reference_targets(videos, patch_size, tubelet=2):
    """engine_for_pretraining.train_one_epoch with normlize_target=True, in numpy.

    `videos` is [B, C, T, H, W] in [0, 1] (their `unnorm_videos`).
    """
    videos_squeeze = einops.rearrange(
        videos,
        "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
        p0=tubelet,
        p1=patch_size,
        p2=patch_size,
    )
    videos_norm = (videos_squeeze - videos_squeeze.mean(axis=-2, keepdims=True)) / (
        np.sqrt(videos_squeeze.var(axis=-2, ddof=1, keepdims=True)) + 1e-6
    )
    return einops.rearrange(videos_norm, "b n p c -> b n (p c)")


def recipe_objective():
    config = config_lib.to_dict(config_lib.load_file(RECIPE))
    return weights.build_objective(config, jnp.float32)


def test_recipe_uses_the_reference_position_table_in_encoder_and_decoder():
    objective = recipe_objective()
    assert objective.encoder.posemb == "sincos_1d" and objective.decoder.posemb == "sincos_1d"
    # ViT-B at 16 x 224 x 224: 8 * 14 * 14 tokens; encoder width 768, decoder width 384.
    for dim in (768, 384):
        np.testing.assert_allclose(
            vit.sincos_posemb_1d(1568, dim), get_sinusoid_encoding_table(1568, dim), atol=1e-6
        )

    # Both modules add that table: zero pixels / zero tokens leave only the positions.
    video = jnp.zeros((1, 4, 16, 16, 3))
    embed = vit.TubeletEmbed(64, (2, 8, 8), posemb="sincos_1d")
    out, _ = embed.init_with_output(jax.random.key(0), video)
    np.testing.assert_allclose(out.reshape(8, 64), get_sinusoid_encoding_table(8, 64), atol=1e-6)

    decoder = heads.MAEDecoder(width=32, depth=0, heads=2, patch_dim=5, posemb="sincos_1d")
    keep_idx = jnp.arange(8)[None]
    out, variables = decoder.init_with_output(
        jax.random.key(0), jnp.zeros((1, 8, 64)), keep_idx, (2, 2, 2), train=False
    )
    table = get_sinusoid_encoding_table(8, 32)
    normed = (table - table.mean(-1, keepdims=True)) / np.sqrt(table.var(-1, keepdims=True) + 1e-6)
    pixels = nn.unbox(variables["params"]["pixels"])
    np.testing.assert_allclose(out[0], normed @ pixels["kernel"] + pixels["bias"], atol=1e-5)


def test_recipe_targets_equal_the_reference_normalised_pixels():
    assert recipe_objective().norm_pix_eps_inside_sqrt is False
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    # Nearly flat tubelets (std ~ 1e-3) are where the place of the 1e-6 matters.
    video[0] = 128
    video[0, 0, 0, 0] = 129
    expected = reference_targets(video.transpose(0, 4, 1, 2, 3) / 255.0, patch_size=4)
    got = mae.tubelet_targets(jnp.asarray(video), (2, 4, 4), True, eps_inside_sqrt=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    default = mae.tubelet_targets(jnp.asarray(video), (2, 4, 4), True)  # vrl's sqrt(var + eps)
    assert np.abs(np.asarray(default) - expected).max() > 1.0


def test_recipe_attention_biases_are_the_releases():
    """modeling_pretrain.py: q and v biases only (`q_bias`, `v_bias`; the key bias is zero) in
    encoder and decoder, and `encoder_to_decoder = nn.Linear(..., bias=False)`."""
    objective = weights.build_objective(config_lib.to_dict(config_lib.load_file(RECIPE)))
    assert objective.encoder.qkv_bias == "qv"
    assert objective.decoder_qkv_bias == "qv"
    assert objective.decoder_embed_bias is False
