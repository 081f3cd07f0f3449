"""python -m vrl.compile --config=configs/<name>.py[:arg] --topology=v5p-32 [--num_slices=N]
       [--json=PATH] [--config.key=value ...]

Compiles the train step `vrl.main` would run for a Cloud TPU topology, on any machine, with no
TPU and no data, through libtpu's compile-only client (`pip install -r requirements-tpu.txt`).
The step is the same: the mesh from `config.mesh` on the topology's chips, the logical axis
rules, the objective, optimiser, compute dtype and remat; the batch has the shapes the config's
train pipeline and the objective's mask ops give one synthetic clip, times the global batch.
It prints, per chip: HBM use (arguments, outputs, temporaries) against the chip's capacity,
step FLOPs (analytic, vrl/flops.py, and XLA's), the collectives of the optimised HLO (count and
result bytes per kind), and a roofline lower bound on the step time (FLOPs at peak vs bytes at
HBM bandwidth) with the best-case MFU it implies.

Exit codes: 0 it fits; 1 it does not (one line: XLA's out-of-memory message); 2 config error.
Topologies: v4-N and v5p-N count TensorCores (2 per chip), v5e-N / v5litepod-N and v6e-N count
chips, as Cloud TPU names them.
"""

import dataclasses
import json
import math
import os
import re
import sys

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vrl import config as config_lib
from vrl import flag_errors, flops, metrics, optim, setup, sharding, state
from vrl.data import pipeline

FLAGS = flags.FLAGS
GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: what one chip has, and how Cloud TPU names its slices."""

    generation: str  # topology name prefix for jax.experimental.topologies
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    cores_per_chip: int  # the count in the accelerator type name is of cores
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    chip_config: str


# Public Cloud TPU system specifications.
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1228e9, 2, 3, "megacore"),
    "v5p": Chip("v5", 95 * GiB, 459e12, 2765e9, 2, 3, "megacore"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 1, 2, "default"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, 1, 2, "default"),
}
_ALIASES = {"v5litepod": "v5e"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4}
_BYTES |= {"u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


class TopologyError(ValueError):
    """A TPU type name this tool cannot map to a topology."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. "v5p-32"
    chip: Chip
    chips: int
    shape: tuple[int, ...]

    @property
    def topology_name(self) -> str:
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    def host_bounds(self) -> tuple[int, int, int]:
        """Chips per host: 2x2x1 on v4/v5p and multi-host v5e/v6e slices; slices of up to
        8 v5e/v6e chips sit on one host."""
        if self.chip.dims == 2 and self.chips <= 8:
            return (*self.shape, 1)
        return (2, 2, 1)


def parse_topology(name: str) -> Topology:
    """'v5p-32' -> 16 v5p chips as 2x2x4; 'v5e-16' -> 4x4; 'v6e-8' -> 2x4."""
    match = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise TopologyError(
            f"--topology={name!r}: expected <type>-<size> with type one of "
            f"v4, v5p, v5e (v5litepod), v6e, e.g. v5p-32"
        )
    chip = CHIPS[_ALIASES.get(match[1], match[1])]
    count = int(match[2])
    chips, rest = divmod(count, chip.cores_per_chip)
    smallest = 4 if chip.dims == 3 else 1
    if rest or chips < smallest or chips & (chips - 1):
        raise TopologyError(
            f"--topology={name!r}: {match[1]} slices come in powers of two "
            f"{'cores (2 per chip)' if chip.cores_per_chip == 2 else 'chips'}, e.g. "
            f"{match[1]}-{8 * chip.cores_per_chip}"
        )
    return Topology(name, chip, chips, _shape(chips, chip.dims))


def _shape(chips: int, dims: int) -> tuple[int, ...]:
    """The slice's chip grid as Cloud TPU builds it: 2-D slices double y then x (v5e-16 =
    4x4, v6e-8 = 2x4); 3-D slices are 2x2x1, 2x2x2, then double z, y, x in turn (v5p-32 =
    2x2x4, v5p-256 = 4x4x8)."""
    shape = ([2, 2, 2] if chips >= 8 else [2, 2, 1]) if dims == 3 else [1, 1]
    axis = dims - 1
    while math.prod(shape) < chips:
        shape[axis] *= 2
        axis = (axis - 1) % dims
    return tuple(shape)


def topology_devices(topology: Topology, num_slices: int) -> list:
    """The chips of `num_slices` slices of `topology`, as libtpu's compile-only client has
    them (no TPU needed)."""
    # libtpu takes a machine-wide lock unless several processes may load it, and probes for
    # pod workers unless given a host list: both read when the plugin loads, below.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies  # noqa: PLC0415 - loads libtpu: only here

    desc = topologies.get_topology_desc(
        topology_name=topology.topology_name,
        platform="tpu",
        chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=topology.host_bounds(),
        num_slices=num_slices,
    )
    return list(desc.devices)


def batch_shapes(s: setup.Setup, objective) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (per-example shape, dtype)} of the device batch: one clip through the train ops
    and the objective's mask ops (the trainer's batches are these, stacked)."""
    example = s.train_data.examples(0, objective.batch_ops(s.train_data.clip))[0]
    device, _ = pipeline.split_host_keys(example)
    return {k: (np.shape(v), np.asarray(v).dtype) for k, v in device.items()}


def without_data(config) -> dict:
    """The config with its train data replaced by synthetic videos (256 frames at 256 x 256),
    which the train pipeline turns into clips of the same shapes as the real data's."""
    config = config_lib.to_dict(config)
    data = dict(config["data"])
    data["source"] = {"name": "synthetic", "frames": 256, "size": 256}
    return {**config, "data": data}


def compile_plan(config, topology: Topology, num_slices: int = 1) -> dict:
    """Compiles the train step for `topology`; returns the report (see the module docstring).
    Raises jax's error when the step does not fit in HBM."""
    s = setup.setup(without_data(config))
    devices = topology_devices(topology, num_slices)
    mesh_cfg = s.mesh
    if num_slices > 1 and mesh_cfg.dcn_data == 1:
        mesh_cfg = dataclasses.replace(mesh_cfg, dcn_data=num_slices)
    mesh = sharding.make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.axis_rules()
    objective = s.objective.for_training(s.length)
    batch = {}
    for key, (shape, dtype) in batch_shapes(s, objective).items():
        if s.data.repeated_samples > 1:  # an example stacks its clips; batches count clips
            shape = shape[1:]
        batch[key] = jax.ShapeDtypeStruct(
            (s.data.batch_size, *shape),
            dtype,
            sharding=sharding.batch_sharding(mesh, 1 + len(shape)),
        )
    init_batch = {k: np.zeros((2, *v.shape[1:]), v.dtype) for k, v in batch.items()}
    tx, lr_schedule = optim.make(s.optim, s.length, objective.layer_ids)
    abstract, shardings = state.abstract_init_state(objective, tx, init_batch, mesh, rules)
    step_fn = state.make_train_step(
        objective,
        tx,
        lr_schedule,
        s.run.seed,
        s.optim.grad_accum_steps,
        s.run.on_nonfinite == "skip",
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        compiled = state.compile_step(step_fn, abstract, shardings, batch)
    return report(compiled, topology, num_slices, mesh, objective, batch, s)


def report(compiled, topology: Topology, num_slices, mesh, objective, batch, s) -> dict:
    chip = topology.chip
    chips = topology.chips * num_slices
    memory = compiled.memory_analysis()
    used = {
        "arguments": memory.argument_size_in_bytes,
        "outputs": memory.output_size_in_bytes,
        "aliased": memory.alias_size_in_bytes,
        "temporaries": memory.temp_size_in_bytes,
        "code": memory.generated_code_size_in_bytes,
    }
    total = used["arguments"] + used["outputs"] - used["aliased"] + used["temporaries"]
    total += used["code"]
    analysis = compiled.cost_analysis()
    analysis = (analysis[0] if isinstance(analysis, list) else analysis) or {}
    xla_flops = metrics.compiled_flops(compiled)
    clip = s.train_data.clip
    analytic = flops.model_flops(objective, batch, (clip.frames, clip.height, clip.width)) / chips
    bytes_accessed = float(analysis.get("bytes accessed", 0.0))
    compute_s = max(analytic, xla_flops or 0.0) / chip.peak_flops
    memory_s = bytes_accessed / chip.hbm_bandwidth
    bound_s = max(compute_s, memory_s)
    return {
        "topology": topology.name,
        "topology_name": topology.topology_name,
        "num_slices": num_slices,
        "chips": chips,
        "mesh": dict(mesh.shape),
        "global_batch": s.data.batch_size,
        "per_chip_hbm_bytes": {**used, "total": total, "capacity": chip.hbm_bytes},
        "fits": total <= chip.hbm_bytes,
        "flops_per_chip": {"analytic": analytic, "xla": xla_flops},
        "bytes_accessed_per_chip": bytes_accessed,
        "collectives": collectives(compiled.as_text()),
        "roofline": {
            "compute_s": compute_s,
            "memory_s": memory_s,
            "step_s": bound_s,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "best_mfu": analytic / (bound_s * chip.peak_flops) if bound_s else None,
        },
    }


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """{kind: {"count", "bytes"}} of the collectives in optimised HLO text. Bytes are those of
    each op's result (all arrays of a combined op's tuple); an async pair counts once, at its
    `-done` op, whose type is the result."""
    instruction = re.compile(
        r"^\s*(?:ROOT\s+)?\S+\s*=\s*(?P<type>.*?)\s(?P<kind>"
        + "|".join(COLLECTIVES)
        + r")(?P<phase>-start|-done)?\("
    )
    out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    for line in hlo.splitlines():
        match = instruction.match(line)
        if match is None or match["phase"] == "-start":
            continue
        out[match["kind"]]["count"] += 1
        out[match["kind"]]["bytes"] += sum(
            _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
            for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match["type"])
        )
    return {kind: v for kind, v in out.items() if v["count"]}


def format_report(r: dict) -> str:
    hbm = r["per_chip_hbm_bytes"]
    gib = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
    lines = [
        f"{r['topology']} ({r['topology_name']}, {r['num_slices']} slice(s), {r['chips']} chips)"
        f"; mesh {r['mesh']}; global batch {r['global_batch']}",
        f"HBM per chip: {gib(hbm['total'])} of {gib(hbm['capacity'])} "
        f"({100 * hbm['total'] / hbm['capacity']:.0f}%): arguments {gib(hbm['arguments'])}, "
        f"outputs {gib(hbm['outputs'])} (aliased {gib(hbm['aliased'])}), temporaries "
        f"{gib(hbm['temporaries'])}, code {gib(hbm['code'])}",
    ]
    f = r["flops_per_chip"]
    xla = f"{f['xla'] / 1e12:.3f}" if f["xla"] else "n/a"
    lines.append(f"Step TFLOPs per chip: analytic {f['analytic'] / 1e12:.3f}, XLA {xla}")
    if r["collectives"]:
        parts = [
            f"{k} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for k, v in r["collectives"].items()
        ]
        lines.append("Collectives: " + ", ".join(parts))
    else:
        lines.append("Collectives: none")
    roof = r["roofline"]
    mfu = f"{100 * roof['best_mfu']:.0f}%" if roof["best_mfu"] is not None else "n/a"
    lines.append(
        f"Roofline step time >= {1e3 * roof['step_s']:.1f} ms ({roof['bound']}-bound: compute "
        f"{1e3 * roof['compute_s']:.1f} ms, HBM {1e3 * roof['memory_s']:.1f} ms); "
        f"best-case MFU {mfu}"
    )
    lines.append("fits" if r["fits"] else "does not fit")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    try:
        topology = parse_topology(FLAGS.topology or "")
        result = compile_plan(FLAGS.config, topology, FLAGS.num_slices)
    except (TopologyError, config_lib.ConfigError, sharding.MeshError) as e:
        flag_errors.fail("config error", e, 2)
    except Exception as e:  # noqa: BLE001 - XLA's own out-of-memory error is the answer
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        flag_errors.fail(f"does not fit on {FLAGS.topology}", _first_line(str(e)), 1)
    print(format_report(result), flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)
    sys.exit(0 if result["fits"] else 1)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if "RESOURCE_EXHAUSTED" in line:
            return line.strip()
    return text.strip().splitlines()[0]


if __name__ == "__main__":
    # Defined here, not on import: tests import this module next to vrl.main's --config.
    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_string("topology", None, "Cloud TPU type, e.g. v5p-32, v5e-16, v6e-8.")
    flags.DEFINE_integer("num_slices", 1, "Slices (multislice over DCN).")
    flags.DEFINE_string("json", None, "Write the report as JSON to this path.")
    app.run(main, flags_parser=flag_errors.flags_parser())
