"""The trained model's own classifier on the test split: a supervised run's accuracy.

Not a probe on frozen features: it applies the run's encoder and head (the `supervised`
objective's) to every test video, averages the probabilities over a multi-view pp's views,
and scores them. As a `config.evals` entry with `every_steps` it is fine-tuning's periodic
test accuracy (see finetune.py); as a probe job it re-tests a supervised run's checkpoint,
e.g. on other views.
"""

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from vrl import config as config_lib
from vrl import registry
from vrl.data import pipeline
from vrl.models import layers
from vrl.probe import batches, features, scores
from vrl.probe.results import Result


@registry.register("probe", "classification")
@dataclasses.dataclass(frozen=True)
class ClassificationProbe:
    inputs: ClassVar[str] = "model"

    def check(self, objective, job, label_names: dict, path: str) -> None:
        """A ConfigError unless the run's objective classifies the job's label sets."""
        label_set = getattr(objective, "label_set", None)
        if not hasattr(objective, "head") or label_set is None:
            raise config_lib.ConfigError(
                f"{path}.probe.name: 'classification' tests a classifier the run trains; "
                f"this run's objective {type(objective).__name__} has none (use supervised)"
            )
        if job.encoders != ("pretrained",):
            raise config_lib.ConfigError(
                f"{path}.encoders: the classifier belongs to the trained encoder; "
                "allowed: ('pretrained',)"
            )
        for name in job.label_sets or tuple(label_names):
            if name != label_set or len(label_names[name]) != objective.num_classes:
                raise config_lib.ConfigError(
                    f"{path}.label_sets: the classifier predicts the {objective.num_classes} "
                    f"classes of {label_set!r}; allowed: ({label_set!r},)"
                )

    def evaluate(
        self,
        objective,
        params,
        extra,
        mesh,
        data_cfg: pipeline.DataConfig,
        pp: str,
        batch_size: int,
        label_set: str,
        num_classes: int,
    ) -> Result:
        """Scores of the view-averaged probabilities, with the pooled test features [N, V, D]."""
        size = batches.batch_size(batch_size, mesh)
        split_batches, total = features.read_split(data_cfg, data_cfg.test_split, pp, size)

        def fn(batch):
            probs, pooled = _forward(objective, params, extra, batch["video"])
            return {"probs": probs, "features": pooled, "label": batch[f"label/{label_set}"]}

        out = batches.run(fn, split_batches, mesh, local=True, total=total)
        metrics = scores.classification(out["probs"], out["label"], num_classes)
        return Result(metrics, out["features"], out["label"])


@functools.partial(jax.jit, static_argnums=0)
def _forward(objective, params, extra, video):
    """(view-averaged probabilities [B, C], pooled features [B, V, D]) of videos [B, (V,) ...]."""
    if video.ndim == 5:
        video = video[:, None]
    b, v = video.shape[:2]
    x = layers.to_model_input(video.reshape(b * v, *video.shape[2:]), objective.encoder)
    variables = objective.encoder_variables(params, extra)
    pooled = objective.encoder.pool(objective.encoder.apply(variables, x, train=False))
    logits = objective.head.apply({"params": params["head"]}, pooled, train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(b, v, -1)
    return probs.mean(axis=1), pooled.astype(jnp.float32).reshape(b, v, -1)
