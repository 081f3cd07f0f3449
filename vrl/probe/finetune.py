"""Fine-tuning probe: train the whole network on labels, starting from the checkpoint.

The VideoMAE protocol as a job: it writes a training config for the `supervised` objective
with `init_from=<checkpoint>` (strictly loaded), layer-wise lr decay, drop path, label
smoothing, mixup / cutmix, AdamW with warmup + cosine, and a `classification` eval (the
multi-view test accuracy of its own head) every `eval_every_steps`, and runs it with
`vrl.evaluators.train_and_evaluate` into its own run directory. The final numbers are that
eval's on the last step, so a rerun of a finished or interrupted job resumes (or only
re-evaluates) instead of starting over. Probing the "random" encoder trains the same
architecture from scratch, the baseline fine-tuning must beat.
"""

import dataclasses
import json
import os
from typing import ClassVar

from absl import logging

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators, registry
from vrl.data import pipeline
from vrl.preemption import Preempted
from vrl.probe import views
from vrl.probe.results import Result

# The fine-tuning run's test eval: its results are named <EVAL>_<label set>_pretrained.
EVAL = "classification"


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
    ) -> Result:
        """Fine-tunes into `workdir`; returns the final test metrics, with the test features."""
        data_cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
        if train_pp is None:
            train_pp = views.finetune_train(data_cfg.test_pp, area=self.crop_area, flip=self.flip)
        config = self.training_config(
            checkpoint, step, which, run_config, data, label_set, num_classes, train_pp,
            test_pp=test_pp, eval_batch_size=eval_batch_size,
        )  # fmt: skip
        logging.info(
            "Fine-tuning %s (%s) for %s epochs into %s.", checkpoint, which, self.epochs, workdir
        )
        results = evaluators.train_and_evaluate(config, workdir)
        name = f"{EVAL}_{label_set}_pretrained"
        if name not in results:
            raise Preempted(
                f"fine-tuning into {workdir} stopped early ({results}); rerun to resume"
            )
        final = results[name]
        final_step = ckpt_lib.load_meta(workdir)[1]
        metrics = {
            **final,
            "step": final_step,
            "history": read_history(workdir, name, final_step),
            "run_dir": os.path.abspath(workdir),
            "drop_path": config["model"].get("drop_path", 0.0),
            "train_pp": train_pp,
            "test_pp": test_pp,
        }
        return Result(metrics, final.features, final.labels)

    def training_config(
        self,
        checkpoint,
        step,
        which,
        run_config,
        data,
        label_set,
        num_classes,
        train_pp,
        *,
        test_pp: str | None = None,
        eval_batch_size: int = 32,
    ) -> dict:
        """The supervised run config that fine-tunes the checkpoint's encoder and tests it
        (on `test_pp`, default the data's) every `eval_every_steps` and at the end."""
        data = {**data, "batch_size": self.batch_size, "train_pp": train_pp}
        model = dict(run_config["model"])
        accepts = config_lib.parameters(registry.get("model", model["name"]))
        if "drop_path" in accepts:
            model["drop_path"] = self.drop_path
        elif self.drop_path > 0:
            logging.warning("Model %r has no drop path; fine-tuning without it.", model["name"])
        return {
            "seed": self.seed,
            "total_epochs": self.epochs,
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
            "evals": {
                EVAL: {
                    "probe": {"name": "classification"},
                    "every_steps": self.eval_every_steps,
                    "encoders": ("pretrained",),
                    "label_sets": (label_set,),
                    "test_pp": test_pp,
                    "batch_size": eval_batch_size,
                    "plots": False,  # the job's result has them
                }
            },
        }


def read_history(workdir: str, name: str, final_step: int) -> list[dict]:
    """The test accuracies result `name` of the run's eval wrote to its metrics.jsonl before
    the final step (the last row of a step wins: a resumed run rewrites it)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    history = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if f"{name}/top1" in row and row["step"] < final_step:
                history[row["step"]] = {
                    "step": row["step"],
                    "top1": row[f"{name}/top1"],
                    "top5": row[f"{name}/top5"],
                }
    return [history[s] for s in sorted(history)]
