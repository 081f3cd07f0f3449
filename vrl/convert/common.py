"""What every format shares: reading tensors, consuming them by key, writing a strict run directory.

A format reads a published checkpoint into a `Tensors` (a flat {key: numpy array}), moves each
tensor it understands to a vrl parameter path with `take`, and returns a `Converted` naming the
model and objective configs that build those parameters. `write_run` then checks both sides
strictly (every source tensor used, every vrl parameter filled with the shape the config
builds) and writes an ordinary run directory: an Orbax checkpoint at step 0 with the run's
config, which every probe, `api.load_encoder`, fine-tuning and SALT read unchanged.
"""

import argparse
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import common as config_common
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import state as state_lib
from vrl.objectives import base


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message lists every difference."""


# --------------------------------------------------------------------------------------------
# Reading


def _torch_load(path: Path) -> Mapping:
    try:
        import torch  # noqa: PLC0415 - optional: only .pth/.bin files need it
    except ImportError:
        raise ConversionError(
            f"{path}: reading PyTorch files needs torch (pip install torch); "
            "safetensors files do not"
        ) from None
    # Training checkpoints of the reference repositories pickle their argparse arguments next
    # to the weights; those are allowed, anything else executable is refused (weights_only).
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_tensors(path: str | Path) -> dict[str, Any]:
    """The tensors of a checkpoint file or a Hugging Face folder, as a nested or flat mapping.

    Files: `.safetensors` (read without torch), `.pth`/`.pt`/`.bin` (torch.load, weights only).
    Folders: `model.safetensors`, `pytorch_model.bin`, or their sharded forms with an index.
    The result is what the file holds (e.g. {"model": {...}} for a training checkpoint);
    formats unwrap it with `unwrap`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_tensors(path / name)
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (path / index).is_file():
                shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
                out = {}
                for shard in shards:
                    out.update(read_tensors(path / shard))
                return out
        raise ConversionError(
            f"{path}: no model.safetensors or pytorch_model.bin (or a sharded index) in this "
            "folder; pass the folder written by save_pretrained"
        )
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file  # noqa: PLC0415 - only this format needs it

        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin", ".tar", ".ckpt"):
        return _torch_load(path)
    raise ConversionError(
        f"{path}: unknown file type {path.suffix!r}; allowed: .safetensors, .pth, .pt, .bin"
    )


def read_config_json(folder: str | Path) -> dict:
    """`config.json` of a Hugging Face folder."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        raise ConversionError(f"{path}: missing; pass the folder written by save_pretrained")
    return json.loads(path.read_text())


def unwrap(tree: Mapping, keys: tuple[str, ...], strip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state dict under the first of `keys` that `tree` has (or `tree` itself), flattened,
    with any of the prefixes `strip` removed from every key (e.g. "module.", "backbone.")."""
    for key in keys:
        if isinstance(tree.get(key), Mapping):
            tree = tree[key]
            break
    flat = _flatten(tree)
    out = {}
    for key, value in flat.items():
        changed = True
        while changed:
            changed = False
            for prefix in strip:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


class Tensors:
    """Source tensors consumed by key, so that nothing is silently left behind.

    `take(key)` returns a float32/integer numpy array and records the key as used; `ignore`
    marks keys that carry nothing vrl needs (e.g. fixed position tables that vrl recomputes).
    `unused()` lists what neither took.
    """

    def __init__(self, tensors: Mapping[str, Any], source: str):
        self._tensors = dict(tensors)
        self.source = source
        self._used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def take(self, key: str) -> np.ndarray:
        if key not in self._tensors:
            raise ConversionError(f"{self.source}: missing tensor {key!r}")
        self._used.add(key)
        array = _to_numpy(self._tensors[key])
        return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array

    def ignore(self, key: str) -> None:
        if key in self._tensors:
            self._used.add(key)

    def unused(self) -> list[str]:
        return sorted(set(self._tensors) - self._used)


# --------------------------------------------------------------------------------------------
# Building the vrl side


@dataclasses.dataclass
class Converted:
    """A published checkpoint in vrl's terms.

    `model` / `objective` are the config sections (with `name`) that build the parameters;
    `clip` is (frames, height, width) of the clips the checkpoint was trained on (it sizes the
    init batch; other clip sizes still load); `params` / `extra` are nested dicts of numpy
    arrays as the objective names them; `mapping` lists (source key, vrl path, shape) for
    `--dry_run`. `data` overrides keys of `config.data` (by default the clips are centre
    clips of `clip`'s size at frame stride 2, so probes see what the model was trained on).
    """

    model: dict
    objective: dict
    clip: tuple[int, int, int]
    params: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    mapping: list[tuple[str, str, tuple]] = dataclasses.field(default_factory=list)
    data: dict = dataclasses.field(default_factory=dict)

    def put(self, path: str, value: np.ndarray, source: str = "") -> None:
        """Places `value` at "params/encoder/block0/..." or "extra/target/..."."""
        tree_name, *parts = path.split("/")
        if tree_name not in ("params", "extra") or not parts:
            raise ValueError(f"path {path!r} must start with params/ or extra/")
        node = getattr(self, tree_name)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if parts[-1] in node:
            raise ValueError(f"{path} is set twice")
        node[parts[-1]] = np.asarray(value)
        self.mapping.append((source, path, tuple(np.shape(value))))

    def move(self, tensors: Tensors, key: str, path: str, fn: Callable = lambda a: a) -> None:
        """`put(path, fn(tensors.take(key)))`: one source tensor to one vrl parameter."""
        self.put(path, fn(tensors.take(key)), key)


def run_config(converted: Converted, note: str) -> dict:
    """A complete run config (every key, as `vrl.main` saves it) for the converted model."""
    c = config_common.run_config(total_steps=0)
    model = dict(converted.model)
    objective = dict(converted.objective)
    c.model = config_common.defaults("model", model.pop("name"), **model)
    c.objective = config_common.defaults("objective", objective.pop("name"), **objective)
    frames, size = converted.clip[0], min(converted.clip[1:])
    c.data.update(
        {
            "train_pp": f"uniform_clip(frames={frames}, stride=2)"
            f"|random_resized_crop(size={size})|flip",
            "test_pp": f"center_clip(frames={frames}, stride=2)|resize_short(size={size})"
            f"|center_crop(size={size})",
            **converted.data,
        }
    )
    out = config_lib.to_dict(c)
    out["converted_from"] = note
    return out


def init_batch(objective: base.Objective, clip: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """A batch of 2 zero clips with whatever the objective's pipeline ops add (masks)."""
    frames, height, width = clip
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(2):
        example = {"video": np.zeros((frames, height, width, 3), np.uint8)}
        for _, op in objective.batch_ops(base.ClipSpec(frames, height, width)):  # (stage, op)
            example = op(example, rng)
        examples.append(example)
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def check(converted: Converted, tensors: Tensors, objective: base.Objective, batch: dict):
    """Raises ConversionError listing every unused source tensor and every missing, unexpected
    or reshaped vrl parameter (what strict loading would refuse); returns the (params, extra)
    shapes the objective builds."""
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(objective.init(r, batch)), jax.random.key(0))
    problems = [f"unused source tensor {key}" for key in tensors.unused()]
    for name, built, expected in (
        ("params", converted.params, shapes[0]),
        ("extra", converted.extra, shapes[1]),
    ):
        try:
            ckpt_lib.check_matches(built, expected, name)
        except ckpt_lib.CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise ConversionError(
            f"{tensors.source}: cannot convert without losing or inventing weights "
            f"({len(problems)} problems): " + "; ".join(problems)
        )
    return shapes


def _in_structure(expected, built):
    """`built` laid out as `expected`, empty sub-trees included (e.g. {"batch_stats":
    {"encoder": {}}} of a model without batch norm), so a restore finds the tree it asks for."""
    if isinstance(expected, Mapping):
        built = built if isinstance(built, Mapping) else {}
        return {key: _in_structure(value, built.get(key, {})) for key, value in expected.items()}
    return built


def write_run(converted: Converted, tensors: Tensors, workdir: str, note: str) -> dict:
    """Checks `converted` strictly, then writes WORKDIR/checkpoints/0; returns the run config."""
    config = run_config(converted, note)
    objective = base.build(config)
    batch = init_batch(objective, converted.clip)
    shapes = check(converted, tensors, objective, batch)
    if ckpt_lib.complete_steps(workdir):
        raise ConversionError(
            f"{ckpt_lib.directory(workdir)} already holds checkpoints; convert into a new --workdir"
        )
    as_f32 = lambda a: a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    state = {
        "step": np.zeros((), np.int32),
        "params": jax.tree.map(as_f32, _in_structure(shapes[0], converted.params)),
        "extra": jax.tree.map(as_f32, _in_structure(shapes[1], converted.extra)),
    }
    meta = {"config": config, "init_batch": state_lib.batch_spec(batch)}
    mngr = ckpt_lib.manager(workdir, ckpt_lib.CheckpointConfig(async_save=False))
    ckpt_lib.save_items(  # records the step's checksums, as every save does
        mngr,
        0,
        {ckpt_lib.STATE: ocp.args.PyTreeSave(state), ckpt_lib.CONFIG: ocp.args.JsonSave(meta)},
        force=True,
    )
    mngr.wait_until_finished()
    mngr.close()
    return config


def format_mapping(converted: Converted, tensors: Tensors) -> str:
    """The `--dry_run` listing: one line per source tensor -> vrl parameter."""
    width = max((len(src) for src, _, _ in converted.mapping), default=10)
    lines = [
        f"{src or '(computed)':<{width}}  ->  {path}  {list(shape)}"
        for src, path, shape in converted.mapping
    ]
    lines += [
        f"{key:<{width}}  ->  (ignored: not a parameter vrl uses)"
        for key in sorted(
            set(tensors.keys()) - set(tensors.unused()) - {s for s, _, _ in converted.mapping}
        )
    ]
    lines += [f"{key:<{width}}  ->  UNUSED" for key in tensors.unused()]
    return "\n".join(lines)
