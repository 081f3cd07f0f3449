"""VideoMAE checkpoints -> vrl, proven against the reference implementation (transformers).

Each test builds a tiny random-init Hugging Face VideoMAE model (weights drawn wide so every
bias, norm and position table matters), saves it in its native format, converts it with
`vrl.convert` and runs the same uint8 clips through both sides with each side's own
preprocessing (HF's VideoMAEImageProcessor vs vrl's `layers.to_model_input`). The `.pth` tests
write the original MCG-NJU/VideoMAE key layout (fused qkv, q_bias/v_bias, encoder./decoder.)
from the HF model's weights. No downloads.
"""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vrl import api, convert, weights  # noqa: E402
from vrl import checkpoint as ckpt_lib  # noqa: E402
from vrl.data import masks  # noqa: E402
from vrl.objectives import base  # noqa: E402

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TOL = 1e-4  # max abs difference, relative to the feature scale (max(1, max |reference|))

# Tiny shapes: widths, head counts, patch/tubelet sizes, clip lengths and sizes all vary.
SHAPES = {
    "w64_h2_p8_t4_s32": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        patch_size=8,
        tubelet_size=2,
        num_frames=4,
        image_size=32,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    ),
    "w48_h4_p16_t8_s64": dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=80,
        patch_size=16,
        tubelet_size=2,
        num_frames=8,
        image_size=64,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=3,
        decoder_intermediate_size=40,
    ),
}


def hf_model(cls_name: str, seed: int = 0, **config):
    """A random-init HF model with every parameter drawn N(0, 0.2) (norm scales around 1)."""
    torch.manual_seed(seed)
    cfg = transformers.VideoMAEConfig(**config)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            is_scale = "norm" in name and name.endswith("weight")
            param.normal_(1.0 if is_scale else 0.0, 0.2)
    return model


def hf_pixels(video: np.ndarray, size: int):
    """uint8 [B, T, H, W, 3] -> HF pixel_values [B, T, 3, H, W] via VideoMAEImageProcessor."""
    processor = transformers.VideoMAEImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=IMAGENET[0],
        image_std=IMAGENET[1],
    )
    return processor([list(clip) for clip in video], return_tensors="pt")["pixel_values"]


def clips(shape: dict, batch: int = 2, seed: int = 0) -> np.ndarray:
    t, s = shape["num_frames"], shape["image_size"]
    return np.random.default_rng(seed).integers(0, 256, (batch, t, s, s, 3), dtype=np.uint8)


def max_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max())


def assert_close(ours, ref, what: str, tol: float = TOL) -> float:
    diff = max_diff(ours, ref)
    scale = max(1.0, float(np.abs(np.asarray(ref)).max()))
    assert diff <= tol * scale, f"{what}: max abs diff {diff:.3g} (scale {scale:.3g})"
    print(f"PARITY {what}: max abs diff {diff:.3g} (scale {scale:.3g})")
    return diff


def restore(workdir: str):
    """(objective, params, extra) of a converted run, strictly restored."""
    meta, step = ckpt_lib.load_meta(workdir, None)
    objective = base.build(meta["config"])
    params, extra = weights.restore_variables(workdir, step, objective, meta)
    return meta["config"], objective, params, extra


def tube_masks(grid, batch: int, seed: int = 0):
    """vrl's tube masks (bool [B, N], keep_idx [B, K]) for `grid`."""
    op = masks.tube_mask(grid=grid, ratio=0.75)
    rng = np.random.default_rng(seed)
    out = [op({}, rng) for _ in range(batch)]
    return np.stack([o["mask"] for o in out]), np.stack([o["keep_idx"] for o in out])


# ------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("name", list(SHAPES))
def test_hf_model_tokens_and_pooled(tmp_path, name):
    shape = SHAPES[name]
    model = hf_model("VideoMAEModel", **shape)
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert config["objective"]["name"] == "encoder_only"
    assert config["model"]["posemb"] == "sincos_1d" and config["model"]["final_norm"] is False
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video, shape["image_size"])).last_hidden_state.numpy()
    encoder = api.load_encoder(str(tmp_path / "run"), batch_size=8)
    assert_close(encoder.tokens(video), ref, f"{name} tokens")
    assert_close(encoder.embed(video), ref.mean(1), f"{name} pooled")
    # Shorter, smaller clips load too (the 1-D table is recomputed for their token count).
    small = video[
        :, : shape["num_frames"] // 2, : shape["image_size"] // 2, : shape["image_size"] // 2
    ]
    assert np.isfinite(encoder.embed(small)).all()


def test_hf_model_learned_posemb_and_layernorm(tmp_path):
    """use_mean_pooling=False (final LayerNorm) and a stored (learned) position table."""
    shape = {**SHAPES["w64_h2_p8_t4_s32"], "use_mean_pooling": False, "qv_bias": False}
    model = hf_model("VideoMAEModel", **shape)
    n = model.embeddings.num_patches
    learned = torch.randn(1, n, shape["hidden_size"]) * 0.5
    model.embeddings.position_embeddings = learned
    model.save_pretrained(tmp_path / "hf")
    # Store the learned table as the checkpoint's position_embeddings tensor.
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["embeddings.position_embeddings"] = learned.numpy()
    save_file(tensors, str(path), metadata={"format": "pt"})
    config = convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert config["model"]["posemb"] == "learned" and config["model"]["qkv_bias"] == "none"
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video, shape["image_size"])).last_hidden_state.numpy()
    encoder = api.load_encoder(str(tmp_path / "run"), batch_size=8)
    assert_close(encoder.tokens(video), ref, "learned posemb tokens")


# ------------------------------------------------------------------------ classification


@pytest.mark.parametrize("name", list(SHAPES))
def test_hf_classification_logits(tmp_path, name):
    shape = SHAPES[name]
    model = hf_model("VideoMAEForVideoClassification", num_labels=5, **shape)
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert config["objective"]["name"] == "supervised"
    assert config["objective"]["num_classes"] == 5 and config["objective"]["head_norm"]
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video, shape["image_size"])).logits.numpy()
    _, objective, params, extra = restore(str(tmp_path / "run"))
    logits, _ = objective.logits(params, extra, video, jax.random.key(0), train=False)
    assert_close(logits, ref, f"{name} logits")


def test_cli_classification_on_real_video(tmp_path):
    """The issue's done-when: the real CLI, a real decoded video, the same logits."""
    import av

    from tests import videos

    shape = {**SHAPES["w48_h4_p16_t8_s64"]}
    model = hf_model("VideoMAEForVideoClassification", num_labels=7, seed=3, **shape)
    model.save_pretrained(tmp_path / "hf")
    cmd = [
        sys.executable,
        "-m",
        "vrl.convert",
        "--format=hf_videomae",
        f"--src={tmp_path / 'hf'}",
        f"--workdir={tmp_path / 'run'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "objective supervised" in done.stdout

    # 8 consecutive frames of real footage, centre-cropped square and resized to 64 px with
    # vrl's own resize; both sides then preprocess these same uint8 frames.
    with av.open(videos.footage("bikes.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), container.decode(video=0))]
    from vrl.data import spatial

    example = {"video": np.stack(frames)[None]}
    rng = np.random.default_rng(0)
    example = spatial.resize_short(64)(example, rng)
    example = spatial.center_crop(64)(example, rng)
    video = example["video"]  # [1, 8, 64, 64, 3] uint8
    assert video.shape == (1, 8, 64, 64, 3) and video.std() > 10

    with torch.no_grad():
        ref = model(hf_pixels(video, 64)).logits.numpy()
    _, objective, params, extra = restore(str(tmp_path / "run"))
    logits, _ = objective.logits(params, extra, video, jax.random.key(0), train=False)
    assert_close(logits, ref, "real video logits (CLI)")


# ---------------------------------------------------------------------------- pretraining


def hf_pretraining_outputs(model, video, mask, size):
    with torch.no_grad():
        out = model(hf_pixels(video, size), bool_masked_pos=torch.from_numpy(mask))
    return out.logits.numpy(), float(out.loss)


def vrl_pretraining_outputs(workdir, video, mask, keep_idx):
    """(decoder predictions at the hidden tokens, in index order [B, M, P]; the loss)."""
    _, objective, params, extra = restore(workdir)
    batch = {"video": video, "mask": mask, "keep_idx": keep_idx}
    loss, _ = objective.loss(params, extra, batch, jax.random.key(0), train=False)
    from vrl.models import layers

    x = layers.to_model_input(video, objective.encoder)
    tokens = objective.encoder.apply(
        {"params": params["encoder"]}, x, train=False, keep_idx=keep_idx
    )
    grid = objective.encoder.token_grid(*x.shape[1:4])
    pred = objective.decoder.apply(
        {"params": params["decoder"]}, tokens, keep_idx, grid, train=False
    )
    pred = np.asarray(pred)
    hidden = np.stack([np.flatnonzero(m) for m in mask])
    return np.take_along_axis(pred, hidden[..., None], axis=1), float(loss)


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("mean_pooling", [True, False])
def test_hf_pretraining_decoder_and_loss(tmp_path, name, mean_pooling):
    shape = SHAPES[name]
    model = hf_model("VideoMAEForPreTraining", use_mean_pooling=mean_pooling, **shape)
    model.save_pretrained(tmp_path / "hf")
    config = convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert config["objective"]["name"] == "videomae"
    assert config["objective"]["norm_pix_eps_inside_sqrt"] is False
    video = clips(shape)
    t, p, s = shape["tubelet_size"], shape["patch_size"], shape["image_size"]
    grid = (shape["num_frames"] // t, s // p, s // p)
    mask, keep_idx = tube_masks(grid, len(video))
    ref_pred, ref_loss = hf_pretraining_outputs(model, video, mask, s)
    pred, loss = vrl_pretraining_outputs(str(tmp_path / "run"), video, mask, keep_idx)
    assert_close(pred, ref_pred, f"{name} mean_pooling={mean_pooling} decoder output")
    assert abs(loss - ref_loss) <= 1e-5, (loss, ref_loss)
    print(f"PARITY {name} mean_pooling={mean_pooling} loss: |diff| {abs(loss - ref_loss):.3g}")


# ----------------------------------------------------------------------- original .pth files


def original_block(sd: dict, hf: dict, src: str, dst: str) -> None:
    """One HF layer's tensors under the original repos' key names (fused qkv, q_bias/v_bias)."""
    att = src + "attention.attention."
    sd[dst + "norm1.weight"] = hf[src + "layernorm_before.weight"]
    sd[dst + "norm1.bias"] = hf[src + "layernorm_before.bias"]
    sd[dst + "norm2.weight"] = hf[src + "layernorm_after.weight"]
    sd[dst + "norm2.bias"] = hf[src + "layernorm_after.bias"]
    sd[dst + "attn.qkv.weight"] = torch.cat(
        [hf[att + "query.weight"], hf[att + "key.weight"], hf[att + "value.weight"]]
    )
    sd[dst + "attn.q_bias"] = hf[att + "query.bias"]
    sd[dst + "attn.v_bias"] = hf[att + "value.bias"]
    for ours, theirs in (
        ("attn.proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    ):
        sd[dst + ours + ".weight"] = hf[src + theirs + ".weight"]
        sd[dst + ours + ".bias"] = hf[src + theirs + ".bias"]


def original_state_dict(model) -> dict:
    """The MCG-NJU/VideoMAE state dict of an HF VideoMAE model (pretraining or classifier)."""
    hf = {k.removeprefix("videomae."): v for k, v in model.state_dict().items()}
    sd = {}
    pretrain = isinstance(model, transformers.VideoMAEForPreTraining)
    enc = "encoder." if pretrain else ""
    sd[enc + "patch_embed.proj.weight"] = hf["embeddings.patch_embeddings.projection.weight"]
    sd[enc + "patch_embed.proj.bias"] = hf["embeddings.patch_embeddings.projection.bias"]
    for i in range(model.config.num_hidden_layers):
        original_block(sd, hf, f"encoder.layer.{i}.", f"{enc}blocks.{i}.")
    if "layernorm.weight" in hf:
        sd[enc + "norm.weight"], sd[enc + "norm.bias"] = (
            hf["layernorm.weight"],
            hf["layernorm.bias"],
        )
    if pretrain:
        for i in range(model.config.decoder_num_hidden_layers):
            original_block(sd, hf, f"decoder.decoder_layers.{i}.", f"decoder.blocks.{i}.")
        for name in ("decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight"):
            sd[name] = hf[name]
        sd["decoder.head.bias"] = hf["decoder.head.bias"]
        sd["encoder_to_decoder.weight"] = hf["encoder_to_decoder.weight"]
        sd["mask_token"] = hf["mask_token"]
    else:
        sd["fc_norm.weight"], sd["fc_norm.bias"] = hf["fc_norm.weight"], hf["fc_norm.bias"]
        sd["head.weight"], sd["head.bias"] = hf["classifier.weight"], hf["classifier.bias"]
    return {k: v.clone() for k, v in sd.items()}


def original_epsilons(model) -> None:
    """The original repos use LayerNorm(eps=1e-6) everywhere; make the HF reference match."""
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6


@pytest.mark.parametrize("name", list(SHAPES))
def test_pth_classifier_round_trip(tmp_path, name):
    shape = {**SHAPES[name], "layer_norm_eps": 1e-6}
    model = hf_model("VideoMAEForVideoClassification", num_labels=3, **shape)
    original_epsilons(model)
    path = tmp_path / "videomae_ft.pth"
    torch.save({"module": original_state_dict(model), "epoch": 3}, path)
    arch = f"heads={shape['num_attention_heads']}"
    options = convert.Options(frames=shape["num_frames"], image_size=shape["image_size"], arch=arch)
    config = convert.convert("videomae_pth", str(path), str(tmp_path / "run"), options)
    assert config["objective"]["name"] == "supervised" and config["model"]["qkv_bias"] == "qv"
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video, shape["image_size"])).logits.numpy()
    _, objective, params, extra = restore(str(tmp_path / "run"))
    logits, _ = objective.logits(params, extra, video, jax.random.key(0), train=False)
    assert_close(logits, ref, f"{name} pth logits")


@pytest.mark.parametrize("name", list(SHAPES))
def test_pth_pretraining_round_trip(tmp_path, name):
    shape = {**SHAPES[name], "layer_norm_eps": 1e-6}
    model = hf_model("VideoMAEForPreTraining", use_mean_pooling=False, **shape)
    original_epsilons(model)
    path = tmp_path / "videomae_pretrain.pth"
    torch.save({"model": original_state_dict(model)}, path)
    arch = (
        f"heads={shape['num_attention_heads']},decoder_heads={shape['decoder_num_attention_heads']}"
    )
    options = convert.Options(frames=shape["num_frames"], image_size=shape["image_size"], arch=arch)
    config = convert.convert("videomae_pth", str(path), str(tmp_path / "run"), options)
    assert config["objective"]["name"] == "videomae" and config["model"]["final_norm"] is True
    video = clips(shape)
    t, p, s = shape["tubelet_size"], shape["patch_size"], shape["image_size"]
    mask, keep_idx = tube_masks((shape["num_frames"] // t, s // p, s // p), len(video), seed=1)
    ref_pred, ref_loss = hf_pretraining_outputs(model, video, mask, s)
    pred, loss = vrl_pretraining_outputs(str(tmp_path / "run"), video, mask, keep_idx)
    assert_close(pred, ref_pred, f"{name} pth decoder output")
    assert abs(loss - ref_loss) <= 1e-5, (loss, ref_loss)
    print(f"PARITY {name} pth loss: |diff| {abs(loss - ref_loss):.3g}")


def test_pth_layer_scale(tmp_path):
    """VideoMAE V2 / init_values > 0 checkpoints: gamma_1/gamma_2 convert as layer scale."""
    shape = {**SHAPES["w64_h2_p8_t4_s32"], "layer_norm_eps": 1e-6}
    model = hf_model("VideoMAEForVideoClassification", num_labels=3, **shape)
    original_epsilons(model)
    sd = original_state_dict(model)
    gammas = {}
    for i in range(shape["num_hidden_layers"]):
        for g in (1, 2):
            gammas[(i, g)] = torch.rand(shape["hidden_size"]) + 0.5
            sd[f"blocks.{i}.gamma_{g}"] = gammas[(i, g)]

    # The reference forward with layer scale: scale each residual branch of the HF layers.
    def scaled(layer, i):
        attention, output = layer.attention.output, layer.output
        attn_forward, out_forward = attention.forward, output.forward
        attention.forward = lambda h, x: attn_forward(h, x) * gammas[(i, 1)]
        output.forward = lambda h, x: out_forward(h, torch.zeros_like(x)) * gammas[(i, 2)] + x

    for i, layer in enumerate(model.videomae.encoder.layer):
        scaled(layer, i)
    path = tmp_path / "v2.pth"
    torch.save({"model": sd}, path)
    options = convert.Options(frames=4, image_size=32, arch="heads=2")
    config = convert.convert("videomae_pth", str(path), str(tmp_path / "run"), options)
    assert config["model"]["layer_scale"] is True
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video, 32)).logits.numpy()
    _, objective, params, extra = restore(str(tmp_path / "run"))
    logits, _ = objective.logits(params, extra, video, jax.random.key(0), train=False)
    assert_close(logits, ref, "pth layer-scale logits")


# ------------------------------------------------------------------------ strictness, sizes


def test_every_difference_is_listed(tmp_path):
    """An extra key, a missing key and a wrong shape: one error naming each of them."""
    model = hf_model("VideoMAEForVideoClassification", num_labels=3, **SHAPES["w64_h2_p8_t4_s32"])
    model.save_pretrained(tmp_path / "hf")
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["videomae.extra.weight"] = np.zeros(3, np.float32)
    del tensors["videomae.encoder.layer.1.output.dense.bias"]
    tensors["classifier.bias"] = np.zeros(4, np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(convert.ConversionError) as missing:
        convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    message = str(missing.value)
    assert "missing tensor videomae.encoder.layer.1.output.dense.bias" in message
    assert "unused source tensor videomae.extra.weight" in message

    tensors["videomae.encoder.layer.1.output.dense.bias"] = np.zeros(64, np.float32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(convert.ConversionError) as wrong:
        convert.convert("hf_videomae", str(tmp_path / "hf"), str(tmp_path / "run"))
    message = str(wrong.value)
    assert "unused source tensor videomae.extra.weight" in message
    assert "shape head/logits/bias: saved (4,), expected (3,)" in message
    assert not (tmp_path / "run" / "checkpoints" / "0").exists()


def test_learned_posemb_loads_at_another_clip_size(tmp_path):
    """A learned-table checkpoint converted at its training clip embeds smaller, shorter clips
    (the table is resized trilinearly), as probing 16x224 weights at 8x112 needs."""
    shape = {**SHAPES["w64_h2_p8_t4_s32"], "num_frames": 8, "image_size": 32}
    model = hf_model("VideoMAEForPreTraining", use_mean_pooling=False, **shape)
    sd = original_state_dict(model)
    sd["encoder.pos_embed"] = torch.randn(1, 4 * 4 * 4, shape["hidden_size"])
    path = tmp_path / "learned.pth"
    torch.save({"model": sd}, path)
    options = convert.Options(frames=8, image_size=32, arch="heads=2,decoder_heads=2")
    config = convert.convert("videomae_pth", str(path), str(tmp_path / "run"), options)
    assert config["model"]["posemb"] == "learned"
    assert tuple(config["model"]["posemb_grid"]) == (4, 4, 4)
    encoder = api.load_encoder(str(tmp_path / "run"), batch_size=8)
    small = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    features = encoder.embed(small)
    assert features.shape == (2, 64) and np.isfinite(features).all()
    assert encoder.tokens(small).shape == (2, 2 * 2 * 2, 64)
