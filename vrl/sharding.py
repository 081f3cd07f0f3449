"""The device mesh, the logical-axis rules that lay parameters out on it, host -> global batches.

Every parallelism choice lives in `config.mesh`: the sizes of the `data`, `fsdp` and `model`
axes (one may be -1: "the rest") and a rules preset that maps the models' logical axis names
(see vrl/models/layers.py) to mesh axes. Data parallel, FSDP and tensor parallel are presets,
not code paths: the compiler inserts the collectives.

    --config.mesh.fsdp=8 --config.mesh.rules=fsdp               ZeRO-3 style FSDP
    --config.mesh.model=2 --config.mesh.rules=tensor            Megatron-style MLP/heads split
    --config.mesh.dcn_data=4                                    data axis over 4 slices / hosts

A parameter dimension that does not divide its mesh axes is kept whole (replicated along that
dimension) instead of failing: a 3-head ViT under a 2-way model axis still runs.
"""

import collections
import dataclasses
import math
from typing import Literal

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Every logical name the models use (vrl/models/layers.py); rules may only name these.
# "layers" is the stacked axis of scanned blocks (ViT scan_layers): never split.
PARAM_AXES = ("embed", "mlp", "heads", "kv", "conv_in", "conv_out", "classes", "layers")
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_mlp", "act_heads", "act_kv")

_BATCH = [("batch", BATCH_AXES)]
_LAYERS = [("layers", ())]  # scanned blocks' stacked axis: on no mesh axis (never split)
_FSDP = [("embed", "fsdp"), ("conv_out", "fsdp")]
_TENSOR = [
    ("mlp", "model"),
    ("heads", "model"),
    ("act_mlp", "model"),
    ("act_heads", "model"),
]
RULES = {
    "data": _BATCH + _LAYERS,
    "fsdp": _BATCH + _LAYERS + _FSDP,
    "tensor": _BATCH + _LAYERS + _TENSOR,
    "fsdp_tensor": _BATCH + _LAYERS + _FSDP + _TENSOR,
}


class MeshError(ValueError):
    """A mesh that does not fit the devices or the batch; the message says what would."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes (one may be -1) and the logical-axis rules preset."""

    data: int = -1
    fsdp: int = 1
    model: int = 1
    rules: Literal["data", "fsdp", "tensor", "fsdp_tensor"] = "data"
    # Multi-slice TPU pods (or GPU nodes): how many groups the data axis spans over the slow
    # data-centre network; fsdp and model stay inside a group. 1 = one slice.
    dcn_data: int = 1

    def axis_rules(self) -> tuple[tuple[str, object], ...]:
        return tuple(RULES[self.rules])


def axis_sizes(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Fills in the -1 axis so the product is `num_devices`, or raises MeshError."""
    sizes = [cfg.data, cfg.fsdp, cfg.model]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"config.mesh: sizes {dict(zip(AXES, sizes))}: at most one -1, others >= 1")
    known = math.prod(s for s in sizes if s != -1)
    if unknown:
        if num_devices % known:
            raise MeshError(
                f"config.mesh: {num_devices} devices do not divide by the fixed axes' "
                f"product {known}"
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"config.mesh: {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"there are {num_devices}"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    """The (data, fsdp, model) mesh; with dcn_data > 1 a hybrid mesh whose data axis is split
    first across slices (TPU) or groups of processes (GPU hosts), then within each."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = axis_sizes(cfg, len(devices))
    if cfg.dcn_data < 1:
        raise MeshError(f"config.mesh.dcn_data={cfg.dcn_data}: must be >= 1 (1 = one slice)")
    if cfg.dcn_data > 1:
        array = _hybrid_device_array(sizes, cfg.dcn_data, devices)
    else:
        array = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(array, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def _hybrid_device_array(sizes, dcn_data: int, devices) -> np.ndarray:
    if sizes[0] % dcn_data:
        raise MeshError(f"config.mesh.dcn_data={dcn_data} must divide the data axis {sizes[0]}")
    ici = (sizes[0] // dcn_data, sizes[1], sizes[2])
    if all(d.platform == "tpu" and hasattr(d, "slice_index") for d in devices):
        slices = len({d.slice_index for d in devices})
        if slices != dcn_data:
            raise MeshError(
                f"config.mesh.dcn_data={dcn_data}, but the devices span {slices} slice(s)"
            )
        return mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
    groups = process_groups(devices, dcn_data)
    # Each group is one granule: fast axes inside it, the data axis stacked across groups.
    return np.concatenate(
        [mesh_utils.create_device_mesh(ici, g, allow_split_physical_axes=True) for g in groups]
    )


def process_groups(devices, count: int) -> list[list]:
    """Devices split into `count` groups of consecutive processes (e.g. the GPU hosts when each
    host runs one process per GPU); every group gets the same number of processes."""
    processes = sorted({d.process_index for d in devices})
    if len(processes) % count:
        raise MeshError(
            f"config.mesh.dcn_data={count} must divide the number of processes "
            f"{len(processes)} (or of TPU slices); use 1 on a single host"
        )
    per_group = len(processes) // count
    rank = {p: i // per_group for i, p in enumerate(processes)}
    groups = [[] for _ in range(count)]
    for d in sorted(devices, key=lambda d: (d.process_index, d.id)):
        groups[rank[d.process_index]].append(d)
    return groups


def describe(mesh: Mesh, cfg: MeshConfig) -> str:
    """One log line: axis sizes, rules preset, processes and devices."""
    return (
        f"mesh {dict(mesh.shape)} rules={cfg.rules!r} dcn_data={cfg.dcn_data} over "
        f"{mesh.size} {mesh.devices.flat[0].platform} devices in {jax.process_count()} "
        f"process(es), {len(mesh.local_devices)} local"
    )


def batch_size_per_process(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> int:
    """Examples each process loads; every micro-batch must split evenly over data x fsdp."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % data_parallel:
        raise MeshError(
            f"config.data.batch_size={global_batch} must be a multiple of the data-parallel size "
            f"{data_parallel} (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    if global_batch % (grad_accum_steps * data_parallel):
        raise MeshError(
            f"config.optim.grad_accum_steps={grad_accum_steps}: each micro-batch of "
            f"config.data.batch_size={global_batch} must split over the data-parallel size "
            f"{data_parallel}; use a batch size that is a multiple of "
            f"{grad_accum_steps * data_parallel}"
        )
    if global_batch % jax.process_count():
        raise MeshError(
            f"config.data.batch_size={global_batch} must be a multiple of the process count "
            f"{jax.process_count()}"
        )
    return global_batch // jax.process_count()


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in batch.items()
    }


def fit_spec(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """`spec` with each dimension's mesh axes cut to the longest prefix whose size divides it.

    jit refuses a sharding that does not divide an array dimension, so a 3-head attention
    kernel under a 2-way model axis keeps its head dimension whole (replicated) instead.
    """
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        fitted.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while fitted and fitted[-1] is None:
        fitted.pop()
    return PartitionSpec(*fitted)


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned boxes.

    Dimensions that do not divide their mesh axes fall back to replication (see `fit_spec`);
    each fallback is logged once with the parameter's path.
    """
    specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    # The boxes' values (not nn.meta.unbox, which would add sharding constraints outside jit).
    shapes = jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        abstract_tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )
    fallbacks = []

    def fit(path, sharding, leaf):
        spec = fit_spec(leaf.shape, sharding.spec, mesh)
        wanted = _without_trailing_none(sharding.spec)
        if spec != wanted:
            name = jax.tree_util.keystr(path)
            fallbacks.append(f"{name} {tuple(leaf.shape)} {wanted} -> {spec}")
        return NamedSharding(mesh, spec, memory_kind=sharding.memory_kind)

    fitted = jax.tree_util.tree_map_with_path(fit, shardings, shapes)
    if fallbacks:
        shown = "; ".join(fallbacks[:8]) + ("; ..." if len(fallbacks) > 8 else "")
        logging.info(
            "%d array(s) keep a dimension whole because it does not divide the mesh axes: %s",
            len(fallbacks),
            shown,
        )
    return fitted


def _without_trailing_none(spec: PartitionSpec) -> PartitionSpec:
    entries = list(spec)
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def bytes_per_device(tree) -> dict[object, int]:
    """Bytes of `tree`'s arrays held by each addressable device, from the actual shards."""
    out = collections.Counter()
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device] += shard.data.nbytes
    return dict(out)
