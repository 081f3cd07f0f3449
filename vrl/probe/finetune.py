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
from typing import ClassVar

from absl import logging

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators, registry, storage
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
    end_lr: float = 1e-6  # scaled by batch_size / lr_base_batch, as the peak lr
    warmup_init_lr: float = 0.0  # VideoMAE: 1e-6, scaled as end_lr
    weight_decay: float = 0.05
    b2: float = 0.999
    layer_decay: float = 0.75
    drop_path: float = 0.1  # applied to models that have it (vit)
    label_smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    head_dropout: float = 0.0
    # LayerNorm on the mean-pooled tokens before the classifier (VideoMAE's fc_norm).
    head_norm: bool = False
    # Fine-tune without the pretrained encoder's final LayerNorm (VideoMAE's classifier with
    # mean pooling replaces it by the identity; its fc_norm normalises the pooled vector).
    drop_final_norm: bool = False
    crop_area: tuple[float, float] = (0.3, 1.0)
    crop_aspect: tuple[float, float] | None = None  # None: random_resized_crop's (0.5, 2)
    flip: bool = False  # Kinetics recipes flip; datasets with left/right classes must not
    # RandAugment before the crop (VideoMAE `--aa rand-m7-n4-mstd0.5-inc1`): ops per clip
    # (0: off), their magnitude and its std; timm's increasing op set, bicubic, grey fill.
    rand_augment_ops: int = 0
    rand_augment_magnitude: float = 7.0
    rand_augment_std: float = 0.5
    # Random erasing after the crop and flip (VideoMAE `--reprob`, mode pixel, one box per clip).
    random_erasing: float = 0.0
    # Clips per loaded video (VideoMAE `--num_sample`). `batch_size`, `epochs`, `warmup_epochs`
    # and the lr scaling count videos, as VideoMAE does: a step holds batch_size x
    # repeated_samples clips and an epoch passes over every video once.
    repeated_samples: int = 1
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
            train_pp = self.train_pipeline(data_cfg.test_pp)
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
            "run_dir": str(storage.path(workdir)),
            "drop_path": config["model"].get("drop_path", 0.0),
            "train_pp": train_pp,
            "test_pp": test_pp,
        }
        return Result(metrics, final.features, final.labels)

    def train_pipeline(self, test_pp: str) -> str:
        """The train pipeline derived from the checkpoint's test pipeline: a random window of
        its clip length, [rand_augment,] a random resized crop of its size, [flip,]
        [random_erasing]: VideoMAE's order (`kinetics.py` `_aug_frame`)."""
        base = views.finetune_train(test_pp, area=self.crop_area, flip=self.flip)
        ops = []
        for name, kwargs in pipeline.parse_pp(base):
            if name == "random_resized_crop":
                if self.rand_augment_ops > 0:
                    ops.append(
                        views.format_op(
                            "rand_augment",
                            {
                                "num_ops": self.rand_augment_ops,
                                "magnitude": self.rand_augment_magnitude,
                                "magnitude_std": self.rand_augment_std,
                            },
                        )
                    )
                if self.crop_aspect is not None:
                    kwargs = {**kwargs, "aspect": tuple(self.crop_aspect)}
            ops.append(views.format_op(name, kwargs) if kwargs else name)
        if self.random_erasing > 0:
            ops.append(views.format_op("random_erasing", {"p": self.random_erasing}))
        return "|".join(ops)

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
        r = self.repeated_samples
        if r < 1:
            raise config_lib.ConfigError(f"config.probe.repeated_samples: must be >= 1, got {r}")
        data = {
            **data,
            "batch_size": self.batch_size * r,
            "repeated_samples": r,
            "train_pp": train_pp,
        }
        # vrl's epochs and lr scaling count clips; VideoMAE's count videos (r clips each).
        scale = self.batch_size / self.lr_base_batch if self.lr_base_batch else 1.0
        model = dict(run_config["model"])
        accepts = config_lib.parameters(registry.get("model", model["name"]))
        if "drop_path" in accepts:
            model["drop_path"] = self.drop_path
        elif self.drop_path > 0:
            logging.warning("Model %r has no drop path; fine-tuning without it.", model["name"])
        init_drop = ()
        if self.drop_final_norm:
            if "final_norm" not in accepts:
                raise config_lib.ConfigError(
                    f"config.probe.drop_final_norm: model {model['name']!r} has no final norm"
                )
            if model.get("final_norm", accepts["final_norm"][1]):  # a saved norm to leave out
                init_drop = ("norm",)
            model["final_norm"] = False
        return {
            "seed": self.seed,
            "total_epochs": self.epochs * r,
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
                "head_norm": self.head_norm,
                "mixup": self.mixup,
                "cutmix": self.cutmix,
                # "random" fine-tunes the architecture from scratch.
                "init_from": "" if which == "random" else str(storage.path(checkpoint)),
                "init_step": step,
                "init_which": "encoder" if which == "random" else which,
                "init_drop": () if which == "random" else init_drop,
            },
            "optim": {
                "name": "adamw",
                "lr": self.lr,
                "lr_base_batch": self.lr_base_batch * r if self.lr_base_batch else None,
                "b1": 0.9,
                "b2": self.b2,
                "weight_decay": self.weight_decay,
                "warmup_epochs": self.warmup_epochs * r,
                # VideoMAE scales min_lr and warmup_lr by batch / 256 as well as lr.
                "end_lr": self.end_lr * scale,
                "warmup_init_lr": self.warmup_init_lr * scale,
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
    path = storage.path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    history = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if f"{name}/top1" in row and row["step"] < final_step:
            history[row["step"]] = {
                "step": row["step"],
                "top1": row[f"{name}/top1"],
                "top5": row[f"{name}/top5"],
            }
    return [history[s] for s in sorted(history)]
