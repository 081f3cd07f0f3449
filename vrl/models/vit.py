"""Video Vision Transformer: tubelet embedding, pre-norm blocks, optional TokenLearner.

Masked objectives (VideoMAE, V-JEPA, SALT) pass `keep_idx`: the indices of visible tokens are
*gathered* after the position embedding, so the blocks only ever see the kept tokens and the
compute scales with the visible fraction. The `Block`, `Attention`, `Mlp` and
`sincos_posemb_3d` defined here are reused by the decoder, predictor and attentive pooler.
"""

import re
from typing import Any, Literal

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import registry
from vrl.config import ConfigError
from vrl.models import layers, tokenlearner

# size -> (width, depth, heads, mlp_dim)
SIZES = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}

RematPolicy = Literal["full", "dots_saveable", "dots_with_no_batch_dims_saveable"]
# Which attention input projections have a bias (the output projection always has one).
QkvBias = Literal["qkv", "qv", "none"]
# "full" saves nothing inside a block: least memory, one extra forward in the backward pass.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

TOKEN_AXES = ("batch", "length", "act_embed")
# Transformer weights follow the usual ViT initialisation (BERT / MAE).
vit_kernel_init = nn.initializers.xavier_uniform()


def sincos_posemb_3d(
    grid: tuple[int, int, int], dim: int, uniform_power: bool = False
) -> np.ndarray:
    """Fixed 3-D sine-cosine position embedding [t*h*w, dim], rows in (t, h, w) order.

    Half the channels encode time and a quarter each encode height and width; any channels left
    over when `dim` is not a multiple of 8 are zero. This equals V-JEPA's (jepa `pos_embs.py`)
    table with `uniform_power=False` wherever theirs is defined. `uniform_power=True` is the
    table the released V-JEPA models use: 2*ceil(dim/6) channels per axis, truncated to `dim`.
    """
    dim_h = dim_w = 2 * (dim // 8)
    dim_t = 2 * ((dim - dim_h - dim_w) // 2)
    if uniform_power:
        dim_t = dim_h = dim_w = 2 * -(-dim // 6)

    def one_axis(length: int, channels: int) -> np.ndarray:
        if channels == 0:
            return np.zeros((length, 0), np.float64)
        freqs = 1.0 / 10000 ** (np.arange(channels // 2, dtype=np.float64) / (channels // 2))
        angles = np.arange(length, dtype=np.float64)[:, None] * freqs[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    t, h, w = grid
    emb_t = one_axis(t, dim_t)[:, None, None, :]
    emb_h = one_axis(h, dim_h)[None, :, None, :]
    emb_w = one_axis(w, dim_w)[None, None, :, :]
    parts = [
        np.broadcast_to(emb_t, (t, h, w, dim_t)),
        np.broadcast_to(emb_h, (t, h, w, dim_h)),
        np.broadcast_to(emb_w, (t, h, w, dim_w)),
        np.zeros((t, h, w, max(dim - dim_t - dim_h - dim_w, 0))),
    ]
    table = np.concatenate(parts, axis=-1)[..., :dim]
    return table.reshape(t * h * w, dim).astype(np.float32)


def sincos_posemb_1d(length: int, dim: int) -> np.ndarray:
    """VideoMAE's fixed table [length, dim] over the flattened t*h*w token index.

    Channel j uses frequency 10000^(-2*(j//2)/dim), sine on even and cosine on odd channels
    (interleaved), computed in float64 as the reference does; published VideoMAE checkpoints
    (original and Hugging Face) were trained with it.
    """
    channel = np.arange(dim, dtype=np.float64)
    freqs = 1.0 / np.power(10000.0, 2 * (channel // 2) / dim)
    angles = np.arange(length, dtype=np.float64)[:, None] * freqs[None, :]
    table = np.where(channel % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over [B, N, H, d] tensors (no mask: every token sees all).

    Accelerators get `jax.nn.dot_product_attention` (fused kernels such as cuDNN's where they
    apply). On CPU its XLA path (grouped 5-D einsums under vmap, the scale applied to the
    [B, H, N, N] logits) is slower than two plain einsums with the scale folded into q: ViT-S
    attention forward + backward, 8 x 392 tokens, one core: 330 -> 305 ms.
    """
    if jax.default_backend() != "cpu":
        return jax.nn.dot_product_attention(q, k, v)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def rope_positions(grid: tuple[int, int, int], idx: jax.Array | None = None) -> jax.Array:
    """(t, h, w) coordinates [..., 3] of flat token indices `idx` (default: every token)."""
    t, h, w = grid
    idx = jnp.arange(t * h * w) if idx is None else idx
    return jnp.stack([idx // (h * w), (idx % (h * w)) // w, idx % w], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array) -> jax.Array:
    """V-JEPA 2's 3-D rotary embedding of queries or keys x [B, N, H, d] at positions [B?, N, 3].

    Three equal slices of 2*((d//3)//2) channels rotate by time, height and width (the rest pass
    through). As in the released code (vjepa2 `rotate_queries_or_keys`, kept for compatibility
    with its weights), channel j of a slice of size s uses frequency j mod s/2 while pairs
    (2i, 2i+1) are rotated together.
    """
    size = 2 * ((x.shape[-1] // 3) // 2)
    if size == 0:
        return x
    omega = 1.0 / 10000 ** (jnp.arange(size // 2, dtype=jnp.float32) / (size / 2.0))
    parts = []
    for axis in range(3):
        part = x[..., axis * size : (axis + 1) * size]
        angles = positions[..., axis, None].astype(jnp.float32) * omega  # [B?, N, s/2]
        angles = jnp.concatenate([angles, angles], axis=-1)[..., None, :]  # over heads
        pairs = part.reshape(*part.shape[:-1], size // 2, 2)
        swapped = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(part.shape)
        rotated = part * jnp.cos(angles) + swapped * jnp.sin(angles)
        parts.append(rotated.astype(x.dtype))
    return jnp.concatenate([*parts, x[..., 3 * size :]], axis=-1)


class Attention(nn.Module):
    """Multi-head attention (see `dot_product_attention` for the kernel it uses per backend).

    Self-attention by default; pass `context` for cross-attention (attentive pooler).
    `qkv_bias="qv"` drops the key bias (VideoMAE: its key bias is fixed at zero), "none" drops all
    three; the output projection always has one. `positions` [B?, N, 3] (self-attention only)
    rotates queries and keys with V-JEPA 2's 3-D RoPE (`apply_rope`).
    """

    heads: int
    qkv_bias: QkvBias = "qkv"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        if positions is not None and context is not None:
            raise ValueError("attention positions (RoPE) apply to self-attention only")
        context = x if context is None else context
        width = x.shape[-1]
        if width % self.heads:
            raise ValueError(f"attention width {width} is not divisible by heads={self.heads}")
        head_dim = width // self.heads

        def einsum(name, shape, equation, kernel_axes, bias_axes, fan_in, fan_out, bias=True):
            # nn.Einsum creates the kernel at its full rank, so the logical names fit it.
            init = nn.initializers.xavier_uniform(in_axis=fan_in, out_axis=fan_out)
            return nn.Einsum(
                shape,
                equation,
                use_bias=bias,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=layers.partitioned(init, kernel_axes),
                bias_init=layers.partitioned(nn.initializers.zeros_init(), bias_axes),
                name=name,
            )

        def project(name: str, inputs: jax.Array) -> jax.Array:
            layer = einsum(
                name,
                (width, self.heads, head_dim),
                "...d,dhk->...hk",
                ("embed", "heads", "kv"),
                ("heads", "kv"),
                0,
                (1, 2),
                bias=self.qkv_bias == "qkv" or (self.qkv_bias == "qv" and name != "key"),
            )
            return layers.constrain(layer(inputs), head_axes)

        head_axes = ("batch", "length", "act_heads", "act_kv")
        q, k, v = project("query", x), project("key", context), project("value", context)
        if positions is not None:
            q, k = apply_rope(q, positions), apply_rope(k, positions)
        out = layers.constrain(dot_product_attention(q, k, v), head_axes)
        return einsum(
            "out",
            (self.heads, head_dim, width),
            "...hk,hkd->...d",
            ("heads", "kv", "embed"),
            ("embed",),
            (0, 1),
            2,
        )(out)


class Mlp(nn.Module):
    """Dense -> GELU -> Dense, the transformer feed-forward layer."""

    hidden: int
    out: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.out or x.shape[-1]
        h = layers.dense(
            self.hidden,
            ("embed", "mlp"),
            dtype=self.dtype,
            kernel_init=vit_kernel_init,
            name="fc1",
        )(x)
        h = layers.constrain(nn.gelu(h, approximate=False), ("batch", "length", "act_mlp"))
        return layers.dense(
            out, ("mlp", "embed"), dtype=self.dtype, kernel_init=vit_kernel_init, name="fc2"
        )(h)


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x))).

    Drop path removes a whole residual branch per example (Dropout broadcast over tokens and
    channels), which needs a "dropout" rng when training with `drop_path > 0`. `layer_scale`
    multiplies each branch by a learned per-channel vector (CaiT / BEiT `gamma_1`, `gamma_2`, as
    VideoMAE checkpoints trained with `init_values > 0` carry). `positions` [B?, N, 3]: token
    coordinates for RoPE attention (V-JEPA 2); None: no rotary embedding.
    """

    heads: int
    mlp_dim: int
    drop_path: float = 0.0
    qkv_bias: QkvBias = "qkv"
    ln_epsilon: float = 1e-6
    layer_scale: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, positions=None) -> jax.Array:
        return self._forward(x, train, positions)

    def _forward(self, x: jax.Array, train: bool, positions, drop_rate=None) -> jax.Array:
        """The block; `drop_rate` (a traced scalar, scanned blocks) overrides `drop_path`."""
        if drop_rate is None:
            drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=not train)
        else:
            drop = lambda y: self._drop_path(y, drop_rate, train)
        norm = lambda name: layers.layer_norm(dtype=self.dtype, epsilon=self.ln_epsilon, name=name)
        y = norm("norm1")(x)
        attention = Attention(self.heads, self.qkv_bias, dtype=self.dtype, name="attention")
        y = attention(y, positions=positions)
        x = x + drop(self._scale("gamma1", y))
        x = layers.constrain(x, TOKEN_AXES)
        y = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(norm("norm2")(x))
        x = x + drop(self._scale("gamma2", y))
        return layers.constrain(x, TOKEN_AXES)

    def _scale(self, name: str, y: jax.Array) -> jax.Array:
        if not self.layer_scale:
            return y
        init = layers.partitioned(nn.initializers.constant(0.1), ("embed",))
        return y * self.param(name, init, (y.shape[-1],), jnp.float32).astype(y.dtype)

    def _drop_path(self, y: jax.Array, rate: jax.Array, train: bool) -> jax.Array:
        """nn.Dropout over whole examples at a traced `rate` (one per scanned layer)."""
        if not train:
            return y
        keep = (1.0 - rate).astype(y.dtype)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0], 1, 1))
        # keep > 0 always (rates are in [0, drop_path], drop_path < 1); where() keeps the
        # gradient finite as nn.Dropout's select does.
        return jnp.where(mask, y / keep, jnp.zeros_like(y))


class ScanBlock(Block):
    """`Block` as the body of `nn.scan`: (x, drop_rate) -> (x, None), `train` an attribute
    (static under scan and remat), `positions` broadcast to every layer."""

    train: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, drop_rate, positions=None):
        return self._forward(x, self.train, positions, drop_rate), None


def block_class(remat: bool = False, policy: RematPolicy = "full") -> type[Block]:
    """`Block`, or `Block` rematerialised per block with a named checkpoint policy."""
    if not remat:
        return Block
    _check_policy(policy)
    # static_argnums counts `self` as argument 0: `train` (argument 2) is a Python bool.
    return nn.remat(Block, static_argnums=(2,), policy=REMAT_POLICIES[policy])


def _check_policy(policy: str) -> None:
    if policy not in REMAT_POLICIES:
        allowed = ", ".join(repr(p) for p in REMAT_POLICIES)
        raise ValueError(f"remat_policy {policy!r} is not allowed; allowed: {allowed}")


# ---------------------------------------------------------------------------------------------
# Scanned blocks (`scan_layers=True`): one `nn.scan` over a run of identical blocks whose
# parameters are stacked on a leading "layers" axis, so XLA compiles one block instead of
# `depth` copies (big_vision `Encoder(scan=True)`, MaxText). A run of blocks start..stop-1 is
# the module `blocks{start}_{stop}`; `scan_params` / `unscan_params` / `match_layout` convert
# between that layout and the unrolled `block{i}` one, exactly.

SCAN_AXIS = "layers"  # logical name of the stacked axis; every sharding preset maps it to None


def scanned_blocks(
    length: int,
    *,
    train: bool,
    remat: bool = False,
    policy: RematPolicy = "full",
    name: str,
    **block_kwargs,
) -> nn.Module:
    """`length` blocks as one scanned module, called as `module(x, drop_rates [length] | None,
    positions)` and returning (x, None); with `remat` each scanned block is rematerialised."""
    cls = ScanBlock
    if remat:
        _check_policy(policy)
        cls = nn.remat(ScanBlock, prevent_cse=False, policy=REMAT_POLICIES[policy])
    scan = nn.scan(
        cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast),
        length=length,
        metadata_params={nn.PARTITION_NAME: SCAN_AXIS},
    )
    return scan(train=train, name=name, **block_kwargs)


def scan_name(start: int, stop: int) -> str:
    """Name of the scanned module holding blocks start..stop-1."""
    return f"blocks{start}_{stop}"


_BLOCK = re.compile(r"^block(\d+)$")
_SCANNED = re.compile(r"^blocks(\d+)_(\d+)$")


def _stack(leaves):
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):  # abstract trees
        return jax.ShapeDtypeStruct((len(leaves), *leaves[0].shape), leaves[0].dtype)
    if all(isinstance(x, np.ndarray | np.generic) for x in leaves):  # host arrays stay host
        return np.stack(leaves)
    return jnp.stack(leaves)


def _index(x, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def _stack_trees(trees):
    return jax.tree.map(lambda *xs: _stack(xs), *trees)


def _scan_level(tree: dict, starts: tuple[int, ...]) -> dict:
    blocks = {int(m.group(1)): k for k in tree if (m := _BLOCK.match(k))}
    if not blocks:
        return tree
    depth = len(blocks)
    if sorted(blocks) != list(range(depth)):
        raise ValueError(f"scan_params: blocks {sorted(blocks)} are not numbered 0..{depth - 1}")
    bounds = sorted({0, *(s for s in starts if 0 < s < depth), depth})
    out = {k: v for k, v in tree.items() if not _BLOCK.match(k)}
    for start, stop in zip(bounds[:-1], bounds[1:]):
        out[scan_name(start, stop)] = _stack_trees([tree[blocks[i]] for i in range(start, stop)])
    return out


def _unscan_level(tree: dict) -> dict:
    out = {}
    for key, value in tree.items():
        m = _SCANNED.match(key)
        if not m:
            out[key] = value
            continue
        start, stop = int(m.group(1)), int(m.group(2))
        for i in range(stop - start):
            out[f"block{start + i}"] = jax.tree.map(lambda x, i=i: _index(x, i), value)
    return out


def _is_dict(x) -> bool:
    return isinstance(x, dict) or (hasattr(x, "items") and hasattr(x, "keys"))


def scan_params(params, starts: tuple[int, ...] = ()):
    """Unrolled -> scanned layout of one model's parameters (the dict holding `block0` ..
    `block{n-1}`, e.g. `params["encoder"]`): the blocks stacked into `blocks0_n`, split into
    several scanned runs at the block numbers in `starts` (e.g. `(tokenlearner_layer,)`).
    Exact: leaves are stacked, nothing is computed. Trees holding several models (an objective's
    params) convert with `match_layout`, which follows the layout of a reference tree."""
    return _scan_level(dict(params), starts)


def unscan_params(params):
    """Scanned -> unrolled layout (the inverse of `scan_params`), anywhere in the tree:
    `blocks{a}_{b}` -> `block{a}` .. `block{b-1}`, each leaf sliced off the stacked axis."""
    if not _is_dict(params):
        return params
    return _unscan_level({k: unscan_params(v) for k, v in params.items()})


def match_layout(tree, like):
    """`tree` with its blocks converted to the layout of `like` (scanned or unrolled, per dict;
    scanned runs split as in `like`), where exactly that differs; everything else unchanged,
    so a strict comparison afterwards still reports any other difference. `like` is only read
    for its keys (arrays, shape structs or checkpoint metadata)."""
    if not (_is_dict(tree) and _is_dict(like)):
        return tree
    keys = set(tree.keys())
    like_keys = set(like.keys())
    if keys != like_keys and _layout_keys(keys) and _layout_keys(like_keys):
        flat = _unscan_level(dict(tree))
        starts = tuple(int(m.group(1)) for k in like_keys if (m := _SCANNED.match(k)))
        converted = _scan_level(flat, starts) if starts else flat
        if set(converted) == like_keys:
            tree = converted
    return {k: match_layout(v, like[k]) if k in like else v for k, v in tree.items()}


def _layout_keys(keys) -> bool:
    return any(_BLOCK.match(k) or _SCANNED.match(k) for k in keys)


class TubeletEmbed(nn.Module):
    """Video -> tubelet tokens + position embedding, [B, t, h, w, D].

    A tubelet embedding is a strided convolution with kernel = stride; written as a reshape and
    a Dense it is the same maths and much faster on CPU. Learned position embeddings are stored
    for `posemb_grid` (default: the grid of the clip used at init) and resized trilinearly when a
    clip of another size comes in. "sincos_1d" is VideoMAE's table over the flattened index
    (`sincos_posemb_1d`), recomputed for each clip size as the reference does. "sincos_uniform"
    is V-JEPA's `uniform_power` table; "none" adds nothing (V-JEPA 2: RoPE in attention).
    """

    width: int
    patch: tuple[int, int, int] = (2, 16, 16)
    posemb: Literal["sincos", "learned", "sincos_1d", "sincos_uniform", "none"] = "sincos"
    posemb_grid: tuple[int, int, int] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array) -> jax.Array:
        grid = token_grid_of(video.shape[1:4], self.patch)
        pt, ph, pw = self.patch
        x = einops.rearrange(
            video.astype(self.dtype),
            "b (t pt) (h ph) (w pw) c -> b t h w (pt ph pw c)",
            pt=pt,
            ph=ph,
            pw=pw,
        )
        x = layers.dense(
            self.width,
            ("unsharded", "embed"),
            dtype=self.dtype,
            kernel_init=vit_kernel_init,
            name="projection",
        )(x)
        if self.posemb == "none":
            return x
        return x + self._position_embedding(grid).astype(x.dtype)

    def _position_embedding(self, grid: tuple[int, int, int]) -> jax.Array:
        if self.posemb in ("sincos", "sincos_uniform"):
            table = sincos_posemb_3d(grid, self.width, self.posemb == "sincos_uniform")
            return jnp.asarray(table.reshape(*grid, self.width))
        if self.posemb == "sincos_1d":
            table = sincos_posemb_1d(int(np.prod(grid)), self.width)
            return jnp.asarray(table.reshape(*grid, self.width))
        if self.posemb != "learned":
            raise ValueError(
                f"posemb {self.posemb!r} is not allowed; allowed: 'sincos', 'learned', "
                "'sincos_1d', 'sincos_uniform', 'none'"
            )
        stored = tuple(self.posemb_grid or grid)
        if self.has_variable("params", "posemb"):
            # Parameters already exist (apply): their grid is whatever init stored.
            stored = tuple(nn.unbox(self.get_variable("params", "posemb")).shape[:3])
        table = self.param(
            "posemb",
            layers.partitioned(
                nn.initializers.normal(0.02), ("unsharded", "unsharded", "unsharded", "embed")
            ),
            (*stored, self.width),
            jnp.float32,
        )
        if stored != tuple(grid):
            table = jax.image.resize(table, (*grid, self.width), method="trilinear")
        return table


def token_grid_of(clip: tuple[int, int, int], patch: tuple[int, int, int]) -> tuple[int, ...]:
    """Tubelet grid of a (frames, height, width) clip; each must be a multiple of the patch."""
    if any(c % p for c, p in zip(clip, patch)):
        raise ValueError(
            f"vit clip (frames, height, width)={tuple(clip)} is not divisible by "
            f"patch={tuple(patch)}; choose a clip size that is a multiple of the patch"
        )
    return tuple(c // p for c, p in zip(clip, patch))


@registry.register("model", "vit")
class ViT(nn.Module):
    """Video ViT encoder returning normalised tokens [B, N, D].

    `size` picks the published width/depth/heads/MLP; `width`, `depth`, `heads`, `mlp_dim`
    override it (tiny models for tests and CPU demos). With `tokenlearner_layer=L`, each frame's
    h*w tokens are summarised into `tokenlearner_tokens` learned tokens after L blocks; with
    `tokenfuser` every later block runs on the learned tokens and is fused back to the full grid.
    `qkv_bias`, `ln_epsilon`, `layer_scale`, `final_norm` and posemb "sincos_1d" reproduce
    published VideoMAE models exactly (HF VideoMAE with mean pooling has no final norm: its
    tokens are un-normalised and a classifier's `fc_norm` follows the pooling). Posemb
    "sincos_uniform" is V-JEPA's table; `rope` with posemb "none" is V-JEPA 2's 3-D rotary
    attention, at each kept token's own (t, h, w) position when `keep_idx` drops tokens.
    """

    size: Literal["Ti", "S", "B", "L", "H", "g"] = "B"
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    patch: tuple[int, int, int] = (2, 16, 16)
    posemb: Literal["sincos", "learned", "sincos_1d", "sincos_uniform", "none"] = "sincos"
    posemb_grid: tuple[int, int, int] | None = None
    rope: bool = False
    qkv_bias: QkvBias = "qkv"
    ln_epsilon: float = 1e-6
    layer_scale: bool = False
    final_norm: bool = True
    drop_path: float = 0.0
    remat: bool = False
    remat_policy: RematPolicy = "full"
    # One nn.scan over the blocks (stacked parameters `blocks{a}_{b}`, see `scan_params`):
    # compile time independent of depth. Unrolled `block{i}` (False) is the default layout.
    scan_layers: bool = False
    tokenlearner_layer: int | None = None
    tokenlearner_tokens: int = 8
    tokenlearner_version: Literal["1.1", "1.0"] = "1.1"
    tokenfuser: bool = False
    # Pixel statistics the input is normalised with (layers.to_model_input).
    pixel_norm: layers.PixelNorm = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, video: jax.Array, *, train: bool, keep_idx=None) -> jax.Array:
        width, depth, heads, mlp_dim = self.dims
        self._check_tokenlearner(depth, keep_idx)
        if video.ndim != 5:
            raise ValueError(f"vit expects video [B, T, H, W, 3], got shape {video.shape}")
        x = TubeletEmbed(
            width, self.patch, self.posemb, self.posemb_grid, dtype=self.dtype, name="embed"
        )(video)
        batch, t, h, w, _ = x.shape
        x = x.reshape(batch, t * h * w, width)
        positions = rope_positions((t, h, w), keep_idx) if self.rope else None
        if self.rope and self.tokenlearner_layer is not None:
            raise ValueError("vit rope=True cannot be combined with tokenlearner_layer")
        if keep_idx is not None:
            x = gather_tokens(x, keep_idx)
        x = layers.constrain(x, TOKEN_AXES)

        rates = np.linspace(0.0, self.drop_path, depth)  # stochastic depth grows with depth
        layer, grid = self.tokenlearner_layer, (t, h, w)
        if self.scan_layers:
            x = self._scanned(x, rates, positions, grid, train)
            if self.final_norm:
                x = layers.layer_norm(dtype=self.dtype, epsilon=self.ln_epsilon, name="norm")(x)
            return layers.constrain(x, TOKEN_AXES)
        block = block_class(self.remat, self.remat_policy)
        for i in range(depth):
            blk = block(
                heads,
                mlp_dim,
                float(rates[i]),
                qkv_bias=self.qkv_bias,
                ln_epsilon=self.ln_epsilon,
                layer_scale=self.layer_scale,
                dtype=self.dtype,
                name=f"block{i}",
            )
            if layer is not None and i >= layer and self.tokenfuser:
                x = self._fused_block(x, blk, grid, i, train)
                continue
            if layer == i:
                x = self._learn_tokens(self._learner("tokenlearner"), x, grid)
            x = blk(x, train, positions)
        if layer == depth and not self.tokenfuser:
            x = self._learn_tokens(self._learner("tokenlearner"), x, grid)
        if self.final_norm:
            x = layers.layer_norm(dtype=self.dtype, epsilon=self.ln_epsilon, name="norm")(x)
        return layers.constrain(x, TOKEN_AXES)

    def _scanned(self, x: jax.Array, rates: np.ndarray, positions, grid, train: bool):
        """The blocks as scanned runs: one, or two around a TokenLearner at `tokenlearner_layer`
        (the same computation as the unrolled loop; parameters `blocks{a}_{b}`)."""
        _, depth, heads, mlp_dim = self.dims
        if self.tokenfuser:
            raise ValueError(
                "vit model.scan_layers=True cannot be combined with tokenfuser=True (every "
                "fused block has its own TokenLearner and TokenFuser); use scan_layers=False"
            )
        layer = self.tokenlearner_layer
        bounds = [0, depth] if layer in (None, 0, depth) else [0, layer, depth]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if layer == start and layer is not None:
                x = self._learn_tokens(self._learner("tokenlearner"), x, grid)
            if stop == start:
                continue
            drop_rates = None
            if self.drop_path > 0:
                drop_rates = jnp.asarray(rates[start:stop], jnp.float32)
            x, _ = scanned_blocks(
                stop - start,
                train=train,
                remat=self.remat,
                policy=self.remat_policy,
                heads=heads,
                mlp_dim=mlp_dim,
                drop_path=self.drop_path,
                qkv_bias=self.qkv_bias,
                ln_epsilon=self.ln_epsilon,
                layer_scale=self.layer_scale,
                dtype=self.dtype,
                name=scan_name(start, stop),
            )(x, drop_rates, positions)
        if layer == depth and depth > 0:
            x = self._learn_tokens(self._learner("tokenlearner"), x, grid)
        return x

    def _learner(self, name: str) -> nn.Module:
        cls = (
            tokenlearner.TokenLearnerV11
            if self.tokenlearner_version == "1.1"
            else tokenlearner.TokenLearnerV10
        )
        return cls(self.tokenlearner_tokens, dtype=self.dtype, name=name)

    def _learn_tokens(self, learner: nn.Module, x: jax.Array, grid) -> jax.Array:
        """[B, t*h*w, D] -> [B, t*S, D], S learned tokens per frame."""
        t, h, w = grid
        frames = x.reshape(x.shape[0], t, h, w, x.shape[-1])
        return learner(frames).reshape(x.shape[0], t * self.tokenlearner_tokens, x.shape[-1])

    def _fused_block(self, x: jax.Array, block: nn.Module, grid, i: int, train: bool):
        """TokenLearner -> block on S tokens per frame -> TokenFuser back to h*w, + residual."""
        t, h, w = grid
        batch, _, dim = x.shape
        learned = self._learn_tokens(self._learner(f"tokenlearner{i}"), x, grid)
        learned = block(learned, train)
        fused = tokenlearner.TokenFuser(dtype=self.dtype, name=f"tokenfuser{i}")(
            learned.reshape(batch, t, self.tokenlearner_tokens, dim),
            x.reshape(batch, t, h, w, dim),
        )
        return fused.reshape(batch, t * h * w, dim) + x

    def _check_tokenlearner(self, depth: int, keep_idx) -> None:
        layer = self.tokenlearner_layer
        if layer is None:
            return
        if keep_idx is not None:
            raise ValueError(
                "vit with tokenlearner_layer set cannot take keep_idx: learned tokens mix every "
                "position of a frame, so masked objectives need tokenlearner_layer=None"
            )
        last = depth - 1 if self.tokenfuser else depth
        if not 0 <= layer <= last:
            raise ValueError(
                f"vit tokenlearner_layer={layer} must be in [0, {last}] (depth={depth})"
            )
        if self.tokenlearner_tokens < 1:
            raise ValueError(
                f"vit tokenlearner_tokens must be >= 1, got {self.tokenlearner_tokens}"
            )

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(width, depth, heads, mlp_dim) after applying the explicit overrides to `size`."""
        if self.size not in SIZES:
            allowed = ", ".join(repr(s) for s in SIZES)
            raise ValueError(f"vit size {self.size!r} is not allowed; allowed: {allowed}")
        width, depth, heads, mlp_dim = SIZES[self.size]
        if self.width is not None:
            width, mlp_dim = self.width, 4 * self.width  # a custom width keeps the 4x MLP
        if self.mlp_dim is not None:
            mlp_dim = self.mlp_dim
        depth = self.depth if self.depth is not None else depth
        heads = self.heads if self.heads is not None else heads
        return width, depth, heads, mlp_dim

    def pool(self, tokens: jax.Array) -> jax.Array:
        """Mean over tokens: the clip vector [B, D]."""
        return jnp.mean(tokens, axis=1)

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Grid of output tokens; with TokenLearner (no fuser) it is (t, S, 1)."""
        t, h, w = token_grid_of((frames, height, width), self.patch)
        if self.tokenlearner_layer is not None and not self.tokenfuser:
            return t, self.tokenlearner_tokens, 1
        return t, h, w

    def check_clip(self, frames: int, height: int, width: int) -> None:
        """Raises ConfigError for settings that cannot run on clips of this size; the trainer
        calls it at start-up, so they never reach init or the compiler as a shape traceback."""
        if any(c % p for c, p in zip((frames, height, width), self.patch)):
            raise ConfigError(
                f"config.model.patch={tuple(self.patch)}: does not divide the clip (frames, "
                f"height, width)=({frames}, {height}, {width}) the train ops make; allowed: a "
                "patch whose sides divide the clip's"
            )
        dim, depth, heads, _ = self.dims
        if heads < 1 or dim % heads:
            divisors = [d for d in range(1, dim + 1) if dim % d == 0]
            raise ConfigError(
                f"config.model.heads={heads}: does not divide the width {dim}; allowed: "
                f"{', '.join(map(str, divisors))}"
            )
        if self.tokenlearner_layer is None:
            return
        if self.scan_layers and self.tokenfuser:
            raise ConfigError(
                "config.model.scan_layers=True cannot be combined with tokenfuser=True (each "
                "fused block has its own TokenLearner and TokenFuser); allowed: scan_layers=False, "
                "or tokenfuser=False (TokenLearner at tokenlearner_layer scans the blocks before "
                "and after it)"
            )
        if self.tokenlearner_tokens < 1:
            raise ConfigError(
                f"config.model.tokenlearner_tokens={self.tokenlearner_tokens}: allowed: >= 1"
            )
        last = depth - 1 if self.tokenfuser else depth
        if not 0 <= self.tokenlearner_layer <= last:
            raise ConfigError(
                f"config.model.tokenlearner_layer={self.tokenlearner_layer}: allowed: 0 to "
                f"{last} (depth={depth}{', tokenfuser' if self.tokenfuser else ''})"
            )
        if self.rope:
            raise ConfigError(
                "config.model.rope=True cannot be combined with tokenlearner_layer; allowed: "
                "one of them"
            )

    @property
    def output_dim(self) -> int:
        return self.dims[0]


def gather_tokens(tokens: jax.Array, keep_idx: jax.Array) -> jax.Array:
    """tokens [B, N, D], keep_idx [B, K] int -> [B, K, D] (the kept tokens, in keep_idx order)."""
    if keep_idx.ndim != 2 or keep_idx.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"keep_idx must be [B, K] with B={tokens.shape[0]}, got shape {keep_idx.shape}"
        )
    if not jnp.issubdtype(keep_idx.dtype, jnp.integer):
        raise ValueError(f"keep_idx must be an integer array, got dtype {keep_idx.dtype}")
    return jnp.take_along_axis(tokens, keep_idx[..., None], axis=1)
