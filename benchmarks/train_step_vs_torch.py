"""vrl's jitted train step against the same model trained plainly in PyTorch, on this machine.

    python -m benchmarks.train_step_vs_torch [--cases=vit_s,cvrl_r3d18] [--steps=5] [--record]
    python -m benchmarks.train_step_vs_torch --threads=1      # per-core efficiency, load-proof
    python -m benchmarks.train_step_vs_torch --tiny --steps=1    # a quick check of the script

Each case is one supervised classification step (forward, backward, AdamW) of the same model on
the same uint8 batch in float32. vrl's side is the step training runs (`vrl.state.
make_train_step`, jitted with the state donated, built as `common.time_train_step` builds it);
PyTorch's is the model written the way a user would write it (nn.Conv3d patch embedding,
F.scaled_dot_product_attention, nn.BatchNorm3d, torch.optim.AdamW). Both use the same number of
threads (torch.set_num_threads = cores). Their steps alternate one by one in one process, so
load from other work on the machine hits both; the table reports median step times and the
median of the per-step ratios. Goal: vrl's step time <= 0.8 x PyTorch's.

CPU seconds per step (all threads of the process) are reported too: on a shared machine they
say how much work each side did, whatever share of the cores it got.

Needs PyTorch: `pip install -r benchmarks/requirements.txt` (CPU build).
"""

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from vrl import config as config_lib
from vrl import optim, sharding, state
from vrl.durations import RunLength
from vrl.models import layers, r3d, vit
from vrl.objectives import base

try:
    import torch
    import torch.nn.functional as F  # noqa: N812 - PyTorch's own convention
    from torch import nn as tnn
except ImportError as error:
    raise SystemExit(
        "benchmarks/train_step_vs_torch.py compares against PyTorch, which is not installed: "
        "pip install -r benchmarks/requirements.txt"
    ) from error

_CASES = flags.DEFINE_list("cases", ["vit_s", "cvrl_r3d18"], "Cases to run: vit_s, cvrl_r3d18.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per framework (after one warm-up step).")
_THREADS = flags.DEFINE_integer("threads", None, "Threads for both: the cores (default) or 1.")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny models and clips: a quick check of the script.")
_RECORD = flags.DEFINE_bool("record", False, "Write the table into docs/PERFORMANCE.md.")

GOAL = 0.8
NUM_CLASSES = 400
CLIP = (16, 112, 112)
TINY_CLIP = (4, 32, 32)
CASES = {
    "vit_s": dict(
        model={"name": "vit", "size": "S", "patch": (2, 16, 16)},
        batch=8,
        tiny={"width": 32, "depth": 2, "heads": 2, "patch": (2, 8, 8)},
    ),
    "cvrl_r3d18": dict(model={"name": "cvrl_r3d", "depth": 18}, batch=4, tiny={"width": 0.125}),
}


# ---------------------------------------------------------------------------------------------
# The PyTorch models, written plainly.


class TorchBlock(tnn.Module):
    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        self.heads = heads
        self.norm1 = tnn.LayerNorm(width, eps=1e-6)
        self.qkv = tnn.Linear(width, 3 * width)
        self.proj = tnn.Linear(width, width)
        self.norm2 = tnn.LayerNorm(width, eps=1e-6)
        self.fc1 = tnn.Linear(width, mlp)
        self.fc2 = tnn.Linear(mlp, width)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attended)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TorchViT(tnn.Module):
    def __init__(self, dims, patch, grid, classes: int):
        super().__init__()
        width, depth, heads, mlp = dims
        self.embed = tnn.Conv3d(3, width, patch, stride=patch)
        self.register_buffer("posemb", torch.from_numpy(vit.sincos_posemb_3d(grid, width)))
        self.blocks = tnn.ModuleList(TorchBlock(width, heads, mlp) for _ in range(depth))
        self.norm = tnn.LayerNorm(width, eps=1e-6)
        self.head = tnn.Linear(width, classes)

    def forward(self, x):  # [B, 3, T, H, W]
        x = self.embed(x).flatten(2).transpose(1, 2) + self.posemb
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def _conv(c_in: int, c_out: int, kernel, stride=(1, 1, 1)):
    padding = tuple(k // 2 for k in kernel)
    return tnn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)


class TorchBasicBlock(tnn.Module):
    def __init__(self, c_in: int, features: int, stride: int, kt: int):
        super().__init__()
        self.conv1 = _conv(c_in, features, (kt, 3, 3), (1, stride, stride))
        self.bn1 = tnn.BatchNorm3d(features)
        self.conv2 = _conv(features, features, (1, 3, 3))
        self.bn2 = tnn.BatchNorm3d(features)
        self.shortcut = None
        if c_in != features or stride != 1:
            self.shortcut = tnn.Sequential(
                _conv(c_in, features, (1, 1, 1), (1, stride, stride)), tnn.BatchNorm3d(features)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class TorchR3D18(tnn.Module):
    """CVRL R3D-18 (not torchvision's r3d_18): 5x7x7 stem, 1x3x3 max pool, temporal kernels
    1, 1, 3, 3 per stage."""

    def __init__(self, width: float, classes: int):
        super().__init__()
        c_in = r3d._scaled(64, width)
        self.stem = tnn.Sequential(
            _conv(3, c_in, (5, 7, 7), (2, 2, 2)),
            tnn.BatchNorm3d(c_in),
            tnn.ReLU(),
            tnn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
        )
        blocks = []
        _, counts = r3d.STAGES[18]
        for stage, (count, base_width, kt) in enumerate(
            zip(counts, r3d.STAGE_WIDTHS, r3d.TEMPORAL_KERNELS)
        ):
            features = r3d._scaled(base_width, width)
            for i in range(count):
                blocks.append(TorchBasicBlock(c_in, features, 2 if stage and not i else 1, kt))
                c_in = features
        self.blocks = tnn.Sequential(*blocks)
        self.head = tnn.Linear(c_in, classes)

    def forward(self, x):  # [B, 3, T, H, W]
        return self.head(self.blocks(self.stem(x)).mean((2, 3, 4)))


class TorchStep:
    """One supervised step on a uint8 [B, T, H, W, 3] batch, normalised as vrl does."""

    def __init__(self, model: tnn.Module, batch: dict):
        torch.manual_seed(0)
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        self.video = torch.from_numpy(batch["video"])
        self.labels = torch.from_numpy(batch["label/label"].astype(np.int64))
        self.mean = torch.from_numpy(layers.MEAN_RGB).view(1, 3, 1, 1, 1)
        self.std = torch.from_numpy(layers.STDDEV_RGB).view(1, 3, 1, 1, 1)

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        x = self.video.permute(0, 4, 1, 2, 3).float().div(255.0)
        logits = self.model((x - self.mean) / self.std)
        loss = F.cross_entropy(logits, self.labels)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# The cases.


def build(name: str, tiny: bool):
    """(vrl objective, PyTorch model, clip, batch size) of a case."""
    case = CASES[name]
    clip = TINY_CLIP if tiny else CLIP
    batch = 2 if tiny else case["batch"]
    model_cfg = dict(case["model"], **(case["tiny"] if tiny else {}))
    encoder = config_lib.component("model", model_cfg, "model", dtype=jnp.float32)
    objective = config_lib.component(
        "objective",
        {"name": "supervised", "num_classes": NUM_CLASSES},
        "objective",
        encoder=encoder,
    )
    if isinstance(encoder, vit.ViT):
        grid = vit.token_grid_of(clip, encoder.patch)
        torch_model = TorchViT(encoder.dims, encoder.patch, grid, NUM_CLASSES)
    else:
        torch_model = TorchR3D18(encoder.width, NUM_CLASSES)
    return objective, torch_model, clip, batch


class VrlStep:
    """vrl's jitted train step, compiled once, timed one call at a time.

    Built as `common.time_train_step` and the trainer build it (same optimiser, mesh and
    `vrl.state.compile_step`), but kept alive so the two frameworks can alternate step by step.
    """

    def __init__(self, objective, batch: dict):
        mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
        rules = sharding.RULES["data"]
        tx, lr = optim.make(
            optim.OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05),
            RunLength(steps_per_epoch=100, batch_size=len(batch["video"]), total_steps=1000),
        )
        init_batch = {k: v[:2] for k, v in batch.items()}
        self.state, shardings = state.init_state(objective, tx, init_batch, mesh, rules, seed=0)
        step_fn = state.make_train_step(objective, tx, lr, seed=0, accum=1, skip_nonfinite=False)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            self.batch = sharding.to_global(batch, mesh)
            start = time.perf_counter()
            self.compiled = state.compile_step(step_fn, self.state, shardings, self.batch)
            self.compile_s = time.perf_counter() - start

    def __call__(self) -> float:
        self.state, metrics = self.compiled(self.state, self.batch)
        return float(metrics["train/loss"])


def timed(step) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, tiny: bool, steps: int, warmup: int = 1) -> dict:
    """Alternates single steps of the two frameworks, `steps` timed steps each."""
    objective, torch_model, clip, batch_size = build(name, tiny)
    batch = common.make_batch(objective, base.ClipSpec(*clip), batch_size)
    sides = {"vrl": VrlStep(objective, batch), "torch": TorchStep(torch_model, batch)}
    for step in sides.values():
        for _ in range(warmup):
            step()
    times = {side: [] for side in sides}
    for i in range(steps):
        # Alternate who goes first, so a burst of load does not always land on the same side.
        for side in ("vrl", "torch") if i % 2 == 0 else ("torch", "vrl"):
            times[side].append(timed(sides[side]))
        (vrl_wall, vrl_cpu), (torch_wall, torch_cpu) = times["vrl"][-1], times["torch"][-1]
        print(
            f"{name} step {i + 1}/{steps}: vrl {vrl_wall:.3f} s ({vrl_cpu:.3f} s CPU), "
            f"PyTorch {torch_wall:.3f} s ({torch_cpu:.3f} s CPU)",
            flush=True,
        )
    wall = {side: [w for w, _ in t] for side, t in times.items()}
    cpu = {side: [c for _, c in t] for side, t in times.items()}
    ratios = [v / t for v, t in zip(wall["vrl"], wall["torch"])]
    cpu_ratios = [v / t for v, t in zip(cpu["vrl"], cpu["torch"])]
    return {
        "case": name,
        "batch": batch_size,
        "clip": "x".join(map(str, clip)),
        "vrl_s": float(np.median(wall["vrl"])),
        "torch_s": float(np.median(wall["torch"])),
        "vrl_cpu_s": float(np.median(cpu["vrl"])),
        "torch_cpu_s": float(np.median(cpu["torch"])),
        "ratio": float(np.median(ratios)),
        "ratio_range": (min(ratios), max(ratios)),
        "cpu_ratio": float(np.median(cpu_ratios)),
        "compile_s": sides["vrl"].compile_s,
        "params": (
            sum(x.size for x in jax.tree.leaves(sides["vrl"].state.params)),
            sum(p.numel() for p in torch_model.parameters()),
        ),
    }


def table(rows: list[dict], threads: int) -> str:
    header = [
        "case",
        "batch",
        "clip",
        "vrl step (s)",
        "PyTorch step (s)",
        "vrl / PyTorch",
        f"goal <= {GOAL}",
        "CPU s/step vrl / PyTorch",
        "parameters vrl / PyTorch",
        "vrl compile (s)",
    ]
    body = [
        [
            r["case"],
            r["batch"],
            r["clip"],
            f"{r['vrl_s']:.3f}",
            f"{r['torch_s']:.3f}",
            f"**{r['ratio']:.2f}** ({r['ratio_range'][0]:.2f} to {r['ratio_range'][1]:.2f})",
            "met" if r["ratio"] <= GOAL else "NOT met",
            f"{r['vrl_cpu_s']:.2f} / {r['torch_cpu_s']:.2f} = {r['cpu_ratio']:.2f}",
            f"{r['params'][0]:,} / {r['params'][1]:,}",
            f"{r['compile_s']:.1f}",
        ]
        for r in rows
    ]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            f"Supervised train step (forward + backward + AdamW), float32, {NUM_CLASSES} classes, "
            f"{threads} thread(s) each (PyTorch {torch.__version__}). Steps of the two alternate; "
            f"step times are medians, the ratio is the median of the per-step ratios (range in "
            f"brackets); CPU s/step counts every thread of the process. Load average at the end: "
            f"{load}. {common.machine()}",
            "",
            common.markdown_table(header, body),
        ]
    )


def limit_threads(threads: int) -> None:
    """Both frameworks on `threads` threads: all cores, or one (the process pinned to one core).

    Pinning happens before XLA's backend starts, so XLA sizes its thread pool to that core.
    """
    if threads == 1:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    elif threads != os.cpu_count():
        raise app.UsageError(f"--threads: 1 or {os.cpu_count()} (the cores), got {threads}")
    torch.set_num_threads(threads)


def main(argv):
    del argv
    unknown = [c for c in _CASES.value if c not in CASES]
    if unknown:
        raise app.UsageError(f"--cases: unknown {unknown}; allowed: {', '.join(CASES)}")
    threads = _THREADS.value or os.cpu_count()
    limit_threads(threads)
    rows = [measure(name, _TINY.value, _STEPS.value) for name in _CASES.value]
    text = table(rows, threads)
    print(text)
    if _RECORD.value:
        section = "Train step vs PyTorch (benchmarks/train_step_vs_torch.py)"
        common.record(section + ("" if threads == os.cpu_count() else ", one thread"), text)


if __name__ == "__main__":
    app.run(main)
