"""VideoMAE V2 dual masking, and the MGMAE / FreqAug recipe variants.

Dual masking against a numpy reading of OpenGVLab/VideoMAEv2: `RunningCellMaskingGenerator`
(dataset/masking_generator.py) and the loss of `engine_for_pretraining.train_one_epoch`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import config as config_lib
from vrl import evaluators
from vrl import setup as setup_lib
from vrl.data import masks
from vrl.models import heads, layers
from vrl.models.vit import ViT
from vrl.objectives import mae
from vrl.objectives.base import ClipSpec

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
VIDEOMAE = os.path.join(CONFIGS, "videomae_vitb_k400.py")
CVRL = os.path.join(CONFIGS, "cvrl_k600.py")


def reference_running_cell_maps(grid, ratio):
    """The 4 maps RunningCellMaskingGenerator picks from ([4, t, h*w], 1 = not decoded): a ring
    of 4 (hidden first) read from a pointer, row-major in a 2x2 cell, advanced every slot."""
    t, h, w = grid
    hidden = int(4 * ratio)
    queue = np.hstack([np.ones(hidden), np.zeros(4 - hidden)])
    maps = []
    for start in range(4):
        pointer, slots = start, []
        for _ in range(t):
            pointer += 1
            cell = queue[(np.arange(4) + pointer) % 4].reshape(2, 2)
            slots.append(np.tile(cell, [h // 2, w // 2]).flatten())
        maps.append(np.stack(slots))
    return np.stack(maps).astype(bool)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_mask_is_the_reference_generator(ratio):
    grid = (5, 4, 6)
    reference = reference_running_cell_maps(grid, ratio).reshape(4, -1)
    op = masks.running_cell_mask(grid=grid, ratio=ratio)
    seen = set()
    for seed in range(24):
        mask = op({}, np.random.default_rng(seed))["mask/decoder"]
        (match,) = np.flatnonzero((reference == mask).all(axis=1))
        seen.add(int(match))
    assert seen == {0, 1, 2, 3}


def tiny_objective(**kwargs):
    encoder = ViT(size="Ti", width=32, depth=1, heads=2, patch=(2, 4, 4))
    return mae.VideoMAE(
        encoder=encoder, decoder_width=16, decoder_depth=1, decoder_heads=2, **kwargs
    )


def masked_batch(objective, videos, seed=0):
    """Stacked examples after the objective's mask ops (as the pipeline makes them)."""
    ops = [op for _, op in objective.batch_ops(clip_of(videos))]
    examples = []
    for i, video in enumerate(videos):
        example, rng = {"video": video}, np.random.default_rng([seed, i])
        for op in ops:
            example = op(example, rng)
        examples.append(example)
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def clip_of(videos):
    return ClipSpec(frames=videos.shape[1], height=videos.shape[2], width=videos.shape[3])


def numpy_targets(videos, patch):
    """Per-tubelet normalised pixels, t-major tokens, (pt, ph, pw, c) order, sqrt(var + 1e-6)."""
    b, frames, height, width, c = videos.shape
    pt, ph, pw = patch
    x = videos.astype(np.float64) / 255.0
    x = x.reshape(b, frames // pt, pt, height // ph, ph, width // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw, c)
    x = (x - x.mean(axis=2, keepdims=True)) / np.sqrt(x.var(axis=2, ddof=1, keepdims=True) + 1e-6)
    return x.reshape(*x.shape[:2], -1)


VIDEOS = np.random.default_rng(0).integers(0, 256, (2, 8, 16, 16, 3), dtype=np.uint8)


def test_dual_masking_scores_hidden_decoded_tokens_as_the_reference():
    objective = tiny_objective(mask_ratio=0.75, decoder_mask="running_cell")
    batch = masked_batch(objective, VIDEOS)
    params, extra = objective.init(jax.random.key(0), batch)
    loss, (metrics, _) = objective.loss(params, extra, batch, jax.random.key(1), train=False)

    hidden = np.asarray(batch["mask"])  # encoder: True = hidden
    not_decoded = np.asarray(batch["mask/decoder"])  # decoder: True = not reconstructed
    decoded = np.asarray(batch["keep_idx/decoder"])
    np.testing.assert_array_equal(decoded, [np.flatnonzero(~m) for m in not_decoded])
    assert decoded.shape == (2, 64 // 2)  # half of the 4 x 4 x 4 tokens
    # The release: labels = targets[~decode_masked_pos], weights = bool_masked_pos at them.
    x = layers.to_model_input(batch["video"], objective.encoder)
    tokens = objective.encoder.apply(
        {"params": params["encoder"]}, x, train=False, keep_idx=batch["keep_idx"]
    )
    pred = np.asarray(
        objective.decoder.apply(
            {"params": params["decoder"]},
            tokens,
            batch["keep_idx"],
            (4, 4, 4),
            train=False,
            target_idx=batch["keep_idx/decoder"],
        ),
        np.float64,
    )
    targets = numpy_targets(VIDEOS, (2, 4, 4))
    labels = np.stack([targets[b, decoded[b]] for b in range(2)])
    weights = np.stack([hidden[b, decoded[b]] for b in range(2)]).astype(np.float64)
    per_token = ((pred - labels) ** 2).mean(axis=-1)
    expected = (per_token * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["reconstruction_mse"]), expected, rtol=1e-4)
    # Scored: hidden from the encoder and kept by the decoder mask, about half the hidden.
    assert weights.sum() == (hidden & ~not_decoded).sum()
    assert 0 < weights.sum() < hidden.sum()


@pytest.mark.parametrize("posemb", ["sincos", "sincos_1d"])
def test_decoder_on_the_hidden_positions_equals_the_full_decoder(posemb):
    """Mask tokens at exactly the hidden positions is VideoMAE v1's decoder: same outputs."""
    rng = np.random.default_rng(1)
    grid, kept = (2, 4, 4), 8
    keep_idx = np.sort(np.stack([rng.permutation(32)[:kept] for _ in range(2)]), axis=1)
    hidden_idx = np.stack([np.setdiff1d(np.arange(32), k) for k in keep_idx])
    tokens = jnp.asarray(rng.normal(size=(2, kept, 24)), jnp.float32)
    decoder = heads.MAEDecoder(width=16, depth=2, heads=2, patch_dim=6, posemb=posemb)
    variables = decoder.init(jax.random.key(0), tokens, jnp.asarray(keep_idx), grid, train=False)
    full = decoder.apply(variables, tokens, jnp.asarray(keep_idx), grid, train=False)
    part = decoder.apply(
        variables, tokens, jnp.asarray(keep_idx), grid, train=False, target_idx=hidden_idx
    )
    expected = np.stack([np.asarray(full)[b, hidden_idx[b]] for b in range(2)])
    np.testing.assert_allclose(np.asarray(part), expected, rtol=1e-5, atol=1e-5)


def test_dual_masking_decoder_runs_on_fewer_tokens():
    batch_v1 = masked_batch(tiny_objective(mask_ratio=0.75), VIDEOS)
    v2 = tiny_objective(mask_ratio=0.75, decoder_mask="running_cell")
    batch_v2 = masked_batch(v2, VIDEOS)
    assert "keep_idx/decoder" not in batch_v1 and tiny_objective().decoder_mask is None
    params, _ = v2.init(jax.random.key(0), batch_v2)
    tokens = jnp.zeros((2, 16, 32))

    def block_tokens(batch, **kwargs):
        _, state = v2.decoder.apply(
            {"params": params["decoder"]},
            tokens,
            batch["keep_idx"],
            (4, 4, 4),
            train=False,
            capture_intermediates=lambda module, method: (
                (module.name, method) == ("block0", "__call__")
            ),
            mutable=["intermediates"],
            **kwargs,
        )
        (out,) = state["intermediates"]["transformer"]["block0"]["__call__"]
        return out.shape[1]

    assert block_tokens(batch_v1) == 64  # every position
    assert block_tokens(batch_v2, target_idx=batch_v2["keep_idx/decoder"]) == 16 + 32


def test_dual_masking_rejects_bad_config():
    videos_odd = np.zeros((1, 8, 12, 16, 3), np.uint8)  # a 3 x 4 token plane: no 2 x 2 cells
    with pytest.raises(config_lib.ConfigError, match="config.objective.decoder_mask: .*even"):
        tiny_objective(decoder_mask="running_cell").batch_ops(clip_of(videos_odd))
    with pytest.raises(config_lib.ConfigError, match="allowed: 0.25, 0.5, 0.75"):
        tiny_objective(decoder_mask="running_cell", decoder_mask_ratio=0.3).batch_ops(
            clip_of(VIDEOS)
        )


def load(path, arg):
    config = config_lib.load_file(path, arg)
    config.evals = {}
    return config


def first_examples(config, count=4):
    s = setup_lib.setup(config)
    examples = s.train_data.examples(0, s.objective.batch_ops(s.train_data.clip))
    return [examples[i] for i in range(count)]


def without(config: dict, *keys) -> dict:
    config = json.loads(json.dumps(config_lib.to_dict(config), default=str))
    for path in keys:
        *parents, last = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node.pop(last)
    return config


def test_videomae_motion_guided_changes_only_the_masks():
    base, motion = load(VIDEOMAE, "runlocal"), load(VIDEOMAE, "runlocal,mask=motion_guided")
    assert base.objective.mask == "tube" and motion.objective.mask == "motion_guided"
    assert without(base, "objective.mask") == without(motion, "objective.mask")
    assert config_lib.to_dict(load(VIDEOMAE, "")) == config_lib.to_dict(load(VIDEOMAE, "mask=tube"))
    grid = (4, 4, 4)
    moved = []
    for a, b in zip(first_examples(base), first_examples(motion)):
        np.testing.assert_array_equal(a["video"], b["video"])  # same clips, other masks
        # MGMAE's per-frame top-k: each temporal slot hides as many tokens as a tube does.
        np.testing.assert_array_equal(
            a["mask"].reshape(4, -1).sum(1), b["mask"].reshape(4, -1).sum(1)
        )
        energy = masks.tubelet_motion(b, grid).reshape(-1)
        moved.append(energy[b["mask"]].mean() - energy[a["mask"]].mean())
    assert np.mean(moved) > 0  # motion-guided masks hide what moves more than tubes do
    with pytest.raises(config_lib.ConfigError, match="mask='blocks': not allowed"):
        load(VIDEOMAE, "mask=blocks")


def test_cvrl_freqaug_filters_views():
    base, freq = load(CVRL, "runlocal"), load(CVRL, "runlocal,freqaug=1")
    assert "freq_aug" not in base.data.train_pp
    assert freq.data.train_pp == base.data.train_pp + (
        '|freq_aug(p=0.5, mode="both", spatial_cutoff=0.01, temporal_cutoff=0.1)'
    )
    assert without(base, "data.train_pp") == without(freq, "data.train_pp")
    assert config_lib.to_dict(load(CVRL, "")) == config_lib.to_dict(load(CVRL, "freqaug=0"))
    same = changed = 0
    for a, b in zip(first_examples(base), first_examples(freq)):
        for view_a, view_b in zip(a["video"], b["video"]):
            if np.array_equal(view_a, view_b):
                same += 1
                continue
            changed += 1
            # A filtered view lost its static part: what stays still over time is gone.
            static = np.abs(view_a.mean(axis=0) - view_a.mean()).mean()
            assert np.abs(view_b.astype(np.float32).mean(axis=0) - view_b.mean()).mean() < static
    assert same and changed  # p = 0.5 per view
    with pytest.raises(config_lib.ConfigError, match="freqaug=2: not allowed"):
        load(CVRL, "freqaug=2")


@pytest.mark.parametrize("path, arg", [(VIDEOMAE, "mask=motion_guided"), (CVRL, "freqaug=1")])
def test_variant_trains_three_steps(path, arg, tmp_path):
    config = load(path, f"runlocal,{arg}")
    config.total_steps = 3
    config.evals = {}
    evaluators.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [row for row in map(json.loads, f) if "train/loss" in row]
    assert rows[-1]["step"] == 3 and all(np.isfinite(r["train/loss"]) for r in rows)
