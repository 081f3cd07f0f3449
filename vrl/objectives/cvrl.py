"""CVRL: contrastive learning between two clips of one video (Qian et al., CVPR 2021).

Both views go through the encoder in one batch (batch norm sees both), a projection MLP maps
pooled features to 128-d unit vectors, and the symmetric NT-Xent loss treats every other clip of
the *global* batch as a negative. The loss is written over the global batch; under jit with a
sharded batch the compiler inserts the all-gathers, so negatives come from every device.
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import config as config_lib
from vrl import registry
from vrl.config import ConfigError
from vrl.models import heads, layers
from vrl.objectives import base


def nt_xent(
    z1: jax.Array, z2: jax.Array, temperature: float, reduction: str = "mean"
) -> tuple[jax.Array, jax.Array]:
    """(loss, top-1 accuracy of finding the positive) for L2-normalised views z1, z2 [B, D].

    Each of the 2B clips must pick its partner among the other 2B - 1 clips. `reduction`
    combines loss_a (the B rows of view 1, averaged) and loss_b (view 2): "mean" is
    (loss_a + loss_b) / 2, the average over all 2B clips; "sum" is loss_a + loss_b.
    """
    z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
    n = z.shape[0]
    logits = (z @ z.T) / temperature
    logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)
    partner = jnp.concatenate([jnp.arange(n // 2) + n // 2, jnp.arange(n // 2)])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.take_along_axis(log_probs, partner[:, None], axis=-1).mean()
    if reduction == "sum":
        loss = 2.0 * loss
    accuracy = (jnp.argmax(logits, axis=-1) == partner).mean()
    return loss, accuracy


@registry.register("objective", "cvrl")
@dataclasses.dataclass(frozen=True)
class CVRL(base.Objective):
    encoder: nn.Module
    temperature: float = 0.1
    head_hidden: int = 2048
    head_layers: int = 3
    head_out: int = 128
    # How the two views' losses, each a mean over the batch, add up: "mean" (loss_a + loss_b) / 2
    # as in the SimCLR paper's formula, "sum" loss_a + loss_b as the released CVRL code
    # (official/projects/video_ssl/losses/losses.py) returns. With SGD the gradient, and so
    # the step that a given lr makes, is twice as large under "sum".
    loss_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self):
        check_temperature(self)

    @property
    def head(self) -> heads.ProjectionMLP:
        return heads.ProjectionMLP(
            self.head_hidden, self.head_layers, self.head_out, dtype=self.encoder.dtype
        )

    def batch_ops(self, clip: base.ClipSpec):
        if clip.views != 2:
            raise ConfigError(
                f"config.objective (cvrl) needs 2 views per video, the train ops make "
                f"{clip.views}; "
                "start config.data.train_pp with cvrl_clips(...)"
            )
        return []

    def init(self, rng, batch):
        params, stats = init_encoder_and_head(self.encoder, self.head, rng, batch["video"])
        return params, {"batch_stats": stats}

    def loss(self, params, extra, batch, rng, train):
        video = batch["video"]  # [B, 2, T, H, W, 3]
        batch_size = video.shape[0]
        x = layers.to_model_input(_flatten_views(video), self.encoder)
        stats = extra["batch_stats"]
        mutable = ["batch_stats"] if train else []
        tokens, enc_state = self.encoder.apply(
            base.variables(params["encoder"], stats["encoder"]), x, train=train, mutable=mutable
        )
        z, head_state = self.head.apply(
            base.variables(params["head"], stats["head"]),
            self.encoder.pool(tokens),
            train=train,
            mutable=mutable,
        )
        z = z.astype(jnp.float32)
        z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
        z = z.reshape(batch_size, 2, -1)
        loss, accuracy = nt_xent(z[:, 0], z[:, 1], self.temperature, self.loss_reduction)
        new_stats = {
            "encoder": enc_state.get("batch_stats", stats["encoder"]),
            "head": head_state.get("batch_stats", stats["head"]),
        }
        return loss, ({"contrastive_accuracy": accuracy}, {"batch_stats": new_stats})


def init_encoder_and_head(encoder: nn.Module, head: nn.Module, rng, video) -> tuple[dict, dict]:
    """(params, batch stats) {"encoder", "head"} for clips `video` [B, V, T, H, W, C]."""
    enc_rng, head_rng = jax.random.split(rng)
    x = layers.to_model_input(_flatten_views(video), encoder)
    enc_vars = encoder.init(enc_rng, x, train=False)
    # The head is initialised on zeros of the right width, so the compiler can drop the
    # encoder's forward pass from the init program.
    features = jnp.zeros((2, encoder.output_dim), encoder.dtype)
    head_vars = head.init(head_rng, features, train=False)
    params = {"encoder": enc_vars["params"], "head": head_vars["params"]}
    stats = {
        "encoder": enc_vars.get("batch_stats", {}),
        "head": head_vars.get("batch_stats", {}),
    }
    return params, stats


def check_temperature(objective) -> None:
    """A contrastive temperature must be > 0: 0 divides by zero, < 0 rewards pushing positives
    apart."""
    config_lib.check_ranges("config.objective", objective, temperature=("> 0", lambda t: t > 0))


def _flatten_views(video: jax.Array) -> jax.Array:
    """[B, V, T, H, W, C] -> [B * V, T, H, W, C], views of one video adjacent."""
    return video.reshape(-1, *video.shape[2:])
