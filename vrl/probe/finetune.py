"""Fine-tuning probe: train the whole network on labels, starting from the checkpoint.

The VideoMAE protocol as a job: it writes a training config for the `supervised` objective
with `init_from=<checkpoint>` (strictly loaded), layer-wise lr decay, drop path, label
smoothing, mixup / cutmix, AdamW with warmup + cosine, and runs the one trainer
(`train.train_and_evaluate`) into its own run directory. A step hook measures the multi-view
test accuracy every `eval_every_steps`; the final numbers come from the last checkpoint, so a
rerun of a finished or interrupted job resumes instead of starting over. Probing the "random"
encoder trains the same architecture from scratch, the baseline fine-tuning must beat.
"""

import dataclasses
import json
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vrl import api, registry, sharding, train
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl.data import pipeline
from vrl.models import layers
from vrl.objectives import base
from vrl.probe import scores, views


@registry.register("probe", "finetune")
@dataclasses.dataclass(frozen=True)
class FinetuneProbe:
    inputs: ClassVar[str] = "checkpoint"

    epochs: float = 30.0
    warmup_epochs: float = 5.0
    batch_size: int = 64
    lr: float = 1e-3
    lr_base_batch: int | None = 256  # peak lr = lr * batch_size / lr_base_batch
    end_lr: float = 1e-6
    weight_decay: float = 0.05
    b2: float = 0.999
    layer_decay: float = 0.75
    drop_path: float = 0.1  # applied to models that have it (vit)
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    head_dropout: float = 0.0
    crop_area: tuple[float, float] = (0.3, 1.0)
    flip: bool = False  # Kinetics recipes flip; datasets with left/right classes must not
    eval_every_steps: int = 0  # 0: only at the end
    ckpt_every_steps: int = 1000
    seed: int = 0

    def run_checkpoint(
        self,
        *,
        checkpoint: str,
        step: int,
        which: str,
        run_config: dict,
        data: dict,
        label_set: str,
        num_classes: int,
        train_pp: str | None,
        test_pp: str,
        workdir: str,
        eval_batch_size: int,
    ) -> tuple[dict, np.ndarray, np.ndarray]:
        """Fine-tunes into `workdir`; returns (metrics, test features [N, V, D], test labels)."""
        data_cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
        if train_pp is None:
            train_pp = views.finetune_train(data_cfg.test_pp, area=self.crop_area, flip=self.flip)
        config = self.training_config(
            checkpoint, step, which, run_config, data, label_set, num_classes, train_pp
        )
        total_steps = config["total_steps"]
        objective = base.build(config)
        data_cfg = config_lib.instantiate(pipeline.DataConfig, config["data"], "config.data")

        forward = make_forward(objective)

        def evaluate(params, extra, mesh):
            return predict(
                forward, params, extra, data_cfg, test_pp, eval_batch_size, mesh, label_set
            )

        def hook(step: int, state) -> dict | None:
            every = self.eval_every_steps
            if not every or step % every or step >= total_steps:
                return None
            mesh = jax.tree.leaves(state.params)[0].sharding.mesh
            probs, _, labels = evaluate(state.params, state.extra, mesh)
            metrics = scores.classification(probs, labels, num_classes)
            logging.info("Fine-tuning step %d: test top1 %.2f", step, metrics["top1"])
            return {"test/top1": metrics["top1"], "test/top5": metrics["top5"]}

        logging.info(
            "Fine-tuning %s (%s) for %d steps into %s.", checkpoint, which, total_steps, workdir
        )
        train.train_and_evaluate(config, workdir, step_hook=hook)

        meta, final_step = ckpt_lib.load_meta(workdir)
        params, extra = api.restore_variables(workdir, final_step, objective, meta)
        mesh = sharding.make_mesh(sharding.MeshConfig())
        params, extra = jax.device_put((params, extra), sharding.replicated(mesh))
        probs, features, labels = evaluate(params, extra, mesh)
        metrics = scores.classification(probs, labels, num_classes)
        metrics.update(
            step=final_step,
            history=read_history(workdir),
            run_dir=os.path.abspath(workdir),
            drop_path=config["model"].get("drop_path", 0.0),
            train_pp=train_pp,
            test_pp=test_pp,
        )
        return metrics, features, labels

    def training_config(
        self, checkpoint, step, which, run_config, data, label_set, num_classes, train_pp
    ) -> dict:
        """The supervised run config that fine-tunes the checkpoint's encoder."""
        data = {**data, "batch_size": self.batch_size, "train_pp": train_pp}
        data_cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
        train_videos = len(pipeline.make_source(data_cfg, data_cfg.train_split))
        steps_per_epoch = max(train_videos // self.batch_size, 1)
        model = dict(run_config["model"])
        accepts = config_lib.parameters(registry.get("model", model["name"]))
        if "drop_path" in accepts:
            model["drop_path"] = self.drop_path
        elif self.drop_path > 0:
            logging.warning("Model %r has no drop path; fine-tuning without it.", model["name"])
        return {
            "seed": self.seed,
            "total_steps": max(int(round(self.epochs * steps_per_epoch)), 1),
            "log_every_steps": run_config.get("log_every_steps", 50),
            "compute_dtype": run_config.get("compute_dtype", "float32"),
            "data": data,
            "model": model,
            "objective": {
                "name": "supervised",
                "num_classes": num_classes,
                "label_set": label_set,
                "label_smoothing": self.label_smoothing,
                "head_dropout": self.head_dropout,
                "mixup": self.mixup,
                "cutmix": self.cutmix,
                # "random" fine-tunes the architecture from scratch.
                "init_from": "" if which == "random" else os.path.abspath(checkpoint),
                "init_step": step,
                "init_which": "encoder" if which == "random" else which,
            },
            "optim": {
                "name": "adamw",
                "lr": self.lr,
                "lr_base_batch": self.lr_base_batch,
                "b1": 0.9,
                "b2": self.b2,
                "weight_decay": self.weight_decay,
                "warmup_epochs": self.warmup_epochs,
                "end_lr": self.end_lr,
                "schedule": "cosine",
                "layer_decay": self.layer_decay,
            },
            "mesh": run_config.get("mesh", {}),
            "ckpt": {"every_steps": self.ckpt_every_steps, "keep": 2},
            "evals": {},
        }


def make_forward(objective):
    """Jitted (batch -> view-averaged probabilities, pooled features, labels, valid flags)."""

    @jax.jit
    def forward(params, extra, batch):
        video = batch["video"]
        if video.ndim == 5:
            video = video[:, None]
        b, v = video.shape[:2]
        x = layers.to_model_input(video.reshape(b * v, *video.shape[2:]), objective.encoder)
        variables = objective.encoder_variables(params, extra)
        features = objective.encoder.pool(objective.encoder.apply(variables, x, train=False))
        logits = objective.head.apply({"params": params["head"]}, features, train=False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(b, v, -1)
        features = features.astype(jnp.float32).reshape(b, v, -1)
        return probs.mean(axis=1), features, batch["label"], batch["valid"]

    return forward


def predict(forward, params, extra, data_cfg, pp: str, batch_size: int, mesh, label_set: str):
    """(view-averaged probabilities [N, C], pooled features [N, V, D], labels [N]) of test.

    Batches are split over the mesh's data axes; each process reads its share and the results
    are gathered, so every process returns the whole split in order.
    """
    parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // parallel) * parallel
    dataset, total = pipeline.eval_dataset(
        data_cfg,
        data_cfg.test_split,
        batch_size=batch_size,
        pp=pp,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    outputs = []
    for batch in dataset:
        key = f"label/{label_set}"
        host = {"video": batch["video"], "label": batch[key], "valid": batch["valid"]}
        result = forward(params, extra, sharding.to_global(host, mesh))
        gathered = multihost_utils.process_allgather(result, tiled=True)
        outputs.append([np.asarray(x) for x in gathered])
    probs, features, labels, valid = (np.concatenate(parts) for parts in zip(*outputs))
    valid = valid.astype(bool)
    if valid.sum() != total:
        raise RuntimeError(f"evaluated {valid.sum()} of {total} test examples")
    return probs[valid], features[valid], labels[valid]


def read_history(workdir: str) -> list[dict]:
    """The periodic test accuracies the step hook wrote to the run's metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    history = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "test/top1" in row:
                history[row["step"]] = {
                    "step": row["step"],
                    "top1": row["test/top1"],
                    "top5": row["test/top5"],
                }
    return [history[s] for s in sorted(history)]
