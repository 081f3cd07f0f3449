"""rho-MoCo, rho-BYOL and rho-SwAV: rho positive clips per video (Feichtenhofer et al., CVPR 2021,
"A Large-Scale Study on Unsupervised Spatiotemporal Representation Learning").

The train ops make rho clips of one video (`rho_clips(num_clips=rho)`); every clip goes through
the encoder and a projection MLP in one batch, and each objective pulls the clips of a video
together as the released code (PySlowFast `slowfast/models/contrastive.py`, SEQUENTIAL mode)
does, summing over query clips the losses it back-propagates one clip at a time:

  rho_moco  each clip in turn is the query; the momentum encoder's keys of the other rho - 1
            clips are positives, a queue of past keys the negatives (InfoNCE); all rho keys
            are then enqueued
  rho_byol  each clip's prediction regresses the EMA target's projections of the other clips
            (normalised MSE, averaged over them)
  rho_swav  consecutive clips predict each other's codes: Sinkhorn-Knopp over the global batch
            assigns each clip's scores against normalised prototypes to codes (swapped prediction)

Losses are written over the global batch, so under jit over a sharded batch the compiler
inserts the collectives (negatives and Sinkhorn marginals come from every device). MoCo's
queue lives in `extra` with its first axis on the batch axes of the mesh.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry
from vrl.config import ConfigError
from vrl.models import heads, layers
from vrl.objectives import base, cvrl


def normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True).clip(1e-12)


def others(views: int) -> list[list[int]]:
    """For each clip i, the other clips j != i in order."""
    return [[j for j in range(views) if j != i] for i in range(views)]


def infonce_queue(
    q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """(loss, accuracy) for unit queries q [B, V, D], keys k [B, V, D], negatives queue [Q, D].

    Query clip i scores each key j != i of its video against the queue: logits
    [q_i.k_j, q_i.queue] / temperature, cross-entropy towards the first. The loss is the sum
    over query clips of the mean over their (V - 1) B rows; accuracy is over all rows.
    """
    q, k, queue = (x.astype(jnp.float32) for x in (q, k, queue))
    negatives = jnp.einsum("bvd,qd->bvq", q, queue)
    losses, hits = [], []
    for i, js in enumerate(others(q.shape[1])):
        positives = jnp.einsum("bd,bjd->bj", q[:, i], k[:, js])[..., None]
        neg = jnp.broadcast_to(negatives[:, i, None], (*positives.shape[:2], queue.shape[0]))
        logits = jnp.concatenate([positives, neg], axis=-1) / temperature
        losses.append(-jax.nn.log_softmax(logits, axis=-1)[..., 0].mean())
        hits.append(jnp.argmax(logits, axis=-1) == 0)
    return jnp.sum(jnp.stack(losses)), jnp.concatenate(hits, axis=1).mean()


def byol_loss(p: jax.Array, k: jax.Array, temperature: float) -> jax.Array:
    """Unit predictions p [B, V, D] regress unit target projections k [B, V, D] of the other
    clips: ||p_i - k_j||^2 / (2 temperature) = (1 - p_i.k_j) / temperature, averaged over the
    batch and j != i, summed over i. At temperature 0.5 it is BYOL's 2 - 2 cos; it has the
    gradient of the reference's -p_i.k_j / temperature for any temperature."""
    p, k = p.astype(jnp.float32), k.astype(jnp.float32)
    losses = [
        jnp.mean(1.0 - jnp.einsum("bd,bjd->bj", p[:, i], k[:, js])) / temperature
        for i, js in enumerate(others(p.shape[1]))
    ]
    return jnp.sum(jnp.stack(losses))


def sinkhorn(scores: jax.Array, epsilon: float, iterations: int) -> jax.Array:
    """Codes [N, K] (rows sum to 1) for prototype scores [N, K] of the whole batch: Q =
    exp(scores / epsilon) scaled towards equal prototype mass 1/K and sample mass 1/N."""
    scores = scores.astype(jnp.float32) / epsilon
    # Shifting by the maximum changes nothing after the first normalisation; it avoids overflow.
    q = jnp.exp(scores - jax.lax.stop_gradient(scores.max())).T  # [K, N]
    q = q / q.sum()
    num_prototypes, num_samples = q.shape
    for _ in range(iterations):
        q = q / (q.sum(axis=1, keepdims=True) * num_prototypes)
        q = q / (q.sum(axis=0, keepdims=True) * num_samples)
    return (q / q.sum(axis=0, keepdims=True)).T


def swav_loss(scores: jax.Array, temperature: float, epsilon: float, iterations: int) -> jax.Array:
    """Swapped prediction over consecutive clips of prototype scores [B, V, K]: for each pair
    (i, i + 1), each clip's softmax(scores / temperature) predicts the other's Sinkhorn codes
    (cross-entropy, mean over the batch), the two averaged; summed over the V - 1 pairs."""
    scores = scores.astype(jnp.float32)
    codes = [
        jax.lax.stop_gradient(sinkhorn(scores[:, v], epsilon, iterations))
        for v in range(scores.shape[1])
    ]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)

    def cross_entropy(code, v):
        return -jnp.mean(jnp.sum(code * log_p[:, v], axis=-1))

    pairs = [
        (cross_entropy(codes[i], i + 1) + cross_entropy(codes[i + 1], i)) / 2.0
        for i in range(scores.shape[1] - 1)
    ]
    return jnp.sum(jnp.stack(pairs))


@dataclasses.dataclass(frozen=True)
class _RhoClips(base.Objective):
    """The online network (encoder + projection MLP) over rho clips; subclasses add the loss."""

    encoder: nn.Module
    temperature: float = 0.1
    head_hidden: int = 2048
    head_layers: int = 2  # hidden layers: PySlowFast's NUM_MLP_LAYERS - 1
    head_out: int = 128
    head_batch_norm: bool = True  # PySlowFast's BN_MLP (False for MoCo: Linear + bias, ReLU)
    # Batch norm over each clip's batch (the reference runs the network once per clip), or
    # over all rho clips of the batch at once (CVRL's way; one larger batch).
    per_clip_batch_norm: bool = True

    name = "rho"

    def __post_init__(self):
        cvrl.check_temperature(self)

    @property
    def head(self) -> heads.ProjectionMLP:
        return heads.ProjectionMLP(
            self.head_hidden,
            self.head_layers,
            self.head_out,
            self.head_batch_norm,
            dtype=self.encoder.dtype,
        )

    def batch_ops(self, clip):
        if clip.views < 2:
            raise ConfigError(
                f"config.objective ({self.name}) needs rho >= 2 clips per video, the train ops "
                f"make {clip.views}; start config.data.train_pp with rho_clips(num_clips=2)"
            )
        return []

    def init_network(self, rng, batch) -> tuple[dict, dict]:
        """(params, batch stats) of the encoder and the projection head."""
        return cvrl.init_encoder_and_head(self.encoder, self.head, rng, batch["video"])

    def project(self, params, stats, video, train) -> tuple[jax.Array, dict]:
        """(projections [B, V, D] before normalisation, new batch stats) of the network
        `params` / `stats` over the rho clips (see `over_clips`)."""
        mutable = ["batch_stats"] if train else []

        def network(stats, video):
            x = layers.to_model_input(video, self.encoder)
            tokens, enc_state = self.encoder.apply(
                base.variables(params["encoder"], stats["encoder"]),
                x,
                train=train,
                mutable=mutable,
            )
            z, head_state = self.head.apply(
                base.variables(params["head"], stats["head"]),
                self.encoder.pool(tokens),
                train=train,
                mutable=mutable,
            )
            new_stats = {
                "encoder": enc_state.get("batch_stats", stats["encoder"]),
                "head": head_state.get("batch_stats", stats["head"]),
            }
            return z, new_stats

        used = {k: stats[k] for k in ("encoder", "head")}
        return over_clips(network, used, video, self.per_clip_batch_norm)


def over_clips(fn, stats, inputs: jax.Array, per_clip: bool) -> tuple[jax.Array, dict]:
    """(outputs [B, V, ...], stats) of `fn(stats, x [N, ...]) -> (outputs [N, ...], stats)`
    over inputs [B, V, ...]: clip by clip (batch norm normalises each clip's batch and updates
    its running statistics once per clip, as the reference's forward pass per clip), or all
    B * V clips in one batch."""
    if per_clip:

        def body(stats, x):
            out, stats = fn(stats, x)
            return stats, out

        stats, out = jax.lax.scan(body, stats, jnp.swapaxes(inputs, 0, 1))
        return jnp.swapaxes(out, 0, 1), stats
    batch, views = inputs.shape[:2]
    out, stats = fn(stats, inputs.reshape(batch * views, *inputs.shape[2:]))
    return out.reshape(batch, views, *out.shape[1:]), stats


@dataclasses.dataclass(frozen=True)
class _MomentumTarget(_RhoClips):
    """An EMA copy of encoder + projection (`extra["target"]`): momentum `ema_start` annealed
    to 1 by a half cosine over `ema_*` (the whole run by default), as PySlowFast's
    `momentum_anneal_cosine`; only parameters are averaged, the target keeps its own batch
    statistics (the reference's `_update_history` copies `named_parameters`)."""

    ema_start: float = 0.994
    ema_steps: int | None = None
    ema_epochs: float | None = None
    ema_fraction: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.ema_start <= 1.0:
            raise ConfigError(
                f"config.objective.ema_start: {self.ema_start!r} is not allowed; allowed: [0, 1]"
            )

    def for_training(self, length):
        return base.with_ema_horizon(self, length)

    def momentum(self, step):
        frac = jnp.clip(step / max(self.ema_steps or 1, 1), 0.0, 1.0)
        return 1.0 - (1.0 - self.ema_start) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0

    def init_extra(self, params, stats) -> dict:
        """`extra` with the target (`target`, its statistics `batch_stats.target`) an exact
        copy of the online encoder and head."""
        online = {k: params[k] for k in ("encoder", "head")}
        target_stats = jax.tree.map(jnp.copy, {k: stats[k] for k in ("encoder", "head")})
        return {
            "batch_stats": {**stats, "target": target_stats},
            "target": jax.tree.map(jnp.copy, online),
        }

    def target_keys(self, extra, video, train) -> tuple[jax.Array, dict]:
        """(unit target projections [B, V, D] without gradient, the target's new statistics)."""
        k, stats = self.project(extra["target"], extra["batch_stats"]["target"], video, train)
        return jax.lax.stop_gradient(normalize(k)), stats

    def update_extra(self, extra, params, step):
        target = extra["target"]
        online = {k: params[k] for k in target}
        return {**extra, "target": base.ema(target, online, self.momentum(step))}

    def encoder_variables(self, params, extra, which="encoder"):
        if which == "target":
            stats = extra["batch_stats"]["target"]["encoder"]
            return base.variables(extra["target"]["encoder"], stats)
        return super().encoder_variables(params, extra, which)

    def encoders(self):
        return ("encoder", "target")


@registry.register("objective", "rho_moco")
@dataclasses.dataclass(frozen=True)
class RhoMoCo(_MomentumTarget):
    # PySlowFast defaults (`CONTRASTIVE.QUEUE_LEN`); the queue starts uniform in
    # [-1 / sqrt(D / 3), 1 / sqrt(D / 3)] as `queue_x` there.
    queue_size: int = 65536

    name = "rho_moco"

    def init(self, rng, batch):
        net_rng, queue_rng = jax.random.split(rng)
        params, stats = self.init_network(net_rng, batch)
        bound = 1.0 / (self.head_out / 3) ** 0.5
        queue = jax.random.uniform(
            queue_rng, (self.queue_size, self.head_out), jnp.float32, -bound, bound
        )
        extra = {
            **self.init_extra(params, stats),
            # Queue rows on the batch axes of the mesh, as the batch itself.
            "queue": nn.LogicallyPartitioned(queue, ("batch", None)),
            "queue_ptr": nn.LogicallyPartitioned(jnp.zeros((), jnp.int32), ()),
        }
        return params, extra

    def loss(self, params, extra, batch, rng, train):
        video = batch["video"]
        keys_per_step = video.shape[0] * video.shape[1]
        if self.queue_size < keys_per_step:  # shapes are static: this fails at compile time
            raise ConfigError(
                f"config.objective.queue_size: {self.queue_size} is not allowed; allowed: at "
                f"least the keys enqueued per step, batch x rho = {keys_per_step}"
            )
        z, stats = self.project(params, extra["batch_stats"], video, train)
        k, target_stats = self.target_keys(extra, video, train)
        loss, accuracy = infonce_queue(normalize(z), k, extra["queue"], self.temperature)
        queue, ptr = enqueue(extra["queue"], extra["queue_ptr"], k)
        new_extra = {
            **extra,
            "batch_stats": {**extra["batch_stats"], **stats, "target": target_stats},
            "queue": queue if train else extra["queue"],
            "queue_ptr": ptr if train else extra["queue_ptr"],
        }
        return loss, ({"contrastive_accuracy": accuracy}, new_extra)


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(queue, pointer) after writing keys [B, V, D] clip by clip (all of clip 0's batch, then
    clip 1's, ...) at the pointer, wrapping around: PySlowFast's `_dequeue_and_enqueue` with
    MOCO_MULTI_VIEW_QUEUE."""
    rows = jnp.swapaxes(keys, 0, 1).reshape(-1, keys.shape[-1]).astype(queue.dtype)
    index = (ptr + jnp.arange(rows.shape[0])) % queue.shape[0]
    return queue.at[index].set(rows), ((ptr + rows.shape[0]) % queue.shape[0]).astype(ptr.dtype)


@registry.register("objective", "rho_byol")
@dataclasses.dataclass(frozen=True)
class RhoBYOL(_MomentumTarget):
    temperature: float = 0.5
    ema_start: float = 0.996
    head_hidden: int = 4096
    head_layers: int = 1
    head_out: int = 256
    # The predictor MLP on the (unnormalised) projection: PREDICTOR_DEPTHS [2] -> 1 hidden layer.
    predictor_hidden: int = 4096
    predictor_layers: int = 1

    name = "rho_byol"

    @property
    def predictor(self) -> heads.ProjectionMLP:
        return heads.ProjectionMLP(
            self.predictor_hidden, self.predictor_layers, self.head_out, dtype=self.encoder.dtype
        )

    def init(self, rng, batch):
        net_rng, pred_rng = jax.random.split(rng)
        params, stats = self.init_network(net_rng, batch)
        pred_vars = self.predictor.init(
            pred_rng, jnp.zeros((2, self.head_out), self.encoder.dtype), train=False
        )
        extra = self.init_extra(params, stats)
        extra["batch_stats"]["predictor"] = pred_vars.get("batch_stats", {})
        return {**params, "predictor": pred_vars["params"]}, extra

    def loss(self, params, extra, batch, rng, train):
        video = batch["video"]
        stats = extra["batch_stats"]
        z, new_stats = self.project(params, stats, video, train)

        def predictor(pred_stats, z):
            p, state = self.predictor.apply(
                base.variables(params["predictor"], pred_stats),
                z,
                train=train,
                mutable=["batch_stats"] if train else [],
            )
            return p, state.get("batch_stats", pred_stats)

        p, pred_stats = over_clips(predictor, stats["predictor"], z, self.per_clip_batch_norm)
        p = normalize(p)
        k, target_stats = self.target_keys(extra, video, train)
        loss = byol_loss(p, k, self.temperature)
        new_stats = {**new_stats, "predictor": pred_stats, "target": target_stats}
        cosine = jnp.mean(jnp.sum(p * k, axis=-1))
        return loss, ({"cosine": cosine}, {**extra, "batch_stats": new_stats})


@registry.register("objective", "rho_swav")
@dataclasses.dataclass(frozen=True)
class RhoSwAV(_RhoClips):
    num_prototypes: int = 1000
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3

    name = "rho_swav"

    def __post_init__(self):
        super().__post_init__()
        if self.num_prototypes < 1 or self.sinkhorn_iterations < 0:
            raise ConfigError(
                "config.objective: num_prototypes must be >= 1 and sinkhorn_iterations >= 0, "
                f"got {self.num_prototypes} and {self.sinkhorn_iterations}"
            )
        if not self.sinkhorn_epsilon > 0:
            raise ConfigError(
                f"config.objective.sinkhorn_epsilon: {self.sinkhorn_epsilon!r} is not allowed; "
                "allowed: > 0"
            )

    @property
    def prototypes(self) -> nn.Dense:
        return layers.dense(
            self.num_prototypes, ("embed", "classes"), use_bias=False, name="prototypes"
        )

    def init(self, rng, batch):
        net_rng, proto_rng = jax.random.split(rng)
        params, stats = self.init_network(net_rng, batch)
        proto = self.prototypes.init(proto_rng, jnp.zeros((2, self.head_out), jnp.float32))
        return {**params, "prototypes": proto["params"]}, {"batch_stats": stats}

    def loss(self, params, extra, batch, rng, train):
        z, stats = self.project(params, extra["batch_stats"], batch["video"], train)
        # The reference renormalises each prototype (kernel column) in place before the step;
        # here the loss sees them normalised with the gradient it takes at the normalised
        # weights (straight through); see docs/PARITY.md.
        kernel = nn.meta.unbox(params["prototypes"]["kernel"])
        kernel = kernel + jax.lax.stop_gradient(normalize(kernel, axis=0) - kernel)
        scores = normalize(z) @ kernel.astype(jnp.float32)
        loss = swav_loss(scores, self.temperature, self.sinkhorn_epsilon, self.sinkhorn_iterations)
        return loss, ({}, {**extra, "batch_stats": stats})
