"""A run that holds an encoder and nothing to train it with: published weights without heads.

`python -m vrl.convert` writes encoder-only checkpoints (e.g. Hugging Face `VideoMAEModel`) with
this objective, so probes, `api.load_encoder`, fine-tuning (`supervised` with `init_from`) and
SALT teachers read them like any run. It has no loss: training one is a config error.
"""

import dataclasses

import flax.linen as nn
import jax

from vrl import registry
from vrl.config import ConfigError
from vrl.models import layers
from vrl.objectives import base


@registry.register("objective", "encoder_only")
@dataclasses.dataclass(frozen=True)
class EncoderOnly(base.Objective):
    encoder: nn.Module

    def init(self, rng, batch):
        x = layers.to_model_input(batch["video"], self.encoder)
        variables = self.encoder.init(rng, x, train=False)
        stats = variables.get("batch_stats")
        return {"encoder": variables["params"]}, (
            {"batch_stats": {"encoder": stats}} if stats else {}
        )

    def loss(self, params, extra, batch, rng, train) -> tuple[jax.Array, tuple]:
        raise ConfigError(
            "config.objective.name='encoder_only' has no loss: it holds published weights; "
            "fine-tune them with objective 'supervised' and init_from=WORKDIR"
        )
