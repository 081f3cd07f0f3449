"""Supervised classification: the reference upper bound, and the fine-tuning objective.

With `init_from=WORKDIR` the encoder starts from a pretrained checkpoint (strictly loaded):
that is VideoMAE-style fine-tuning when combined with layer-wise lr decay (config.optim.
layer_decay), drop path (config.model.drop_path), label smoothing and mixup / cutmix.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vrl import registry
from vrl.config import ConfigError
from vrl.models import layers
from vrl.objectives import base


class ClassifierHead(nn.Module):
    """[Dropout ->] Dense on the pooled clip vector; `norm` puts a LayerNorm first (VideoMAE's
    `fc_norm` after mean pooling, which its fine-tuned checkpoints carry)."""

    num_classes: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    norm: bool = False
    norm_epsilon: float = 1e-6

    @nn.compact
    def __call__(self, features, *, train: bool):
        if self.norm:
            features = layers.layer_norm(dtype=self.dtype, epsilon=self.norm_epsilon, name="norm")(
                features
            )
        features = nn.Dropout(self.dropout, deterministic=not train)(features)
        return layers.dense(
            self.num_classes,
            ("embed", "classes"),
            dtype=self.dtype,
            kernel_init=nn.initializers.truncated_normal(2e-5),
            name="logits",
        )(features)


def mix(video, labels, rng, mixup: float, cutmix: float, switch_prob: float = 0.5):
    """Mixup or (tube) CutMix of float video within the batch: (video, soft labels [B, C]).

    One lambda per batch, pairing each clip with the batch reversed (as timm does); CutMix
    cuts the same box from every frame.
    """
    mix_rng, switch_rng, box_rng = jax.random.split(rng, 3)
    use_cutmix = jax.random.uniform(switch_rng) < (
        switch_prob if mixup > 0 and cutmix > 0 else (1.0 if cutmix > 0 else 0.0)
    )
    alpha = jnp.where(use_cutmix, cutmix if cutmix > 0 else 1.0, mixup if mixup > 0 else 1.0)
    lam = jax.random.beta(mix_rng, alpha, alpha)
    other = video[::-1]
    _, _, height, width, _ = video.shape
    cut_h = jnp.sqrt(1.0 - lam) * height
    cut_w = jnp.sqrt(1.0 - lam) * width
    cy, cx = jax.random.uniform(box_rng, (2,)) * jnp.array([height, width])
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (jnp.abs(ys - cy) < cut_h / 2) & (jnp.abs(xs - cx) < cut_w / 2)
    box_lam = 1.0 - box.mean()
    cut = jnp.where(box[None, None, :, :, None], other, video)
    mixed = lam * video + (1.0 - lam) * other
    lam = jnp.where(use_cutmix, box_lam, lam)
    out = jnp.where(use_cutmix, cut, mixed)
    soft = lam * labels + (1.0 - lam) * labels[::-1]
    return out, soft


@registry.register("objective", "supervised")
@dataclasses.dataclass(frozen=True)
class Supervised(base.Objective):
    encoder: nn.Module
    num_classes: int = 0
    label_set: str = "label"
    label_smoothing: float = 0.0
    head_dropout: float = 0.0
    # LayerNorm on the pooled feature before the linear layer (VideoMAE's fc_norm).
    head_norm: bool = False
    head_norm_epsilon: float = 1e-6
    mixup: float = 0.0
    cutmix: float = 0.0
    # Start the encoder from this run's checkpoint (fine-tuning); "" trains from scratch.
    init_from: str = ""
    init_step: int | None = None
    init_which: str = "encoder"
    init_drop: tuple[str, ...] = ()  # saved encoder parameters not loaded, e.g. ("norm",)

    def __post_init__(self):
        if self.num_classes < 1:
            raise ConfigError("config.objective.num_classes: required, >= 1")

    @property
    def head(self) -> ClassifierHead:
        return ClassifierHead(
            self.num_classes,
            self.head_dropout,
            self.encoder.dtype,
            norm=self.head_norm,
            norm_epsilon=self.head_norm_epsilon,
        )

    def init(self, rng, batch):
        enc_rng, head_rng = jax.random.split(rng)
        x = layers.to_model_input(batch["video"], self.encoder)
        enc_vars = self.encoder.init(enc_rng, x, train=False)
        features = jnp.zeros((2, self.encoder.output_dim), self.encoder.dtype)
        head_vars = self.head.init(head_rng, features, train=False)
        params = {"encoder": enc_vars["params"], "head": head_vars["params"]}
        return params, {"batch_stats": {"encoder": enc_vars.get("batch_stats", {})}}

    def initial_weights(self):
        if not self.init_from:
            return {}
        source = base.InitialWeights(
            self.init_from,
            self.init_step,
            self.init_which,
            key="config.objective.init_from",
            drop=tuple(self.init_drop),
        )
        return {"encoder": source}

    def logits(self, params, extra, video, rng, train):
        x = layers.to_model_input(video, self.encoder)
        stats = extra["batch_stats"]["encoder"]
        variables = base.variables(params["encoder"], stats)
        rngs = {"dropout": rng}
        if train and stats:
            tokens, updates = self.encoder.apply(
                variables, x, train=True, rngs=rngs, mutable=["batch_stats"]
            )
            stats = updates["batch_stats"]
        else:
            tokens = self.encoder.apply(variables, x, train=train, rngs=rngs)
        logits = self.head.apply(
            {"params": params["head"]}, self.encoder.pool(tokens), train=train, rngs=rngs
        )
        return logits.astype(jnp.float32), {"batch_stats": {"encoder": stats}}

    def loss(self, params, extra, batch, rng, train):
        key = f"label/{self.label_set}"
        if key not in batch:
            labels = ", ".join(k.removeprefix("label/") for k in batch if k.startswith("label/"))
            raise ConfigError(
                f"config.objective.label_set={self.label_set!r}: the data has label sets: {labels}"
            )
        mix_rng, model_rng = jax.random.split(rng)
        labels = jax.nn.one_hot(batch[key], self.num_classes)
        video = batch["video"]
        if train and (self.mixup > 0 or self.cutmix > 0):
            video = layers.to_unit_float(video)
            video, labels = mix(video, labels, mix_rng, self.mixup, self.cutmix)
        labels = optax.smooth_labels(labels, self.label_smoothing) if train else labels
        logits, extra = self.logits(params, extra, video, model_rng, train)
        loss = optax.softmax_cross_entropy(logits, labels).mean()
        accuracy = (logits.argmax(-1) == batch[key]).mean()
        return loss, ({"accuracy": accuracy}, extra)
