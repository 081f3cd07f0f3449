"""V-JEPA 2 (Hugging Face) and original V-JEPA / V-JEPA 2 `.pth` checkpoints -> vrl, with parity.

Reference models are tiny random `VJEPA2Model`s from transformers (no downloads), saved in
their native format, converted through `vrl.convert`, and run on the same uint8 clips with each
side's own preprocessing. V-JEPA 1 has no installable reference: its sine-cosine table is
checked against a numpy re-derivation of jepa's `get_3d_sincos_pos_embed`, and its forward
against the HF modules with RoPE switched off plus the stored tables.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vrl import api, convert, weights  # noqa: E402
from vrl.checkpoint import load_meta  # noqa: E402
from vrl.convert import ConversionError, Options  # noqa: E402
from vrl.models import layers, vit  # noqa: E402

# Several shapes: head dims 16 / 48 / 16 rotate 12 / 48 / 12 RoPE channels (the rest pass
# through); tubelets 2 and 1; grids 2x4x4, 4x4x4, 2x5x5; 2 or 10 mask tokens.
SHAPES = {
    "h64_4heads": dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                       pred_hidden_size=32, pred_num_attention_heads=2, pred_num_hidden_layers=2,
                       tubelet_size=2, patch_size=8, frames_per_clip=4, crop_size=32,
                       pred_num_mask_tokens=2),
    "h96_2heads_nobias": dict(hidden_size=96, num_attention_heads=2, num_hidden_layers=1,
                              pred_hidden_size=48, pred_num_attention_heads=4,
                              pred_num_hidden_layers=1, tubelet_size=2, patch_size=16,
                              frames_per_clip=8, crop_size=64, pred_num_mask_tokens=10,
                              qkv_bias=False, layer_norm_eps=1e-5),
    "h32_tubelet1": dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                         pred_hidden_size=16, pred_num_attention_heads=1, pred_num_hidden_layers=1,
                         tubelet_size=1, patch_size=8, frames_per_clip=2, crop_size=40,
                         pred_num_mask_tokens=2),
}  # fmt: skip
BATCH = 2


def tolerance(reference: np.ndarray) -> float:
    """1e-4 relative to the feature scale (and absolute below scale 1)."""
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


def hf_model(shape: dict, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.VJEPA2Config(**shape)
    model = transformers.VJEPA2Model(config).eval()
    with torch.no_grad():  # every weight random, mask tokens and LayerNorms included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def clips(shape: dict, seed: int = 1) -> np.ndarray:
    size, frames = shape["crop_size"], shape["frames_per_clip"]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (BATCH, frames, size, size, 3), dtype=np.uint8)


def hf_pixels(video: np.ndarray) -> "torch.Tensor":
    """HF's own preprocessing (rescale + ImageNet normalisation; clips are already the crop)."""
    processor = transformers.VJEPA2VideoProcessor(do_resize=False, do_center_crop=False)
    out = processor(list(video), return_tensors="pt")
    return out["pixel_values_videos"].float()


def masks(shape: dict, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per example: sorted context indices [B, K] and target indices [B, M] (disjoint)."""
    t = shape["frames_per_clip"] // shape["tubelet_size"]
    n = t * (shape["crop_size"] // shape["patch_size"]) ** 2
    rng = np.random.default_rng(seed)
    keep, target = [], []
    for _ in range(BATCH):
        order = rng.permutation(n)
        keep.append(np.sort(order[: n // 3]))
        target.append(np.sort(order[n // 3 : n // 3 + n // 2]))
    return np.stack(keep).astype(np.int32), np.stack(target).astype(np.int32)


def hf_masked_encoder(model, pixels, keep):
    """V-JEPA 2's masked encoder (vjepa2 `VisionTransformer(x, masks)`) from HF's modules."""
    enc = model.encoder
    x = enc.embeddings(pixels)
    idx = torch.as_tensor(keep, dtype=torch.long)
    x = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
    for layer in enc.layer:
        x = layer(x, position_mask=idx)[0]
    return enc.layernorm(x)


def vrl_predictor(workdir: str, tokens, keep, target, grid, mask_type=1):
    """The converted predictor on encoder tokens [B, N, D] with the same context/targets."""
    meta, _ = load_meta(workdir)
    from vrl.objectives import base  # noqa: PLC0415

    objective = base.build(meta["config"])
    params, _ = weights.restore_variables(workdir, 0, objective, meta)
    predictor = objective.predictor(tokens.shape[-1])
    apply = jax.jit(lambda p, x, k, t: predictor.apply(
        {"params": p}, vit.gather_tokens(x, k), k, grid, mask_type=mask_type, train=False,
        target_idx=t))  # fmt: skip
    out = apply(params["predictor"], jnp.asarray(tokens), jnp.asarray(keep), jnp.asarray(target))
    return np.asarray(out)


def grid_of(shape: dict) -> tuple[int, int, int]:
    g = shape["crop_size"] // shape["patch_size"]
    return shape["frames_per_clip"] // shape["tubelet_size"], g, g


def compare(name: str, ours, reference) -> float:
    ours, reference = np.asarray(ours, np.float32), np.asarray(reference, np.float32)
    assert ours.shape == reference.shape, (name, ours.shape, reference.shape)
    diff = float(np.abs(ours - reference).max())
    print(f"PARITY {name}: max abs diff {diff:.3g} (scale {np.abs(reference).max():.3g})")
    assert diff <= tolerance(reference), (name, diff)
    return diff


# --------------------------------------------------------------------------------------------
# Hugging Face VJEPA2Model


@pytest.fixture(scope="module", params=list(SHAPES))
def hf_case(request, tmp_path_factory):
    shape = SHAPES[request.param]
    model = hf_model(shape)
    root = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(root / "hf")
    workdir = str(root / "run")
    convert.convert("hf_vjepa2", str(root / "hf"), workdir)
    return request.param, shape, model, workdir


def test_hf_encoder_tokens_and_pooled_match(hf_case):
    name, shape, model, workdir = hf_case
    video = clips(shape)
    with torch.no_grad():
        ref = model(hf_pixels(video), skip_predictor=True).last_hidden_state.numpy()
    encoder = api.load_encoder(workdir, batch_size=8)
    compare(f"{name} tokens", encoder.tokens(video), ref)
    compare(f"{name} pooled", encoder.embed(video), ref.mean(axis=1))
    # The HF encoder fills both the online encoder and the target.
    target = api.load_encoder(workdir, which="target", batch_size=8)
    jax.tree.map(np.testing.assert_array_equal, target.variables, encoder.variables)


def test_hf_masked_encoder_and_predictor_match(hf_case):
    name, shape, model, workdir = hf_case
    video = clips(shape)
    keep, target = masks(shape)
    pixels = hf_pixels(video)
    with torch.no_grad():
        tokens = model(pixels, skip_predictor=True).last_hidden_state
        pred = model.predictor(
            tokens, [torch.as_tensor(keep, dtype=torch.long)],
            [torch.as_tensor(target, dtype=torch.long)],
        ).last_hidden_state.numpy()  # fmt: skip
        masked = hf_masked_encoder(model, pixels, keep).numpy()
    encoder = api.load_encoder(workdir, batch_size=8)
    apply = jax.jit(lambda v, x, k: encoder.module.apply(
        v, layers.to_model_input(x, encoder.module), train=False, keep_idx=k))  # fmt: skip
    ours_masked = apply(encoder.variables, jnp.asarray(video), jnp.asarray(keep))
    compare(f"{name} masked encoder (RoPE at kept positions)", ours_masked, masked)
    ours = vrl_predictor(workdir, tokens.numpy(), keep, target, grid_of(shape))
    compare(f"{name} predictor", ours, pred)


def test_hf_config_and_target_encoder(hf_case):
    _, shape, _, workdir = hf_case
    meta, _ = load_meta(workdir)
    model, objective = meta["config"]["model"], meta["config"]["objective"]
    assert model["rope"] and model["posemb"] == "none"
    assert model["ln_epsilon"] == shape.get("layer_norm_eps", 1e-6)
    assert objective["name"] == "vjepa" and objective["predictor_targets"] == "targets_only"
    assert objective["predictor_mask_tokens"] == shape["pred_num_mask_tokens"]


def test_converted_run_trains(tmp_path):
    """The reference predictor in the training loss: context/target masks from the pipeline."""
    shape = SHAPES["h64_4heads"]
    hf_model(shape, seed=8).save_pretrained(tmp_path / "hf")
    workdir = str(tmp_path / "run")
    convert.convert("hf_vjepa2", str(tmp_path / "hf"), workdir)
    from vrl.convert import common  # noqa: PLC0415
    from vrl.objectives import base  # noqa: PLC0415

    meta, _ = load_meta(workdir)
    objective = base.build(meta["config"])
    batch = common.init_batch(objective, (shape["frames_per_clip"], *[shape["crop_size"]] * 2))
    batch["video"] = clips(shape)
    params, extra = weights.restore_variables(workdir, 0, objective, meta)
    loss_fn = jax.jit(lambda p, e, b: objective.loss(p, e, b, jax.random.key(0), False))
    loss, (metrics, _) = loss_fn(params, extra, batch)
    assert np.isfinite(float(loss)) and set(metrics) == {"l1_mask0", "l1_mask1"}


def test_cli_converts_hf_folder(tmp_path):
    shape = SHAPES["h64_4heads"]
    hf_model(shape, seed=3).save_pretrained(tmp_path / "hf")
    cmd = [sys.executable, "-m", "vrl.convert", "--format=hf_vjepa2", f"--src={tmp_path / 'hf'}"]
    done = subprocess.run([*cmd, f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "objective vjepa" in done.stdout
    encoder = api.load_encoder(str(tmp_path / "run"), which="target", batch_size=8)
    assert encoder.tokens(clips(shape)).shape == (BATCH, 2 * 4 * 4, 64)


# --------------------------------------------------------------------------------------------
# Original .pth layouts (facebookresearch/jepa, facebookresearch/vjepa2)


def _np(t) -> np.ndarray:
    return t.detach().numpy().copy()


def original_layer(sd: dict, prefix: str, out: str, result: dict) -> None:
    """One HF layer -> the reference `Block` names (fused attn.qkv)."""
    for norm in ("norm1", "norm2"):
        for p in ("weight", "bias"):
            result[f"{out}.{norm}.{p}"] = sd[f"{prefix}.{norm}.{p}"]
    for p in ("weight", "bias"):
        parts = [f"{prefix}.attention.{n}.{p}" for n in ("query", "key", "value")]
        if all(k in sd for k in parts):
            result[f"{out}.attn.qkv.{p}"] = torch.cat([sd[k] for k in parts])
        result[f"{out}.attn.proj.{p}"] = sd[f"{prefix}.attention.proj.{p}"]
        for fc in ("fc1", "fc2"):
            result[f"{out}.mlp.{fc}.{p}"] = sd[f"{prefix}.mlp.{fc}.{p}"]


def original_checkpoint(model, shape: dict, pos_embed: np.ndarray | None = None,
                        pred_pos_embed: np.ndarray | None = None) -> dict:  # fmt: skip
    """The HF model's weights as jepa / vjepa2 `train.py` saves them (DDP + wrapper prefixes)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    enc = {"patch_embed.proj.weight": sd["encoder.embeddings.patch_embeddings.proj.weight"],
           "patch_embed.proj.bias": sd["encoder.embeddings.patch_embeddings.proj.bias"],
           "norm.weight": sd["encoder.layernorm.weight"],
           "norm.bias": sd["encoder.layernorm.bias"]}  # fmt: skip
    for i in range(shape["num_hidden_layers"]):
        original_layer(sd, f"encoder.layer.{i}", f"blocks.{i}", enc)
    pred = {"predictor_embed.weight": sd["predictor.embeddings.predictor_embeddings.weight"],
            "predictor_embed.bias": sd["predictor.embeddings.predictor_embeddings.bias"],
            "predictor_norm.weight": sd["predictor.layernorm.weight"],
            "predictor_norm.bias": sd["predictor.layernorm.bias"],
            "predictor_proj.weight": sd["predictor.proj.weight"],
            "predictor_proj.bias": sd["predictor.proj.bias"]}  # fmt: skip
    for j, token in enumerate(sd["predictor.embeddings.mask_tokens"]):
        pred[f"mask_tokens.{j}"] = token.reshape(1, 1, -1)
    for i in range(shape["pred_num_hidden_layers"]):
        original_layer(sd, f"predictor.layer.{i}", f"predictor_blocks.{i}", pred)
    if pos_embed is not None:
        enc["pos_embed"] = torch.as_tensor(pos_embed[None])
        pred["predictor_pos_embed"] = torch.as_tensor(pred_pos_embed[None])
    wrap = lambda d: {f"module.backbone.{k}": v.clone() for k, v in d.items()}  # noqa: E731
    return {"encoder": wrap(enc), "predictor": wrap(pred), "target_encoder": wrap(enc),
            "opt": {"state": {}}, "scaler": None, "epoch": 3, "loss": 0.5, "batch_size": 2,
            "world_size": 1, "lr": 1e-4}  # fmt: skip


def pth_options(shape: dict) -> Options:
    heads = f"heads={shape['num_attention_heads']},pred_heads={shape['pred_num_attention_heads']}"
    return Options(frames=shape["frames_per_clip"], image_size=shape["crop_size"], arch=heads)


@pytest.mark.parametrize("name", ["h64_4heads", "h32_tubelet1"])
def test_vjepa2_pth_round_trip_matches_hf(name, tmp_path):
    shape = SHAPES[name]
    model = hf_model(shape, seed=4)
    torch.save(original_checkpoint(model, shape), tmp_path / "vjepa2.pt")
    workdir = str(tmp_path / "run")
    convert.convert("vjepa_pth", str(tmp_path / "vjepa2.pt"), workdir, pth_options(shape))
    video = clips(shape)
    keep, target = masks(shape)
    with torch.no_grad():
        tokens = model(hf_pixels(video), skip_predictor=True).last_hidden_state
        pred = model.predictor(
            tokens, [torch.as_tensor(keep, dtype=torch.long)],
            [torch.as_tensor(target, dtype=torch.long)],
        ).last_hidden_state.numpy()  # fmt: skip
    for which in ("encoder", "target"):
        ours = api.load_encoder(workdir, which=which, batch_size=8).tokens(video)
        compare(f"{name} pth {which} tokens", ours, tokens.numpy())
    compare(f"{name} pth predictor", vrl_predictor(workdir, tokens.numpy(), keep, target,
                                                   grid_of(shape)), pred)  # fmt: skip


# -- V-JEPA 1: sine-cosine tables (no installable reference)


def jepa_table(dim: int, grid_size: int, grid_depth: int, uniform_power: bool) -> np.ndarray:
    """jepa `get_3d_sincos_pos_embed`, re-derived from its source: meshgrid(h, d, w) gives
    rows in (d, h, w) order; channels [depth | height | width], each [sin | cos]; with
    uniform_power every axis gets 2*ceil(dim/6) channels, truncated to dim."""
    gh, gd, gw = np.meshgrid(
        np.arange(grid_size, dtype=float), np.arange(grid_depth, dtype=float),
        np.arange(grid_size, dtype=float),
    )  # fmt: skip
    if uniform_power:
        dh = dw = dd = int(np.ceil(dim / 6) * 2)
    else:
        dh, dw, dd = dim // 4, dim // 4, dim // 2

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(dd, gd), one(dh, gh), one(dw, gw)], axis=1)[:, :dim]


@pytest.mark.parametrize("dim,grid", [(64, (2, 4, 4)), (1024, (8, 14, 14)), (96, (4, 3, 3)),
                                      (40, (3, 5, 5))])  # fmt: skip
def test_sincos_tables_match_jepa(dim, grid):
    t, h, _ = grid
    uniform = vit.sincos_posemb_3d(grid, dim, uniform_power=True)
    np.testing.assert_allclose(uniform, jepa_table(dim, h, t, True), atol=1e-6)
    # vrl's default table is jepa's uniform_power=False one (where jepa's is defined).
    if (dim // 4) % 2 == 0:
        np.testing.assert_allclose(
            vit.sincos_posemb_3d(grid, dim), jepa_table(dim, h, t, False), atol=1e-6
        )


def no_rope(model) -> None:
    """Switches HF's RoPE off, leaving V-JEPA 1's plain attention."""
    for layer in [*model.encoder.layer, *model.predictor.layer]:
        layer.attention.apply_rotary_embeddings = lambda qk, pos: qk


def test_vjepa1_pth_converts_strictly_and_matches(tmp_path):
    shape = SHAPES["h64_4heads"]
    model = hf_model(shape, seed=5)
    t, g, _ = grid_of(shape)
    pos = jepa_table(shape["hidden_size"], g, t, True).astype(np.float32)
    pred_pos = jepa_table(shape["pred_hidden_size"], g, t, True).astype(np.float32)
    torch.save(original_checkpoint(model, shape, pos, pred_pos), tmp_path / "vjepa.pth.tar")
    options = Options(frames=shape["frames_per_clip"], image_size=shape["crop_size"],
                      arch="heads=4,pred_heads=2")  # fmt: skip
    workdir = str(tmp_path / "run")
    config = convert.convert("vjepa_pth", str(tmp_path / "vjepa.pth.tar"), workdir, options)
    assert config["model"]["posemb"] == "sincos_uniform" and not config["model"]["rope"]
    assert config["objective"]["predictor_posemb"] == "sincos_uniform"

    # Reference forward: jepa's ViT = patch embed + table + plain blocks (HF's, RoPE off).
    no_rope(model)
    video = clips(shape)
    keep, target = masks(shape)
    with torch.no_grad():
        x = model.encoder.embeddings(hf_pixels(video)) + torch.as_tensor(pos)
        for layer in model.encoder.layer:
            x = layer(x)[0]
        tokens = model.encoder.layernorm(x)
        pe = model.predictor.embeddings
        ctx = torch.gather(tokens, 1, torch.as_tensor(keep, dtype=torch.long)[..., None]
                           .expand(-1, -1, tokens.shape[-1]))  # fmt: skip
        ctx = pe.predictor_embeddings(ctx) + torch.as_tensor(pred_pos[keep])
        queries = pe.mask_tokens[1].expand(BATCH, target.shape[1], -1) + torch.as_tensor(
            pred_pos[target]
        )
        y = torch.cat([ctx, queries], dim=1)
        for layer in model.predictor.layer:
            y = layer(y)[0]
        pred = model.predictor.proj(model.predictor.layernorm(y)[:, keep.shape[1] :]).numpy()
    encoder = api.load_encoder(workdir, which="target", batch_size=8)
    compare("vjepa1 pth tokens", encoder.tokens(video), tokens.numpy())
    compare("vjepa1 pth predictor", vrl_predictor(workdir, tokens.numpy(), keep, target,
                                                  grid_of(shape)), pred)  # fmt: skip


# -- strictness


def test_pth_lists_every_difference(tmp_path):
    shape = SHAPES["h64_4heads"]
    ckpt = original_checkpoint(hf_model(shape, seed=6), shape)
    ckpt["encoder"]["module.backbone.extra_head.weight"] = torch.zeros(3)
    del ckpt["predictor"]["module.backbone.predictor_norm.bias"]
    ckpt["target_encoder"]["module.backbone.norm.weight"] = torch.zeros(65)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ConversionError) as e:
        convert.convert("vjepa_pth", str(tmp_path / "bad.pt"), str(tmp_path / "run"),
                        pth_options(shape))  # fmt: skip
    message = str(e.value)  # unused, missing and mis-shaped, all in one error
    assert "encoder.extra_head.weight" in message
    assert "target/norm/scale" in message and "predictor/transformer/norm/bias" in message
    ckpt = original_checkpoint(hf_model(shape, seed=6), shape)
    ckpt["surprise"] = {}
    torch.save(ckpt, tmp_path / "bad2.pt")
    with pytest.raises(ConversionError, match="surprise"):
        convert.read("vjepa_pth", str(tmp_path / "bad2.pt"), pth_options(shape))


def test_hf_unknown_key_fails(tmp_path):
    shape = SHAPES["h64_4heads"]
    model = hf_model(shape, seed=7)
    model.save_pretrained(tmp_path / "hf")
    from safetensors.numpy import load_file, save_file  # noqa: PLC0415

    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    tensors["pooler.query_tokens"] = np.zeros((1, 1, 64), np.float32)
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ConversionError, match="pooler.query_tokens"):
        convert.convert("hf_vjepa2", str(tmp_path / "hf"), str(tmp_path / "run"))
