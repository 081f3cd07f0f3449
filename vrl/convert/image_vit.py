"""Image ViT (Hugging Face `ViTModel` / `ViTForImageClassification`) -> vrl video ViT.

The ViViT / TokenLearner video recipes start from an ImageNet-21k image ViT (scenic
`projects/vivit/model_utils.py`, `initialise_from_train_state`); this writes that start as a
vrl run directory, so a recipe loads it with `config.objective.init_from=WORKDIR`:

    python -m vrl.convert --format=hf_vit --src=vit-base-patch16-224-in21k \\
        --workdir=runs/vit_b16_i21k --frames=32 \\
        --arch=inflation=central_frame,tokenlearner_layer=6,tokenlearner_tokens=8

What moves, as scenic moves it:
- patch kernel: the Conv2d [D, 3, p, p] becomes a tubelet kernel [pt, p, p, 3, D]
  (`init_embedding`): "central_frame" puts the 2-D kernel at slot pt // 2 and zeros elsewhere
  (`central_frame_initializer`, what every released ViViT Kinetics config uses, the default
  here); "average" puts kernel / pt at every slot (`average_frame_initializer`, filter
  inflation). The bias is kept.
- position embedding: the 2-D table (class-token row dropped) is repeated over the t = frames /
  pt tubelet slots, no temporal table added (`positional_embed_size_change='tile'`,
  `tile_positional_embeddings`), stored as vrl's learned table [t, h, w, D].
- blocks and the final LayerNorm: unchanged (HF's query/key/value/out/MLP layout, epsilon from
  config.json).
- class token: vrl's ViT has none (its clip vector is the mean of the final-normed tokens,
  scenic's `classifier='gap'`), so `embeddings.cls_token` and the class row of the position
  table are dropped, as scenic's `init_posemb` does for a 'gap' target. The released ViViT
  configs use classifier='token' instead: there the class token and its embedding carry over.
- `pooler.dense` (HF's tanh pre-logits on the class token) and `classifier` (the 21k-way head)
  are dropped, as scenic drops `pre_logits` (representation_size None) and `output_projection`
  (restore_output_proj=False when fine-tuning on a new dataset).
- pixel statistics: HF ViTs read (x - 0.5) / 0.5 per channel (preprocessor_config.json), vrl
  ViTs one of `layers.PIXEL_STATS`; the difference is folded exactly into the patch kernel and
  bias (the embedding is linear), so the model sees what it was trained on under pixel_norm
  "imagenet".

`--arch` (comma-separated key=value, all optional): `inflation` (central_frame | average),
`tubelet` (frames per tubelet, default 2 as ViViT's 16x16x2), and the TokenLearner options of
the recipe that will load it (`tokenlearner_layer`, `tokenlearner_tokens`,
`tokenlearner_version`, `tokenfuser`). `init_from` loads encoders strictly, so the converted
encoder has the recipe's architecture: its TokenLearner / TokenFuser parameters, which an image
ViT does not have, start at their fresh initialisation (seed 0), as in scenic, where parameters
absent from the restored model keep the target's init. `--frames` (default 32, ViViT's clip)
sets t; `--image_size` must be the checkpoint's own (vrl resizes the learned table trilinearly
for other clip sizes at run time).
"""

import json
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl.convert import common
from vrl.convert.common import ConversionError, Converted, Tensors
from vrl.convert.videomae import _block, _count, _Reader, _vit_config
from vrl.models import layers, tokenlearner, vit

INFLATIONS = ("central_frame", "average")
DEFAULT_FRAMES, DEFAULT_TUBELET, DEFAULT_INFLATION = 32, 2, "central_frame"
HF_PIXEL_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViTImageProcessor's default
_HF_ARCHITECTURES = ("ViTModel", "ViTForImageClassification")
# --arch keys -> parser
_ARCH_KEYS = {
    "inflation": str,
    "tubelet": int,
    "tokenlearner_layer": int,
    "tokenlearner_tokens": int,
    "tokenlearner_version": lambda v: {"1.1": "1.1", "1.0": "1.0"}[v],
    "tokenfuser": lambda v: {"true": True, "false": False}[v.lower()],
}


def parse_arch(arch: str | None) -> dict:
    """`--arch` "key=value,..." -> {key: value}; one-line errors naming the bad key."""
    out = {}
    for part in filter(None, (arch or "").split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _ARCH_KEYS:
            raise ConversionError(
                f"--arch={arch!r}: {part!r} is not key=value with a known key; allowed keys: "
                + ", ".join(_ARCH_KEYS)
            )
        try:
            out[key] = _ARCH_KEYS[key](value.strip())
        except (ValueError, KeyError):
            raise ConversionError(f"--arch: {key}={value!r} is not a valid value") from None
    return out


def inflate_kernel(kernel_2d: np.ndarray, tubelet: int, inflation: str) -> np.ndarray:
    """A 2-D patch kernel [p, p, 3, D] as a tubelet kernel [pt, p, p, 3, D] (scenic's
    `init_embedding`: "central_frame" selects slot pt // 2, "average" is kernel / pt per slot)."""
    if inflation == "central_frame":
        out = np.zeros((tubelet, *kernel_2d.shape), kernel_2d.dtype)
        out[tubelet // 2] = kernel_2d
        return out
    if inflation == "average":
        return np.repeat(kernel_2d[None], tubelet, axis=0) / tubelet
    raise ConversionError(f"inflation={inflation!r} is unknown; allowed: {', '.join(INFLATIONS)}")


def tile_posemb(grid_2d: np.ndarray, frames: int) -> np.ndarray:
    """The 2-D table [h, w, D] repeated over `frames` tubelet slots: [t, h, w, D] (scenic's
    `tile_positional_embeddings`: the same spatial table at every time, no temporal one)."""
    return np.repeat(grid_2d[None], frames, axis=0)


def fold_pixel_norm(kernel: np.ndarray, bias: np.ndarray, source_stats, target: str):
    """(kernel, bias) of a patch embedding [(pt ph pw c), D] trained on (x - m_s) / s_s that
    give the same output on vrl's input (x - m_t) / s_t (`layers.PIXEL_STATS[target]`)."""
    m_s, s_s = (np.asarray(a, np.float64) for a in source_stats)
    m_t, s_t = (np.asarray(a, np.float64) for a in layers.PIXEL_STATS[target])
    scale = np.tile(s_t / s_s, kernel.shape[0] // 3)  # rows run over (pt, ph, pw, c)
    shift = np.tile((m_t - m_s) / s_s, kernel.shape[0] // 3)
    k64 = kernel.astype(np.float64)
    new_bias = bias.astype(np.float64) + shift @ k64
    return (k64 * scale[:, None]).astype(np.float32), new_bias.astype(np.float32)


def _pixel_stats(src: str) -> tuple:
    path = Path(src).expanduser() / "preprocessor_config.json"
    if not path.is_file():
        return HF_PIXEL_STATS
    pp = json.loads(path.read_text())
    mean, std = pp.get("image_mean", HF_PIXEL_STATS[0]), pp.get("image_std", HF_PIXEL_STATS[1])
    if not pp.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConversionError(f"{path}: image_mean / image_std must be 3 values, std > 0")
    return tuple(mean), tuple(std)


def _fresh_params(model: dict, depth: int, width: int) -> dict:
    """The TokenLearner (and TokenFuser) sub-trees of the vrl ViT `model` at their own
    initialisation (seed 0), named as `vit.ViT` names them. Initialised on one-token inputs:
    their shapes depend only on the width and the number of learned tokens."""
    tokens, layer = model.get("tokenlearner_tokens", 8), model["tokenlearner_layer"]
    learner = (
        tokenlearner.TokenLearnerV11
        if model.get("tokenlearner_version", "1.1") == "1.1"
        else tokenlearner.TokenLearnerV10
    )
    frames, learned = jnp.zeros((1, 1, 1, 1, width)), jnp.zeros((1, 1, tokens, width))
    init = lambda module, *args: jax.device_get(nn.meta.unbox(module.init(key, *args)["params"]))
    key = jax.random.key(0)
    if not model.get("tokenfuser", False):
        return {"tokenlearner": init(learner(tokens), frames)}
    out = {}
    for i in range(layer, depth):
        out[f"tokenlearner{i}"] = init(learner(tokens), frames)
        out[f"tokenfuser{i}"] = init(tokenlearner.TokenFuser(), learned, frames)
    return out


def from_hf(src: str, options, **overrides) -> tuple[Converted, Tensors]:
    """A Hugging Face ViT folder (config.json + safetensors/bin) as a vrl video ViT
    (objective `encoder_only`). `overrides` take the `--arch` keys (inflation="average")."""
    arch = {**parse_arch(getattr(options, "arch", None)), **overrides}
    inflation = arch.pop("inflation", DEFAULT_INFLATION)
    tubelet = arch.pop("tubelet", DEFAULT_TUBELET)
    if inflation not in INFLATIONS:
        raise ConversionError(
            f"--arch inflation={inflation!r} is unknown; allowed: {', '.join(INFLATIONS)}"
        )
    frames = options.frames or DEFAULT_FRAMES
    if tubelet < 1 or frames % tubelet:
        raise ConversionError(
            f"--frames={frames} is not a multiple of --arch tubelet={tubelet} (>= 1)"
        )
    cfg = common.read_config_json(src)
    source = str(Path(src).expanduser())
    if cfg.get("model_type") != "vit":
        raise ConversionError(
            f"{source}/config.json: model_type {cfg.get('model_type')!r} is not 'vit'; this "
            "format reads transformers ViTModel / ViTForImageClassification folders"
        )
    for key, want in (("hidden_act", "gelu"), ("num_channels", 3), ("qkv_bias", True)):
        if cfg.get(key, want) != want:
            raise ConversionError(
                f"{source}/config.json: {key}={cfg[key]!r} is not supported; allowed: {want!r}"
            )
    patch, image = cfg.get("patch_size", 16), cfg.get("image_size", 224)
    if not isinstance(patch, int) or not isinstance(image, int) or image % patch:
        raise ConversionError(
            f"{source}/config.json: image_size={image!r} / patch_size={patch!r} must be "
            "integers with the image a multiple of the patch (square ViTs only)"
        )
    if options.image_size not in (None, image):
        raise ConversionError(
            f"--image_size={options.image_size}: must be the checkpoint's image_size={image} "
            "(vrl resizes the learned position table for other clips at run time)"
        )
    tensors = Tensors(common.read_tensors(src), source)
    prefix = "vit." if any(k.startswith("vit.") for k in tensors.keys()) else ""
    heads = cfg.get("num_attention_heads", 12)
    ln_eps = cfg.get("layer_norm_eps", 1e-12)
    side = image // patch
    clip, grid = (frames, image, image), (frames // tubelet, side, side)

    c = Converted(model={}, objective={"name": "encoder_only"}, clip=clip)
    r = _Reader(tensors, c)
    key = f"{prefix}embeddings.patch_embeddings.projection"
    weight = r.take(f"{key}.weight")
    if weight is None or weight.shape[1:] != (3, patch, patch):
        raise ConversionError(
            f"{source}: {key}.weight must be a Conv2d kernel [D, 3, {patch}, {patch}], got "
            f"{None if weight is None else list(weight.shape)}"
        )
    width = weight.shape[0]
    kernel = inflate_kernel(weight.transpose(2, 3, 1, 0), tubelet, inflation).reshape(-1, width)
    bias = r.take(f"{key}.bias")
    if bias is not None:
        kernel, bias = fold_pixel_norm(kernel, bias, _pixel_stats(src), "imagenet")
    r.put("params/encoder/embed/projection/kernel", kernel, f"{key}.weight")
    r.put("params/encoder/embed/projection/bias", bias, f"{key}.bias")

    key = f"{prefix}embeddings.position_embeddings"
    table = r.take(key)
    if table is not None and table.shape != (1, 1 + side * side, width):
        raise ConversionError(
            f"{source}: {key} has shape {list(table.shape)}, expected [1, {1 + side * side}, "
            f"{width}] (class token + {side}x{side} patches)"
        )
    if table is not None:
        posemb = tile_posemb(table[0, 1:].reshape(side, side, width), grid[0])
        r.put("params/encoder/embed/posemb", posemb, key)
    for dropped in (f"{prefix}embeddings.cls_token", "pooler.dense.weight", "pooler.dense.bias"):
        r.tensors.ignore(dropped)  # no class token in vrl's ViT; pre-logits are not kept
    r.tensors.ignore("classifier.weight")  # the image head: a new task gets a new head
    r.tensors.ignore("classifier.bias")

    depth = _count(tensors, re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    if depth == 0:
        raise ConversionError(f"{source}: no {prefix}encoder.layer.N.* tensors")
    for i in range(depth):
        _block(r, f"{prefix}encoder.layer.{i}.", f"params/encoder/block{i}", heads, "hf", "qkv")
    r.norm(f"{prefix}layernorm", "params/encoder/norm")
    r.finish()

    mlp_dim = cfg.get("intermediate_size", 4 * width)
    c.model = _vit_config(
        width, depth, heads, mlp_dim, (tubelet, patch, patch), grid, "learned", "qkv", ln_eps,
        layer_scale=False, final_norm=True,
    )  # fmt: skip
    c.model.update(arch)  # the recipe's TokenLearner options
    if arch.get("tokenlearner_layer") is not None:
        try:
            vit.ViT(**{k: v for k, v in c.model.items() if k != "name"}).check_clip(*clip)
        except ValueError as e:  # ConfigError: a bad TokenLearner setting
            raise ConversionError(f"--arch: {e}") from None
        fresh = _fresh_params(c.model, depth, width)
        for name, subtree in fresh.items():
            for path, leaf in jax.tree_util.tree_flatten_with_path(subtree)[0]:
                leaf_path = "/".join(str(p.key) for p in path)
                c.put(f"params/encoder/{name}/{leaf_path}", np.asarray(leaf), "(fresh init)")
    return c, tensors
