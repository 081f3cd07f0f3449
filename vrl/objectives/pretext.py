"""Temporal pretext tasks whose labels are the records the temporal ops leave in the batch.

  playback  classify each clip's playback: its speed (`temporal/tempo` x `temporal/skip`,
            one class per entry of `speeds`) and its direction (`temporal/reversed`), after
            Jenni et al., "Video Representation Learning by Recognizing Temporal
            Transformations" (ECCV 2020): one linear layer gives both sets of logits and the
            loss is the sum of the two cross-entropies (sjenni/temporal-ssl
            train/VideoSSLTrainer.py).
  rspnet    RSPNet (Chen et al., AAAI 2021): relative speed perception, a margin ranking loss
            that asks two clips of one video at the same speed to be more similar (motion
            head) than two at different speeds, plus appearance contrast (A-VID): every
            other clip of the same video is a positive whatever its speed (PeihaoChen/RSPNet
            moco/builder_diffspeed_diffloss.py `MoCoDiffLossTwoFc`, `Loss`).

Both read several views per video when the pipeline makes them and run alone or as auxiliary
parts of `combined`. The labels must be written by ops in `config.data.train_pp` (tempo,
frame_skip, reverse); a missing one is a config error at start-up. Differences from the
releases: docs/PARITY.md.
"""

import abc
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry
from vrl.config import ConfigError, check_ranges
from vrl.models import heads, layers
from vrl.objectives import base


def views_of(video: jax.Array) -> jax.Array:
    """[B, V, T, H, W, C] from a batch's video, one clip per video ([B, T, H, W, C]) as V = 1."""
    return video[:, None] if video.ndim == 5 else video


def playback_rate(batch: dict, objective: str) -> jax.Array:
    """float32 [B, V]: how many times faster than the sampler's stride each view plays."""
    if "temporal/tempo" not in batch and "temporal/skip" not in batch:
        raise ConfigError(
            f"config.objective ({objective}) reads each clip's speed from temporal/tempo or "
            "temporal/skip; add tempo(...) or frame_skip(...) to config.data.train_pp"
        )
    ones = jnp.ones(batch["temporal/start"].shape, jnp.float32)
    tempo = jnp.asarray(batch.get("temporal/tempo", ones), jnp.float32)
    return tempo * jnp.asarray(batch.get("temporal/skip", ones), jnp.float32)


def speed_class(rate: jax.Array, speeds: tuple[float, ...]) -> jax.Array:
    """int32: index of the entry of `speeds` nearest to `rate` on a log scale."""
    distance = jnp.abs(jnp.log(rate)[..., None] - jnp.log(jnp.asarray(speeds, jnp.float32)))
    return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, top-1 accuracy) of logits [..., K] against int labels [...]."""
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean()
    return loss, (jnp.argmax(logits, axis=-1) == labels).mean()


def margin_ranking(
    higher: jax.Array, lower: jax.Array, margin: float, valid: jax.Array
) -> jax.Array:
    """torch's MarginRankingLoss with target 1, mean of max(0, margin - (higher - lower)) over
    the pairs where `valid` is true (0 where there are none)."""
    hinge = jnp.maximum(0.0, margin - (higher - lower))
    count = valid.sum()
    return jnp.where(count > 0, jnp.where(valid, hinge, 0.0).sum() / jnp.maximum(count, 1), 0.0)


def unit(z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    return z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)


def video_contrast(z: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(loss, accuracy) of A-VID with in-batch negatives for unit features z [B, V, D].

    Each clip i of video b is a query; each other clip j of b is its positive in turn, against
    every clip of the other videos. As the released loss (ce1 + ce2 for a query's two keys),
    the cross-entropies of one query's positives add up; queries are averaged.
    """
    batch, views, _ = z.shape
    sim = jnp.einsum("bid,cjd->bicj", z, z) / temperature  # [B, V, B, V]
    other = ~jnp.eye(batch, dtype=bool)[:, None, :, None]  # clips of other videos
    negatives = jnp.where(other, sim, -jnp.inf).reshape(batch, views, batch * views)
    neg_lse = jax.nn.logsumexp(negatives, axis=-1)  # [B, V]
    positives = jnp.einsum("bid,bjd->bij", z, z) / temperature  # [B, V, V]
    ce = jnp.logaddexp(positives, neg_lse[..., None]) - positives
    pair = ~jnp.eye(views, dtype=bool)
    loss = jnp.where(pair, ce, 0.0).sum(-1).mean()
    correct = positives > jnp.max(negatives, axis=-1)[..., None]
    accuracy = jnp.where(pair, correct, False).sum() / (batch * views * (views - 1))
    return loss, accuracy


def speed_ranking(
    z: jax.Array, rate: jax.Array, temperature: float, margin: float
) -> tuple[jax.Array, jax.Array]:
    """(loss, accuracy) of relative speed perception for unit motion features z [B, V, D].

    Every triplet of one video's clips (anchor i, j at i's speed, k at another speed) asks
    sim(i, j) / T to exceed sim(i, k) / T by `margin`; the loss is the mean over the triplets
    the batch holds (the released code draws exactly one per video: query, key, negative).
    """
    sim = jnp.einsum("bid,bjd->bij", z, z) / temperature  # [B, V, V]
    views = z.shape[1]
    same = jnp.isclose(rate[:, :, None], rate[:, None, :], rtol=1e-3)
    pos = same & ~jnp.eye(views, dtype=bool)  # [B, i, j]
    valid = pos[:, :, :, None] & ~same[:, :, None, :]  # [B, i, j, k]
    higher, lower = sim[:, :, :, None], sim[:, :, None, :]
    loss = margin_ranking(higher, lower, margin, valid)
    hits = jnp.where(valid, higher > lower, False).sum()
    return loss, hits / jnp.maximum(valid.sum(), 1)


class _Pretext(base.Objective):
    """One encoder pass over every view, the pooled features fed to a head of linear layers."""

    @abc.abstractmethod
    def head(self) -> nn.Module:
        """The linear layers on the pooled features of each clip."""

    def batch_ops(self, clip):
        return []  # any number of views: each clip carries its own labels

    def check_labels(self, batch: dict) -> None:
        """Raises a ConfigError when the batch lacks a label the loss reads."""

    def init(self, rng, batch):
        self.check_labels(batch)
        enc_rng, head_rng = jax.random.split(rng)
        video = views_of(batch["video"])
        x = layers.to_model_input(video.reshape(-1, *video.shape[2:]), self.encoder)
        enc_vars = self.encoder.init(enc_rng, x, train=False)
        features = jnp.zeros((2, self.encoder.output_dim), self.encoder.dtype)
        head_vars = self.head().init(head_rng, features, train=False)
        params = {"encoder": enc_vars["params"], "head": head_vars["params"]}
        stats = {"encoder": enc_vars.get("batch_stats", {}), "head": {}}
        return params, {"batch_stats": stats}

    def outputs(self, params, extra, batch, train) -> tuple[jax.Array, dict]:
        """(head outputs [B, V, K], new extra)."""
        video = views_of(batch["video"])
        x = layers.to_model_input(video.reshape(-1, *video.shape[2:]), self.encoder)
        stats = extra["batch_stats"]
        tokens, state = self.encoder.apply(
            base.variables(params["encoder"], stats["encoder"]),
            x,
            train=train,
            mutable=["batch_stats"] if train else [],
        )
        out = self.head().apply({"params": params["head"]}, self.encoder.pool(tokens), train=train)
        new_stats = {**stats, "encoder": state.get("batch_stats", stats["encoder"])}
        return out.reshape(*video.shape[:2], -1), {"batch_stats": new_stats}


@registry.register("objective", "playback")
@dataclasses.dataclass(frozen=True)
class Playback(_Pretext):
    encoder: nn.Module
    # One class per playback speed (x stride); Jenni et al. use 2**k for k < n_speeds = 4.
    speeds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    # Also classify forward vs backward playback (`temporal/reversed`, from the reverse op).
    direction: bool = True

    def __post_init__(self):
        check_ranges(
            "config.objective",
            self,
            speeds=(
                "one or more distinct rates > 0",
                lambda s: len(s) > 0 and min(s) > 0 and len(set(s)) == len(s),
            ),
        )

    def head(self):
        out = len(self.speeds) + (2 if self.direction else 0)
        return heads.ProjectionMLP(num_hidden=0, out=out, dtype=self.encoder.dtype)

    def check_labels(self, batch):
        playback_rate(batch, "playback")
        if self.direction and "temporal/reversed" not in batch:
            raise ConfigError(
                "config.objective.direction: True needs temporal/reversed; add reverse(...) to "
                "config.data.train_pp or set direction=False"
            )

    def loss(self, params, extra, batch, rng, train):
        logits, new_extra = self.outputs(params, extra, batch, train)
        n = len(self.speeds)
        speed = speed_class(playback_rate(batch, "playback"), self.speeds)
        loss, accuracy = cross_entropy(logits[..., :n], speed)
        metrics = {"speed_accuracy": accuracy}
        if self.direction:
            reversed_ = jnp.asarray(batch["temporal/reversed"]).astype(jnp.int32)
            direction_loss, metrics["direction_accuracy"] = cross_entropy(
                logits[..., n:], reversed_
            )
            loss = loss + direction_loss
        return loss, (metrics, new_extra)


@registry.register("objective", "rspnet")
@dataclasses.dataclass(frozen=True)
class RSPNet(_Pretext):
    encoder: nn.Module
    # Released values (pretrain.py, moco-train-base.jsonnet): T 0.07, margin 2.0 on sim / T,
    # 128-d linear heads, loss weights A = M = 1.
    temperature: float = 0.07
    margin: float = 2.0
    head_out: int = 128
    appearance_weight: float = 1.0
    speed_weight: float = 1.0

    def __post_init__(self):
        check_ranges(
            "config.objective",
            self,
            temperature=("> 0", lambda t: t > 0),
            margin=(">= 0", lambda m: m >= 0),
            head_out=(">= 1", lambda d: d >= 1),
        )

    def head(self):
        # The appearance (A) and motion (M) linear heads side by side.
        return heads.ProjectionMLP(num_hidden=0, out=2 * self.head_out, dtype=self.encoder.dtype)

    def batch_ops(self, clip):
        if clip.views < 3:
            raise ConfigError(
                f"config.objective (rspnet) needs 3 or more views per video (two at one speed, "
                f"one at another), the train ops make {clip.views}; start config.data.train_pp "
                "with e.g. multiview_clips(num_clips=3, segments=True, random=True)"
            )
        return []

    def check_labels(self, batch):
        playback_rate(batch, "rspnet")

    def loss(self, params, extra, batch, rng, train):
        out, new_extra = self.outputs(params, extra, batch, train)
        z_a, z_m = unit(out[..., : self.head_out]), unit(out[..., self.head_out :])
        loss_a, acc_a = video_contrast(z_a, self.temperature)
        rate = playback_rate(batch, "rspnet")
        loss_m, acc_m = speed_ranking(z_m, rate, self.temperature, self.margin)
        loss = self.appearance_weight * loss_a + self.speed_weight * loss_m
        metrics = {
            "appearance_loss": loss_a,
            "appearance_accuracy": acc_a,
            "speed_loss": loss_m,
            "speed_accuracy": acc_m,
        }
        return loss, (metrics, new_extra)
