"""V-JEPA and V-JEPA 2 checkpoints -> a `vjepa` run (encoder + predictor, target encoder).

  hf_vjepa2   a Hugging Face `VJEPA2Model` folder (config.json + weights). The released HF
              weights hold one encoder and the predictor, so that encoder fills both
              params/encoder and extra/target. Sizes, LayerNorm epsilon, qkv bias, clip length
              (`frames_per_clip`) and size (`crop_size`) come from config.json; --frames and
              --image_size override the clip. HF's RoPE takes the token grid from `crop_size`,
              vrl's (like the original vjepa2 encoder's) from the clip: equal at that size.
  vjepa_pth   the original training checkpoints (facebookresearch/jepa and /vjepa2: a dict with
              `encoder`, `predictor`, `target_encoder` state dicts whose keys carry `module.` /
              `backbone.` prefixes): encoder -> params/encoder, predictor -> params/predictor,
              target_encoder -> extra/target. V-JEPA files carry fixed `pos_embed` tables: the
              model gets the sine-cosine table they match (`uniform_power` or not; anything else
              is an error); V-JEPA 2 files have none and use 3-D RoPE. Width, depth, MLP size,
              tubelet, qkv bias and the number of mask tokens come from tensor shapes; heads
              from --arch (a ViT size such as L, a reference name such as vit_giant_xformers or
              "heads=N", optionally followed by ",pred_heads=N") or else the published table by
              width (1408 wide: 16 heads for V-JEPA, 22 for V-JEPA 2's vit_giant_xformers).
              Predictor heads: V-JEPA uses the encoder's, V-JEPA 2 12. Clip defaults (the
              published pretraining clips): V-JEPA 16 frames at 224 px (checked against the
              stored tables), V-JEPA 2 16 frames at 256 px. Optimizer state and bookkeeping
              (`opt`, `scaler`, `epoch`, `loss`, `batch_size`, `world_size`, `lr`) are dropped.

Both give the reference predictor (`predictor_targets="targets_only"`, zero-initialised mask
tokens, positions on context and mask tokens) so predictions match the published model. The
masks stay the objective's defaults (a training choice the checkpoint does not record), except
on grids too small for them (tiny test models), where each mask type gets one small block.
"""

from collections.abc import Callable

import numpy as np

from vrl.config import ConfigError
from vrl.convert import common
from vrl.convert.common import ConversionError, Converted, Tensors
from vrl.models import vit
from vrl.objectives import jepa, masking

# Heads of the published ViTs by width (jepa / vjepa2 `vision_transformer.py`).
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
REFERENCE_HEADS = {
    "vit_tiny": 3,
    "vit_small": 6,
    "vit_base": 12,
    "vit_large": 16,
    "vit_large_rope": 16,
    "vit_huge": 16,
    "vit_huge_rope": 16,
    "vit_giant": 16,
    "vit_giant_rope": 16,
    "vit_giant_xformers": 22,
    "vit_giant_xformers_rope": 22,
    "vit_gigantic": 16,
    "vit_gigantic_xformers": 26,
}
BOOKKEEPING = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr")
STATE_DICTS = ("encoder", "predictor", "target_encoder")


# --------------------------------------------------------------------------------------------
# Tensor layouts: torch Linear [out, in] -> Dense [in, out]; attention split into heads.


def _linear(w: np.ndarray) -> np.ndarray:
    return w.T


def _heads_in(heads: int) -> Callable:
    """q/k/v Linear weight [H*d, D] -> Einsum kernel [D, H, d] (bias [H*d] -> [H, d])."""

    def fn(w):
        if w.ndim == 1:
            return w.reshape(heads, -1)
        return w.T.reshape(w.shape[1], heads, -1)

    return fn


def _heads_out(heads: int) -> Callable:
    """Output projection weight [D, H*d] -> Einsum kernel [H, d, D]."""
    return lambda w: w.T.reshape(heads, -1, w.shape[0])


def _patch_kernel(w: np.ndarray) -> np.ndarray:
    """Conv3d weight [D, C, t, p, p] -> Dense kernel over (t, p, p, C)-flattened tubelets."""
    return w.transpose(2, 3, 4, 1, 0).reshape(-1, w.shape[0])


def _block(
    c: Converted,
    t: Tensors,
    src: str,
    dst: str,
    heads: int,
    *,
    fused_qkv: bool,
    qkv_bias: bool,
    names: dict,
) -> None:
    """One pre-norm block: `names` gives the source names of attention q/k/v/proj."""
    for norm in ("norm1", "norm2"):
        _move(c, t, f"{src}.{norm}.weight", f"{dst}/{norm}/scale")
        _move(c, t, f"{src}.{norm}.bias", f"{dst}/{norm}/bias")
    params = ("weight", "bias") if qkv_bias else ("weight",)
    if fused_qkv:
        for param in params:
            key = f"{src}.attn.qkv.{param}"
            if key not in t:
                c.mapping.append((f"{key} (MISSING)", f"{dst}/attention/*/{_vrl(param)}", ()))
                continue
            qkv = t.take(key)
            for i, name in enumerate(("query", "key", "value")):
                part = np.split(qkv, 3, axis=0)[i]
                c.put(f"{dst}/attention/{name}/{_vrl(param)}", _heads_in(heads)(part), key)
    else:
        for name, ref in zip(("query", "key", "value"), names["qkv"]):
            for param in params:
                _move(
                    c, t, f"{src}.{ref}.{param}", f"{dst}/attention/{name}/{_vrl(param)}",
                    _heads_in(heads),
                )  # fmt: skip
    _move(c, t, f"{src}.{names['proj']}.weight", f"{dst}/attention/out/kernel", _heads_out(heads))
    _move(c, t, f"{src}.{names['proj']}.bias", f"{dst}/attention/out/bias")
    for fc in ("fc1", "fc2"):
        _move(c, t, f"{src}.mlp.{fc}.weight", f"{dst}/mlp/{fc}/kernel", _linear)
        _move(c, t, f"{src}.mlp.{fc}.bias", f"{dst}/mlp/{fc}/bias")


def _move(c: Converted, t: Tensors, key: str, path: str, fn: Callable = lambda a: a) -> None:
    """`c.move`, except that a missing source tensor is only noted: the vrl parameter stays
    unset, so the strict check lists it with every other difference in one error."""
    if key in t:
        c.move(t, key, path, fn)
    else:
        c.mapping.append((f"{key} (MISSING)", path, ()))


def _vrl(param: str) -> str:
    return {"weight": "kernel", "bias": "bias"}[param]


def _count(t: Tensors, prefix: str) -> int:
    """Number of blocks `prefix.{i}.` present (0..n-1 must all exist)."""
    found = {
        int(k[len(prefix) + 1 :].split(".")[0])
        for k in t.keys()
        if k.startswith(prefix + ".") and k[len(prefix) + 1 :].split(".")[0].isdigit()
    }
    if found != set(range(len(found))):
        raise ConversionError(f"{t.source}: {prefix} blocks are not numbered 0..n-1: {found}")
    return len(found)


def _shape(t: Tensors, key: str) -> tuple[int, ...]:
    """Shape of a source tensor without consuming it."""
    if key not in t:
        raise ConversionError(f"{t.source}: missing tensor {key!r}")
    return tuple(t._tensors[key].shape)  # noqa: SLF001 - same package, read-only


def _check_mlp_ratio(t: Tensors, key: str, width: int) -> None:
    hidden = _shape(t, key)[0]
    if hidden != 4 * width:
        raise ConversionError(
            f"{t.source}: {key} has {hidden} hidden units; vrl's predictor MLP is 4 x width "
            f"({4 * width})"
        )


# --------------------------------------------------------------------------------------------
# Hugging Face VJEPA2Model


def from_hf(src: str, options) -> tuple[Converted, Tensors]:
    """A `VJEPA2Model` folder written by save_pretrained (see the module docstring)."""
    cfg = common.read_config_json(src)
    if cfg.get("model_type") != "vjepa2":
        raise ConversionError(
            f"{src}/config.json: model_type {cfg.get('model_type')!r}, expected 'vjepa2'"
        )
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{src}/config.json: hidden_act {cfg['hidden_act']!r}; vrl: 'gelu'")
    raw = common.unwrap(common.read_tensors(src), (), strip=("vjepa2.",))
    t = Tensors(raw, str(src))
    width, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    depth = cfg["num_hidden_layers"]
    pred_width, pred_heads = cfg["pred_hidden_size"], cfg["pred_num_attention_heads"]
    pred_depth = cfg["pred_num_hidden_layers"]
    patch, tubelet = cfg["patch_size"], cfg["tubelet_size"]
    mlp_dim = int(width * cfg["mlp_ratio"])
    if int(pred_width * cfg["pred_mlp_ratio"]) != 4 * pred_width:
        raise ConversionError(f"{src}/config.json: pred_mlp_ratio must be 4 for vrl's predictor")
    frames = options.frames or cfg["frames_per_clip"]
    size = options.image_size or cfg["crop_size"]
    eps = float(cfg.get("layer_norm_eps", 1e-6))
    qkv_bias = bool(cfg.get("qkv_bias", True))
    num_masks = int(cfg["pred_num_mask_tokens"])

    c = Converted(
        model=_model(
            width,
            depth,
            heads,
            mlp_dim,
            (tubelet, patch, patch),
            "none",
            rope=True,
            eps=eps,
            qkv_bias=qkv_bias,
        ),  # fmt: skip
        objective=_objective(
            pred_width,
            pred_depth,
            pred_heads,
            "none",
            rope=True,
            num_masks=num_masks,
            grid=(frames // tubelet, size // patch, size // patch),
        ),
        clip=(frames, size, size),
    )
    names = {"qkv": ("attention.query", "attention.key", "attention.value"),
             "proj": "attention.proj"}  # fmt: skip
    for dst in ("params/encoder", "extra/target"):
        _move(c, t, "encoder.embeddings.patch_embeddings.proj.weight",
               f"{dst}/embed/projection/kernel", _patch_kernel)  # fmt: skip
        _move(c, t, "encoder.embeddings.patch_embeddings.proj.bias", f"{dst}/embed/projection/bias")
        for i in range(depth):
            _block(
                c,
                t,
                f"encoder.layer.{i}",
                f"{dst}/block{i}",
                heads,
                fused_qkv=False,
                qkv_bias=qkv_bias,
                names=names,
            )
        _move(c, t, "encoder.layernorm.weight", f"{dst}/norm/scale")
        _move(c, t, "encoder.layernorm.bias", f"{dst}/norm/bias")
    if _count(t, "encoder.layer") != depth:
        raise ConversionError(f"{src}: config.json says {depth} encoder layers, weights differ")
    p = "params/predictor"
    _move(c, t, "predictor.embeddings.predictor_embeddings.weight", f"{p}/transformer/embed/kernel",
           _linear)  # fmt: skip
    _move(c, t, "predictor.embeddings.predictor_embeddings.bias", f"{p}/transformer/embed/bias")
    _move(c, t, "predictor.embeddings.mask_tokens", f"{p}/mask_tokens",
           lambda a: a.reshape(a.shape[0], a.shape[-1]))  # fmt: skip
    for i in range(pred_depth):
        _block(c, t, f"predictor.layer.{i}", f"{p}/transformer/block{i}", pred_heads,
               fused_qkv=False, qkv_bias=qkv_bias, names=names)  # fmt: skip
    _move(c, t, "predictor.layernorm.weight", f"{p}/transformer/norm/scale")
    _move(c, t, "predictor.layernorm.bias", f"{p}/transformer/norm/bias")
    _move(c, t, "predictor.proj.weight", f"{p}/output/kernel", _linear)
    _move(c, t, "predictor.proj.bias", f"{p}/output/bias")
    return c, t


# --------------------------------------------------------------------------------------------
# Original .pth (facebookresearch/jepa, facebookresearch/vjepa2)


def from_pth(src: str, options) -> tuple[Converted, Tensors]:
    """A V-JEPA / V-JEPA 2 training checkpoint (see the module docstring)."""
    tree = common.read_tensors(src)
    unknown = [k for k in tree if k not in STATE_DICTS + BOOKKEEPING]
    missing = [k for k in STATE_DICTS if k not in tree]
    if unknown or missing:
        raise ConversionError(
            f"{src}: expected a V-JEPA checkpoint with {', '.join(STATE_DICTS)} "
            f"(missing: {missing or 'none'}; unknown top-level keys: {unknown or 'none'}; "
            f"bookkeeping {', '.join(BOOKKEEPING)} is dropped)"
        )
    flat = {}
    for part in STATE_DICTS:
        sd = common.unwrap(tree[part], (), strip=("module.", "backbone."))
        flat.update({f"{part}.{k}": v for k, v in sd.items()})
    t = Tensors(flat, str(src))

    width, _, tubelet, patch, _ = _shape(t, "encoder.patch_embed.proj.weight")
    depth = _count(t, "encoder.blocks")
    v1 = "encoder.pos_embed" in t
    heads, pred_heads = _parse_arch(options.arch)
    if heads is None and width not in HEADS_BY_WIDTH:
        raise ConversionError(f"{src}: width {width} is not a published ViT; pass --arch")
    if heads is None:  # V-JEPA 2's ViT-g is vit_giant_xformers (22 heads)
        heads = 22 if width == 1408 and not v1 else HEADS_BY_WIDTH[width]
    mlp_dim = _shape(t, "encoder.blocks.0.mlp.fc1.weight")[0]
    qkv_bias = "encoder.blocks.0.attn.qkv.bias" in t
    pred_width = _shape(t, "predictor.predictor_embed.weight")[0]
    pred_depth = _count(t, "predictor.predictor_blocks")
    pred_heads = pred_heads or (heads if v1 else 12)
    num_masks = _count(t, "predictor.mask_tokens")
    _check_mlp_ratio(t, "predictor.predictor_blocks.0.mlp.fc1.weight", pred_width)
    frames = options.frames or 16
    size = options.image_size or (224 if v1 else 256)
    grid = (frames // tubelet, size // patch, size // patch)

    posemb = "none"
    if v1:
        posemb = _match_table(t, "encoder.pos_embed", grid, width)
        for part in ("target_encoder", "predictor"):
            key = f"{part}.pos_embed" if part != "predictor" else "predictor.predictor_pos_embed"
            dim = width if part != "predictor" else pred_width
            if _match_table(t, key, grid, dim) != posemb:
                raise ConversionError(f"{src}: {key} uses another table than encoder.pos_embed")
    c = Converted(
        model=_model(
            width,
            depth,
            heads,
            mlp_dim,
            (tubelet, patch, patch),
            posemb,
            rope=not v1,
            eps=1e-6,
            qkv_bias=qkv_bias,
        ),  # fmt: skip
        objective=_objective(
            pred_width, pred_depth, pred_heads, posemb, rope=not v1, num_masks=num_masks, grid=grid
        ),
        clip=(frames, size, size),
    )
    names = {"qkv": None, "proj": "attn.proj"}
    for part, dst in (("encoder", "params/encoder"), ("target_encoder", "extra/target")):
        if _count(t, f"{part}.blocks") != depth:
            raise ConversionError(f"{src}: {part} and encoder have different depths")
        _move(c, t, f"{part}.patch_embed.proj.weight", f"{dst}/embed/projection/kernel",
               _patch_kernel)  # fmt: skip
        _move(c, t, f"{part}.patch_embed.proj.bias", f"{dst}/embed/projection/bias")
        for i in range(depth):
            _block(c, t, f"{part}.blocks.{i}", f"{dst}/block{i}", heads,
                   fused_qkv=True, qkv_bias=qkv_bias, names=names)  # fmt: skip
        _move(c, t, f"{part}.norm.weight", f"{dst}/norm/scale")
        _move(c, t, f"{part}.norm.bias", f"{dst}/norm/bias")
    p, s = "params/predictor", "predictor"
    _move(c, t, f"{s}.predictor_embed.weight", f"{p}/transformer/embed/kernel", _linear)
    _move(c, t, f"{s}.predictor_embed.bias", f"{p}/transformer/embed/bias")
    tokens = [t.take(f"{s}.mask_tokens.{j}").reshape(-1) for j in range(num_masks)]
    c.put(f"{p}/mask_tokens", np.stack(tokens), f"{s}.mask_tokens.*")
    for i in range(pred_depth):
        _block(c, t, f"{s}.predictor_blocks.{i}", f"{p}/transformer/block{i}", pred_heads,
               fused_qkv=True, qkv_bias=qkv_bias, names=names)  # fmt: skip
    _move(c, t, f"{s}.predictor_norm.weight", f"{p}/transformer/norm/scale")
    _move(c, t, f"{s}.predictor_norm.bias", f"{p}/transformer/norm/bias")
    _move(c, t, f"{s}.predictor_proj.weight", f"{p}/output/kernel", _linear)
    _move(c, t, f"{s}.predictor_proj.bias", f"{p}/output/bias")
    return c, t


def _parse_arch(arch: str | None) -> tuple[int | None, int | None]:
    """--arch "L", "vit_giant_xformers", "heads=4", each optionally ",pred_heads=N" ->
    (encoder heads, predictor heads), None where not given."""
    heads = pred_heads = None
    for item in (arch or "").split(","):
        key, eq, value = item.partition("=")
        if eq and key in ("heads", "pred_heads") and value.isdigit():
            heads, pred_heads = (int(value), pred_heads) if key == "heads" else (heads, int(value))
        elif not eq and (item in REFERENCE_HEADS or item in vit.SIZES):
            heads = REFERENCE_HEADS.get(item) or vit.SIZES[item][2]
        elif item:
            allowed = ", ".join([*vit.SIZES, *REFERENCE_HEADS, "heads=N"])
            raise ConversionError(
                f"--arch={arch!r}: {item!r} is unknown; allowed: {allowed}, then ,pred_heads=N"
            )
    return heads, pred_heads


def _match_table(t: Tensors, key: str, grid: tuple[int, int, int], dim: int) -> str:
    """The posemb whose table equals the stored fixed table `key` (consumed: vrl recomputes)."""
    stored = t.take(key).reshape(-1, dim) if key in t else None
    if stored is None:
        raise ConversionError(f"{t.source}: missing tensor {key!r}")
    if stored.shape[0] != int(np.prod(grid)):
        raise ConversionError(
            f"{t.source}: {key} has {stored.shape[0]} positions, the clip grid {grid} has "
            f"{int(np.prod(grid))}; pass the clip it was trained on (--frames, --image_size)"
        )
    for posemb, uniform in (("sincos_uniform", True), ("sincos", False)):
        if np.allclose(stored, vit.sincos_posemb_3d(grid, dim, uniform), atol=1e-5):
            return posemb
    raise ConversionError(
        f"{t.source}: {key} matches neither V-JEPA sine-cosine table (uniform_power True/False) "
        f"for grid {grid}"
    )


def _model(width, depth, heads, mlp_dim, patch, posemb, *, rope, eps, qkv_bias) -> dict:
    return {
        "name": "vit",
        "width": int(width),
        "depth": int(depth),
        "heads": int(heads),
        "mlp_dim": int(mlp_dim),
        "patch": tuple(int(p) for p in patch),
        "posemb": posemb,
        "rope": bool(rope),
        "ln_epsilon": float(eps),
        "qkv_bias": "qkv" if qkv_bias else "none",
    }


def _small_grid_masks(grid: tuple[int, int, int]) -> dict:
    """{} where V-JEPA's published masks fit the token grid; else one small block per mask type
    (tiny test models only: the masks are a training choice, not part of the checkpoint)."""
    defaults = jepa.VJEPA.__dataclass_fields__
    kwargs = {
        "num_blocks": defaults["num_blocks"].default,
        "scale": defaults["block_scale"].default,
        "aspect": defaults["block_aspect"].default,
        "keep_batch": defaults["keep_batch"].default,
        "keep_quantile": defaults["keep_quantile"].default,
    }
    try:
        masking.mask_ops("vjepa", grid, "config.objective", **kwargs)
        return {}
    except ConfigError:
        return {"num_blocks": (1, 1), "block_scale": (0.15, 0.3)}


def _objective(width, depth, heads, posemb, *, rope, num_masks, grid) -> dict:
    return {
        **_small_grid_masks(grid),
        "name": "vjepa",
        "predictor_width": int(width),
        "predictor_depth": int(depth),
        "predictor_heads": int(heads),
        "predictor_targets": "targets_only",
        "predictor_posemb": posemb,
        "predictor_rope": bool(rope),
        "predictor_zero_mask_tokens": True,
        "predictor_mask_tokens": int(num_masks),
    }


__all__ = ["from_hf", "from_pth"]
