"""VideoMAE / VideoMAE V2 checkpoints -> vrl: Hugging Face folders and the original `.pth` files.

`from_hf` reads a folder written by `save_pretrained` for `VideoMAEModel` (-> objective
`encoder_only`), `VideoMAEForPreTraining` (-> `videomae`, encoder + decoder) or
`VideoMAEForVideoClassification` (-> `supervised` with VideoMAE's fc_norm + linear head). Every
size comes from `config.json`. Both attention layouts are read: `query.bias`/`value.bias` (what
transformers writes today) and `q_bias`/`v_bias` (what the checkpoints on the Hub hold).

`from_pth` reads the state dicts that MCG-NJU/VideoMAE and OpenGVLab/VideoMAEv2 write (under
"model" or "module", or bare): fused `qkv` weights with `q_bias`/`v_bias` (the key bias is a
fixed zero), `encoder.`/`decoder.` prefixes, `encoder_to_decoder` and `mask_token` for
pretraining checkpoints, `fc_norm` + `head` for fine-tuned ones, and layer scale
(`gamma_1`/`gamma_2`, init_values > 0) when present. Widths, depth, patch and MLP size come from
the tensor shapes; what a state dict does not record is taken from `Options` or the published
defaults: 16 frames, 224 px, LayerNorm epsilon 1e-6, normalised-pixel loss, and the head count
of the ViT size of that width (`SIZES`; width // 64 otherwise, as every published decoder).
`--arch` may name a size ("S", "B", ...) or give "heads=H,decoder_heads=H" for other models.

Both produce exactly the published maths through model options: VideoMAE's 1-D sin-cos table
(posemb "sincos_1d"), learned tables, q/v-only biases, the reference LayerNorm epsilons, no
final norm with mean pooling, and the reference std of normalised-pixel targets. Fixed
position tables are never parameters in these files; when one is present anyway it must equal
the table vrl recomputes, or it is taken as a learned table.
"""

import json
import re
from pathlib import Path

import numpy as np

from vrl.convert import common
from vrl.convert.common import ConversionError, Converted, Tensors
from vrl.models import layers, vit

# Published VideoMAE pixel statistics (ImageNet's) and LayerNorm epsilons.
PTH_LN_EPS = 1e-6
HF_HEAD_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default: HF's fc_norm and decoder.norm
DEFAULT_FRAMES, DEFAULT_SIZE = 16, 224

# vrl block parameter -> source name, per layout.
_HF_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attention/out": "attention.output.dense",
    "mlp/fc1": "intermediate.dense",
    "mlp/fc2": "output.dense",
}
_PTH_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention/out": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


class _Reader:
    """Takes tensors from a `Tensors`, recording every missing key instead of stopping at the
    first, so that one error lists every difference."""

    def __init__(self, tensors: Tensors, converted: Converted):
        self.tensors = tensors
        self.c = converted
        self.missing: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str) -> np.ndarray | None:
        if key not in self.tensors:
            self.missing.append(key)
            return None
        return self.tensors.take(key)

    def put(self, path: str, value: np.ndarray | None, source: str) -> None:
        if value is not None:
            self.c.put(path, value, source)

    def linear(self, key: str, path: str, bias: bool = True) -> None:
        """torch Linear [out, in] -> Dense kernel [in, out] (+ bias)."""
        weight = self.take(f"{key}.weight")
        self.put(f"{path}/kernel", None if weight is None else weight.T, f"{key}.weight")
        if bias:
            self.put(f"{path}/bias", self.take(f"{key}.bias"), f"{key}.bias")

    def norm(self, key: str, path: str) -> None:
        self.put(f"{path}/scale", self.take(f"{key}.weight"), f"{key}.weight")
        self.put(f"{path}/bias", self.take(f"{key}.bias"), f"{key}.bias")

    def finish(self) -> None:
        """Raises listing every missing and every unused source tensor (shapes are checked
        against the model later, by `common.check`)."""
        if self.missing:
            problems = [f"missing tensor {k}" for k in self.missing]
            problems += [f"unused source tensor {k}" for k in self.tensors.unused()]
            raise ConversionError(
                f"{self.tensors.source}: cannot convert without losing or inventing weights "
                f"({len(problems)} problems): " + "; ".join(problems)
            )


def _reshape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`array` in `shape` when its size fits; else as it is, so the shape check reports it."""
    return array.reshape(shape) if array.size == int(np.prod(shape)) else array


def _attention(
    r: _Reader,
    path: str,
    heads: int,
    weights: tuple[tuple[str, np.ndarray | None], ...],
    biases: dict[str, tuple[str, np.ndarray | None]],
) -> None:
    """q/k/v Linear weights [H*hd, D] (and biases [H*hd]) -> Einsum kernels [D, H, hd]."""
    for name, (key, weight) in zip(("query", "key", "value"), weights):
        if weight is None:
            continue
        width = weight.shape[1]
        head_dim = weight.shape[0] // heads
        r.put(f"{path}/{name}/kernel", _reshape(weight.T, (width, heads, head_dim)), key)
        if name in biases:
            key, bias = biases[name]
            r.put(
                f"{path}/{name}/bias",
                None if bias is None else _reshape(bias, (heads, bias.size // heads)),
                key,
            )


def _out_projection(r: _Reader, key: str, path: str, heads: int) -> None:
    """Attention output Linear [D, H*hd] -> Einsum kernel [H, hd, D]."""
    weight = r.take(f"{key}.weight")
    if weight is not None:
        width = weight.shape[0]
        kernel = _reshape(weight.T, (heads, weight.shape[1] // heads, width))
        r.put(f"{path}/kernel", kernel, f"{key}.weight")
    r.put(f"{path}/bias", r.take(f"{key}.bias"), f"{key}.bias")


def _block(r: _Reader, src: str, path: str, heads: int, layout: str, qkv_bias: str) -> None:
    """One transformer block, HF (`layout="hf"`) or original (`"pth"`) key names."""
    names = _HF_BLOCK if layout == "hf" else _PTH_BLOCK
    r.norm(src + names["norm1"], f"{path}/norm1")
    r.norm(src + names["norm2"], f"{path}/norm2")
    _out_projection(r, src + names["attention/out"], f"{path}/attention/out", heads)
    r.linear(src + names["mlp/fc1"], f"{path}/mlp/fc1")
    r.linear(src + names["mlp/fc2"], f"{path}/mlp/fc2")
    if layout == "hf":
        att = src + "attention.attention."
        weights = tuple(
            (f"{att}{n}.weight", r.take(f"{att}{n}.weight")) for n in ("query", "key", "value")
        )
        biases = {}
        if qkv_bias != "none":
            for name, legacy in (("query", "q_bias"), ("value", "v_bias")):
                key = f"{att}{legacy}" if r.has(f"{att}{legacy}") else f"{att}{name}.bias"
                biases[name] = (key, r.take(key))
        if qkv_bias == "qkv":
            biases["key"] = (f"{att}key.bias", r.take(f"{att}key.bias"))
    else:
        key = src + "attn.qkv.weight"
        fused = r.take(key)
        parts = [None] * 3 if fused is None else np.split(fused, 3, axis=0)
        weights = tuple((key, part) for part in parts)
        biases = {}
        if qkv_bias != "none":
            for name, short in (("query", "q_bias"), ("value", "v_bias")):
                biases[name] = (src + "attn." + short, r.take(src + "attn." + short))
        if r.has(src + "attn.scale"):
            raise ConversionError(
                f"{r.tensors.source}: {src}attn.scale is VideoMAE V2's cosine attention "
                "(cos_attn=True), which vrl does not implement; convert a checkpoint trained "
                "with cos_attn=False"
            )
        if r.has(src + "gamma_1") or r.has(src + "gamma_2"):
            r.put(f"{path}/gamma1", r.take(src + "gamma_1"), src + "gamma_1")
            r.put(f"{path}/gamma2", r.take(src + "gamma_2"), src + "gamma_2")
    _attention(r, f"{path}/attention", heads, weights, biases)


def _patch_embed(r: _Reader, key: str, path: str) -> tuple[int, tuple[int, int, int]]:
    """Conv3d weight [D, C, pt, ph, pw] -> Dense kernel [(pt ph pw c), D]; (width, patch)."""
    weight = r.tensors.take(f"{key}.weight") if r.has(f"{key}.weight") else None
    if weight is None or weight.ndim != 5 or weight.shape[1] != 3:
        raise ConversionError(
            f"{r.tensors.source}: {key}.weight must be a Conv3d kernel [D, 3, pt, ph, pw] "
            f"(RGB tubelets), got {None if weight is None else list(weight.shape)}"
        )
    width, _, pt, ph, pw = weight.shape
    kernel = weight.transpose(2, 3, 4, 1, 0).reshape(-1, width)
    r.put(f"{path}/projection/kernel", kernel, f"{key}.weight")
    r.put(f"{path}/projection/bias", r.take(f"{key}.bias"), f"{key}.bias")
    return width, (pt, ph, pw)


def _position_table(r: _Reader, key: str, path: str, grid: tuple[int, int, int], width: int) -> str:
    """ "sincos_1d" when `key` is absent or holds VideoMAE's fixed table; else "learned" (taken)."""
    if not r.has(key):
        return "sincos_1d"
    table = r.tensors.take(key)
    n = int(np.prod(grid))
    if table.shape != (1, n, width):
        raise ConversionError(
            f"{r.tensors.source}: {key} has shape {list(table.shape)}, expected [1, {n}, {width}] "
            f"for a {grid} token grid; pass the clip it was trained on (--frames, --image_size)"
        )
    if np.allclose(table[0], vit.sincos_posemb_1d(n, width), atol=1e-5):
        return "sincos_1d"  # the fixed table, stored anyway: vrl recomputes it
    r.put(path, table[0].reshape(*grid, width), key)
    return "learned"


def _vit_config(
    width: int,
    depth: int,
    heads: int,
    mlp_dim: int,
    patch: tuple,
    grid: tuple,
    posemb: str,
    qkv_bias: str,
    ln_epsilon: float,
    *,
    layer_scale: bool,
    final_norm: bool,
) -> dict:
    size = next((s for s, dims in vit.SIZES.items() if dims[0] == width), "B")
    model = {
        "name": "vit",
        "size": size,
        "width": width,
        "depth": depth,
        "heads": heads,
        "mlp_dim": mlp_dim,
        "patch": tuple(patch),
        "posemb": posemb,
        "qkv_bias": qkv_bias,
        "ln_epsilon": float(ln_epsilon),
        "layer_scale": layer_scale,
        "final_norm": final_norm,
        "pixel_norm": "imagenet",
    }
    if posemb == "learned":
        model["posemb_grid"] = tuple(grid)
    return model


def _count(tensors: Tensors, pattern: str) -> int:
    found = {int(m.group(1)) for k in tensors.keys() if (m := re.match(pattern, k))}
    if found and found != set(range(len(found))):
        raise ConversionError(
            f"{tensors.source}: blocks {sorted(found)} are not numbered 0..{len(found) - 1}"
        )
    return len(found)


def _grid(clip: tuple[int, int, int], patch: tuple[int, int, int], source: str) -> tuple:
    try:
        return vit.token_grid_of(clip, patch)
    except ValueError as e:
        raise ConversionError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------- Hugging Face


_HF_ARCHITECTURES = ("VideoMAEModel", "VideoMAEForPreTraining", "VideoMAEForVideoClassification")


def from_hf(src: str, options) -> tuple[Converted, Tensors]:
    """A Hugging Face VideoMAE folder (config.json + safetensors/bin) in vrl's terms.

    Sizes come from config.json (`options` is not needed); the objective follows the
    architecture: encoder_only, videomae (pretraining) or supervised (classification).
    """
    del options  # everything is in config.json
    cfg = common.read_config_json(src)
    source = str(Path(src).expanduser())
    tensors = Tensors(common.read_tensors(src), source)
    archs = [a for a in cfg.get("architectures") or [] if a in _HF_ARCHITECTURES]
    if archs:
        arch = archs[0]
    elif any(k.startswith("decoder.") for k in tensors.keys()):
        arch = "VideoMAEForPreTraining"
    elif "classifier.weight" in tensors:
        arch = "VideoMAEForVideoClassification"
    else:
        arch = "VideoMAEModel"
    if cfg.get("model_type", "videomae") != "videomae":
        raise ConversionError(
            f"{source}/config.json: model_type {cfg.get('model_type')!r} is not 'videomae'"
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(
            f"{source}/config.json: hidden_act {cfg['hidden_act']!r} is not supported; "
            "allowed: 'gelu' (exact erf GELU, as vrl's Mlp)"
        )
    if cfg.get("num_channels", 3) != 3:
        raise ConversionError(f"{source}/config.json: num_channels must be 3 (RGB)")
    pixel_norm = _hf_pixel_norm(src)
    prefix = "videomae." if arch != "VideoMAEModel" else ""
    if arch != "VideoMAEModel" and not any(k.startswith(prefix) for k in tensors.keys()):
        prefix = ""

    image = cfg.get("image_size", DEFAULT_SIZE)
    image = tuple(image) if isinstance(image, list | tuple) else (image, image)
    clip = (cfg.get("num_frames", DEFAULT_FRAMES), *image)
    heads = cfg.get("num_attention_heads", 12)
    ln_eps = cfg.get("layer_norm_eps", 1e-12)
    qv_bias = cfg.get("qv_bias", cfg.get("qkv_bias", True))
    qkv_bias = "qv" if qv_bias else "none"
    mean_pooling = cfg.get("use_mean_pooling", True)

    objective = {"name": "encoder_only"}
    c = Converted(model={}, objective=objective, clip=clip)
    r = _Reader(tensors, c)
    width, patch = _patch_embed(
        r, f"{prefix}embeddings.patch_embeddings.projection", "params/encoder/embed"
    )
    grid = _grid(clip, patch, source)
    depth = _count(tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    for i in range(depth):
        _block(r, f"{prefix}encoder.layer.{i}.", f"params/encoder/block{i}", heads, "hf", qkv_bias)
    final_norm = not mean_pooling
    if final_norm:
        r.norm(f"{prefix}layernorm", "params/encoder/norm")
    posemb = _position_table(
        r, f"{prefix}embeddings.position_embeddings", "params/encoder/embed/posemb", grid, width
    )
    mlp_dim = cfg.get("intermediate_size", 4 * width)
    c.model = _vit_config(
        width, depth, heads, mlp_dim, patch, grid, posemb, qkv_bias, ln_eps,
        layer_scale=False, final_norm=final_norm,
    )  # fmt: skip
    c.model["pixel_norm"] = pixel_norm

    if arch == "VideoMAEForPreTraining":
        c.objective = _hf_decoder(r, cfg, qkv_bias, ln_eps, grid)
    elif arch == "VideoMAEForVideoClassification":
        if not mean_pooling:
            raise ConversionError(
                f"{source}/config.json: use_mean_pooling=false classifies token 0 of the "
                "sequence, which vrl's pooling does not do; only mean pooling + fc_norm converts"
            )
        r.norm("fc_norm", "params/head/norm")
        r.linear("classifier", "params/head/logits")
        num_classes = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 2
        c.objective = {
            "name": "supervised",
            "num_classes": int(num_classes),
            "head_norm": True,
            "head_norm_epsilon": HF_HEAD_NORM_EPS,
        }
    r.finish()
    return c, tensors


def _hf_pixel_norm(src: str) -> str:
    """vrl's name for the pixel statistics in `preprocessor_config.json` ("imagenet", as every
    published VideoMAE, when the folder has none)."""
    path = Path(src).expanduser() / "preprocessor_config.json"
    if not path.is_file():
        return "imagenet"
    pp = json.loads(path.read_text())
    mean, std = pp.get("image_mean"), pp.get("image_std")
    for name, (ref_mean, ref_std) in layers.PIXEL_STATS.items():
        if mean is not None and np.allclose(mean, ref_mean) and np.allclose(std, ref_std):
            return name
    raise ConversionError(
        f"{path}: image_mean={mean}, image_std={std} match no vrl pixel_norm; allowed: "
        + ", ".join(f"{n} {m}/{s}" for n, (m, s) in layers.PIXEL_STATS.items())
    )


def _hf_decoder(r: _Reader, cfg: dict, qkv_bias: str, ln_eps: float, grid: tuple) -> dict:
    heads = cfg.get("decoder_num_attention_heads", 6)
    depth = _count(r.tensors, r"decoder\.decoder_layers\.(\d+)\.")
    for i in range(depth):
        _block(
            r,
            f"decoder.decoder_layers.{i}.",
            f"params/decoder/transformer/block{i}",
            heads,
            "hf",
            qkv_bias,
        )
    _decoder_common(r, "decoder.norm", "decoder.head", "")
    _position_table_fixed(r, "position_embeddings", grid, cfg.get("decoder_hidden_size", 384))
    return {
        "name": "videomae",
        "decoder_width": cfg.get("decoder_hidden_size", 384),
        "decoder_depth": depth,
        "decoder_heads": heads,
        "decoder_mlp_dim": cfg.get("decoder_intermediate_size", 1536),
        "decoder_posemb": "sincos_1d",
        "decoder_qkv_bias": qkv_bias,
        "decoder_ln_epsilon": float(ln_eps),
        "decoder_norm_epsilon": HF_HEAD_NORM_EPS,
        "decoder_embed_bias": False,
        "norm_pix_loss": bool(cfg.get("norm_pix_loss", True)),
        "norm_pix_eps_inside_sqrt": False,
    }


def _decoder_common(r: _Reader, norm: str, head: str, prefix: str) -> None:
    """encoder_to_decoder, mask_token, the decoder's final norm and pixel head."""
    r.linear(prefix + "encoder_to_decoder", "params/decoder/transformer/embed", bias=False)
    token = r.take(prefix + "mask_token")
    r.put(
        "params/decoder/mask_token",
        None if token is None else token.reshape(-1),
        prefix + "mask_token",
    )
    r.norm(norm, "params/decoder/transformer/norm")
    r.linear(head, "params/decoder/pixels")


# ------------------------------------------------------------------------- original .pth files


def _pth_heads(width: int, arch: dict, key: str) -> int:
    if key in arch:
        return arch[key]
    if key == "heads" and "size" in arch:
        return vit.SIZES[arch["size"]][2]
    match = [dims[2] for dims in vit.SIZES.values() if dims[0] == width]
    if key == "heads" and match:
        return match[0]
    return max(width // 64, 1)


def _parse_arch(arch: str | None, source: str) -> dict:
    """--arch: a ViT size ("B") or "heads=H,decoder_heads=H"."""
    if not arch:
        return {}
    if arch in vit.SIZES:
        return {"size": arch}
    out = {}
    for part in arch.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ("heads", "decoder_heads") or not value.strip().isdigit():
            raise ConversionError(
                f"{source}: --arch={arch!r} is not understood; allowed: a ViT size "
                f"({', '.join(vit.SIZES)}) or 'heads=H[,decoder_heads=H]'"
            )
        out[name.strip()] = int(value)
    return out


def from_pth(src: str, options) -> tuple[Converted, Tensors]:
    """An original VideoMAE / VideoMAE V2 `.pth` state dict in vrl's terms.

    Pretraining checkpoints (`encoder.` + `decoder.` keys) -> videomae; fine-tuned ones
    (`head`) -> supervised; a bare encoder -> encoder_only. The clip defaults to 16 frames of
    224 px (`--frames`, `--image_size` for others), heads to the published ViT of that width
    (`--arch`), LayerNorm epsilon to the published 1e-6.
    """
    source = str(Path(src).expanduser())
    raw = common.read_tensors(src)
    flat = common.unwrap(raw, ("model", "module", "state_dict"), strip=("module.", "backbone."))
    tensors = Tensors(flat, source)
    arch = _parse_arch(options.arch, source)
    size = options.image_size or DEFAULT_SIZE
    clip = (options.frames or DEFAULT_FRAMES, size, size)
    pretrain = any(k.startswith("decoder.") for k in flat)
    enc = "encoder." if pretrain or any(k.startswith("encoder.") for k in flat) else ""

    c = Converted(model={}, objective={"name": "encoder_only"}, clip=clip)
    r = _Reader(tensors, c)
    width, patch = _patch_embed(r, f"{enc}patch_embed.proj", "params/encoder/embed")
    grid = _grid(clip, patch, source)
    heads = _pth_heads(width, arch, "heads")
    depth = _count(tensors, re.escape(enc) + r"blocks\.(\d+)\.")
    qkv_bias = "qv" if r.has(f"{enc}blocks.0.attn.q_bias") else "none"
    layer_scale = r.has(f"{enc}blocks.0.gamma_1")
    for i in range(depth):
        _block(r, f"{enc}blocks.{i}.", f"params/encoder/block{i}", heads, "pth", qkv_bias)
    final_norm = r.has(f"{enc}norm.weight")
    if final_norm:
        r.norm(f"{enc}norm", "params/encoder/norm")
    posemb = _position_table(r, f"{enc}pos_embed", "params/encoder/embed/posemb", grid, width)
    mlp_dim = tensors.take(f"{enc}blocks.0.mlp.fc1.weight").shape[0] if depth else 4 * width
    c.model = _vit_config(
        width,
        depth,
        heads,
        mlp_dim,
        patch,
        grid,
        posemb,
        qkv_bias,
        PTH_LN_EPS,
        layer_scale=layer_scale,
        final_norm=final_norm,
    )

    if pretrain:
        c.objective = _pth_decoder(r, arch, grid)
    elif r.has("head.weight"):
        if not r.has("fc_norm.weight"):
            raise ConversionError(
                f"{source}: a classifier without fc_norm (use_mean_pooling=False) reads token 0, "
                "which vrl's pooling does not do; only mean pooling + fc_norm converts"
            )
        r.norm("fc_norm", "params/head/norm")
        r.linear("head", "params/head/logits")
        c.objective = {
            "name": "supervised",
            "num_classes": int(tensors.take("head.weight").shape[0]),
            "head_norm": True,
            "head_norm_epsilon": PTH_LN_EPS,
        }
    r.finish()
    return c, tensors


def _pth_decoder(r: _Reader, arch: dict, grid: tuple) -> dict:
    depth = _count(r.tensors, r"decoder\.blocks\.(\d+)\.")
    if r.has("decoder.head.weight"):
        width = r.tensors.take("decoder.head.weight").shape[1]
    else:
        width = r.tensors.take("mask_token").shape[-1] if r.has("mask_token") else 384
    heads = _pth_heads(width, arch, "decoder_heads")
    qkv_bias = "qv" if r.has("decoder.blocks.0.attn.q_bias") else "none"
    if r.has("decoder.blocks.0.gamma_1"):
        raise ConversionError(
            f"{r.tensors.source}: decoder layer scale (decoder.blocks.*.gamma_1) is not "
            "supported by vrl's MAEDecoder; the encoder's is"
        )
    for i in range(depth):
        _block(
            r,
            f"decoder.blocks.{i}.",
            f"params/decoder/transformer/block{i}",
            heads,
            "pth",
            qkv_bias,
        )
    _decoder_common(r, "decoder.norm", "decoder.head", "")
    _position_table_fixed(r, "pos_embed", grid, width)
    mlp_dim = r.tensors.take("decoder.blocks.0.mlp.fc1.weight").shape[0] if depth else 4 * width
    return {
        "name": "videomae",
        "decoder_width": int(width),
        "decoder_depth": depth,
        "decoder_heads": heads,
        "decoder_mlp_dim": int(mlp_dim),
        "decoder_posemb": "sincos_1d",
        "decoder_qkv_bias": qkv_bias,
        "decoder_ln_epsilon": PTH_LN_EPS,
        "decoder_norm_epsilon": PTH_LN_EPS,
        "decoder_embed_bias": False,
        "norm_pix_loss": True,
        "norm_pix_eps_inside_sqrt": False,
    }


def _position_table_fixed(r: _Reader, key: str, grid: tuple, width: int) -> None:
    """A stored decoder table must be the fixed one vrl recomputes; it is then ignored."""
    if not r.has(key):
        return
    table = r.tensors.take(key)
    expected = vit.sincos_posemb_1d(int(np.prod(grid)), width)
    if table.shape != (1, *expected.shape) or not np.allclose(table[0], expected, atol=1e-5):
        raise ConversionError(
            f"{r.tensors.source}: {key} {list(table.shape)} is not VideoMAE's fixed decoder "
            f"table for a {grid} grid; vrl's decoder has no learned table"
        )
