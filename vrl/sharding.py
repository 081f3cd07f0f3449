"""The device mesh, the logical-axis rules that lay parameters out on it, and host -> global batches.

Every parallelism choice lives in `config.mesh`: the sizes of the `data`, `fsdp` and `model`
axes (one may be -1: "the rest") and a rules preset that maps the models' logical axis names
(see vrl/models/layers.py) to mesh axes. Data parallel, FSDP and tensor parallel are presets,
not code paths: the compiler inserts the collectives.
"""

import dataclasses
import math
from typing import Literal

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

_BATCH = [("batch", BATCH_AXES)]
_FSDP = [("embed", "fsdp"), ("conv_out", "fsdp")]
_TENSOR = [
    ("mlp", "model"),
    ("heads", "model"),
    ("act_mlp", "model"),
    ("act_heads", "model"),
]
RULES = {
    "data": _BATCH,
    "fsdp": _BATCH + _FSDP,
    "tensor": _BATCH + _TENSOR,
    "fsdp_tensor": _BATCH + _FSDP + _TENSOR,
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
    # Multi-slice TPU pods: how many slices the data axis spans over DCN (1 = one slice).
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
                f"config.mesh: {num_devices} devices do not divide by the fixed axes' product {known}"
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"config.mesh: {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"there are {num_devices}"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = axis_sizes(cfg, len(devices))
    if cfg.dcn_data > 1:
        if sizes[0] % cfg.dcn_data:
            raise MeshError(f"config.mesh.dcn_data={cfg.dcn_data} must divide data={sizes[0]}")
        ici = (sizes[0] // cfg.dcn_data, sizes[1], sizes[2])
        array = mesh_utils.create_hybrid_device_mesh(ici, (cfg.dcn_data, 1, 1), devices)
    else:
        array = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(array, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def batch_size_per_process(global_batch: int, mesh: Mesh) -> int:
    """Examples each process loads; the global batch must split evenly over data x fsdp."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % data_parallel:
        raise MeshError(
            f"config.data.batch_size={global_batch} must be a multiple of the data-parallel size "
            f"{data_parallel} (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
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


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned boxes."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
