"""Attentive probe on frozen tokens (V-JEPA protocol).

One learned query cross-attends over the frozen encoder's tokens (`AttentivePooler`: one
cross-attention block plus its MLP), then a linear classifier. With `segments=S`, a multi-view
pp's views are grouped as S temporal segments x the remaining spatial views (the layout of
`multiview_clips(num_clips=S)|...|three_crop`): the tokens of the S segments of a view are
concatenated into one sequence, and each spatial view is classified on its own, its
probabilities averaged at test time (every view is a training example).

Every (lr, weight decay) pair of the grid is its own probe; all of them train together in one
jitted step (vmap over a leading probe axis) on the same batches. The test split never takes
part in the choice: the grid trains on the train videos minus a held-out `holdout_fraction` of
them, the point with the best held-out top-1 is trained again on all of train, and only that
probe is measured on test (the linear probe's `sweep` protocol). A grid of one point (V-JEPA's
lr 1e-3, wd 0.01) trains on all of train at once, as V-JEPA's eval does. The result names the
chosen point (`chosen_lr`, `chosen_weight_decay`) and the held-out top-1 of every grid point.

The pooler has `heads` attention heads (default 16: V-JEPA's eval builds its probe with the
encoder's head count, 16 for ViT-L/H/g; set 12 for a ViT-B, 6 for a ViT-S).

Tokens are cached on the host as [N, V, n_tokens, D], so the train split must fit in memory.
With `train_augmented=True` (V-JEPA's protocol, one grid point) the train tokens are not cached:
every step runs the frozen encoder on a batch of freshly augmented clips of the job's train_pp
(random resized crop, RandAugment, random erasing; see augmented.py), its segments grouped as
above; `batch_size` then counts videos. Test tokens stay cached.
"""

import dataclasses
import functools
import itertools
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vrl import optim, registry, sharding
from vrl.config import ConfigError
from vrl.models import heads as heads_lib
from vrl.probe import augmented, batches, scores


class AttentiveClassifier(nn.Module):
    """AttentivePooler (one query) + a linear layer: tokens [B, n, D] -> logits [B, C]."""

    num_classes: int
    heads: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        pooled = heads_lib.AttentivePooler(num_queries=1, heads=self.heads, name="pooler")(tokens)
        return nn.Dense(self.num_classes, name="classifier")(pooled[:, 0])


@registry.register("probe", "attentive")
@dataclasses.dataclass(frozen=True)
class AttentiveProbe:
    inputs: ClassVar[str] = "tokens"

    lrs: tuple[float, ...] = (1e-3,)
    weight_decays: tuple[float, ...] = (0.01,)
    epochs: int = 20
    batch_size: int = 128
    warmup_epochs: float = 0.0
    segments: int = 1
    heads: int = 16  # V-JEPA: the encoder's head count, 16 for ViT-L/H/g
    holdout_fraction: float = 0.2  # of the train videos, to choose among the grid's points
    eval_batch_size: int = 256
    seed: int = 0
    train_augmented: bool = False  # train on augmented clips every epoch (see augmented.py)
    # V-JEPA's eval (`init_opt`, `clip_grad_norm_(classifier.parameters(), 1.0)`): weight
    # decay on a cosine from each grid point's value to this one (None: constant), gradients
    # clipped to this global norm (None: not clipped).
    final_weight_decay: float | None = None
    clip_norm: float | None = None

    def __post_init__(self):
        if not self.lrs or not self.weight_decays:
            raise ConfigError("config.probe.lrs / weight_decays: need at least one value each")
        if self.segments < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"config.probe: segments, epochs and batch_size must be >= 1, got "
                f"{self.segments}, {self.epochs}, {self.batch_size}"
            )
        if self.heads < 1:
            raise ConfigError(f"config.probe.heads must be >= 1, got {self.heads}")
        if len(self.grid) > 1 and not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(
                f"config.probe.holdout_fraction: the {len(self.grid)} (lr, weight decay) points "
                f"are chosen on held-out train videos; need a value in (0, 1), got "
                f"{self.holdout_fraction}"
            )
        if self.train_augmented and len(self.grid) > 1:
            raise ConfigError(
                "config.probe.train_augmented: the augmented path trains one (lr, weight decay) "
                f"on all of train; got a grid of {len(self.grid)} (set one lr and one weight decay)"
            )

    @property
    def grid(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.lrs, self.weight_decays))

    def run(self, train_x, train_y, test_x, test_y, num_classes: int) -> dict:
        train_x = self.group_segments(scores.view_tokens(train_x), "train")
        test_x = self.group_segments(scores.view_tokens(test_x), "test")
        train_y = np.asarray(train_y, np.int32)
        model = AttentiveClassifier(num_classes, self.checked_heads(train_x.shape[-1]))
        (lr, wd), selection = self.choose(model, train_x, train_y)
        params = self.train(model, train_x, train_y, [(lr, wd)])
        test_probs = self.predict(model, params, test_x)[0]
        return {
            **scores.classification(test_probs, test_y, num_classes),
            "chosen_lr": lr,
            "chosen_weight_decay": wd,
            **selection,
            "heads": model.heads,
            "num_train": int(train_x.shape[0] * train_x.shape[1]),
        }

    def run_augmented(self, train: augmented.Stream, test_x, test_y, num_classes: int) -> dict:
        """The grid's one point trained on tokens of augmented train clips, tested on the
        cached test tokens."""
        test_x = self.group_segments(scores.view_tokens(test_x), "test")
        model = AttentiveClassifier(num_classes, self.checked_heads(test_x.shape[-1]))
        (lr, wd), steps = self.grid[0], train.steps_per_epoch(self.batch_size)
        params, opt_state, hyper = self.start(model, test_x[:1, 0], [(lr, wd)])
        total, warmup = self.schedule(steps)
        state = jax.device_put((params, opt_state), sharding.replicated(train.mesh))
        step = lambda state, x, y: _augmented_step(self, model, state, hyper, x, y, total, warmup)
        params, _ = augmented.fit(
            train, state, step, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed
        )
        return {
            **scores.classification(self.predict(model, params, test_x)[0], test_y, num_classes),
            "chosen_lr": lr,
            "chosen_weight_decay": wd,
            "num_holdout": 0,
            "heads": model.heads,
            "num_train": len(train),
        }

    def choose(
        self, model: AttentiveClassifier, x: np.ndarray, y: np.ndarray
    ) -> tuple[tuple[float, float], dict]:
        """The grid point with the best top-1 on held-out train videos (first best on ties),
        and the held-out top-1 of every point; train data only, so test labels never count."""
        if len(self.grid) == 1:
            return self.grid[0], {"num_holdout": 0}
        fit, held = scores.holdout_split(y, self.holdout_fraction, self.seed)
        held_probs = self.predict(model, self.train(model, x[fit], y[fit], self.grid), x[held])
        held_top1 = [scores.top1(probs, y[held]) for probs in held_probs]
        best = held_top1.index(max(held_top1))
        probes = [
            {"lr": lr, "weight_decay": wd, "holdout_top1": top1}
            for (lr, wd), top1 in zip(self.grid, held_top1, strict=True)
        ]
        return self.grid[best], {"probes": probes, "num_holdout": int(len(held))}

    def checked_heads(self, width: int) -> int:
        if width % self.heads:
            raise ConfigError(
                f"config.probe.heads={self.heads} does not divide the token width {width}; set "
                "it to a divisor (V-JEPA uses the encoder's head count)"
            )
        return self.heads

    def group_segments(self, x: np.ndarray, split: str) -> np.ndarray:
        """[N, S * V, n, D] (segment-major views) -> [N, V, S * n, D]."""
        n, views, tokens, dim = x.shape  # numpy, or jax inside the augmented step
        if views % self.segments:
            raise ConfigError(
                f"config.probe.segments={self.segments}: the {split} pipeline gives {views} "
                "views per video, not a multiple of the segments"
            )
        spatial = views // self.segments
        x = x.reshape(n, self.segments, spatial, tokens, dim).transpose(0, 2, 1, 3, 4)
        return x.reshape(n, spatial, self.segments * tokens, dim)

    def train(
        self,
        model: AttentiveClassifier,
        x: np.ndarray,
        y: np.ndarray,
        grid: list[tuple[float, float]],
    ):
        """Trains one probe per (lr, wd) of `grid` at once on [N, V, L, D] tokens; returns
        params stacked on a leading probe axis."""
        n, views = x.shape[:2]
        examples = x.reshape(n * views, *x.shape[2:])
        labels = np.repeat(y, views)
        batch = min(self.batch_size, len(examples))
        steps_per_epoch = max(len(examples) // batch, 1)
        total, warmup = self.schedule(steps_per_epoch)
        params, opt_state, hyper = self.start(model, examples[:1], grid)
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            order = rng.permutation(len(examples))[: steps_per_epoch * batch]
            for idx in order.reshape(steps_per_epoch, batch):
                params, opt_state, _ = _train_step(
                    model, params, opt_state, hyper, examples[idx], labels[idx], total, warmup
                )
        return params

    def schedule(self, steps_per_epoch: int) -> tuple[int, int]:
        """(total steps, warmup steps) of training."""
        return self.epochs * steps_per_epoch, int(round(self.warmup_epochs * steps_per_epoch))

    def start(self, model: AttentiveClassifier, sample, grid: list[tuple[float, float]]):
        """(params, optimizer state, hyperparameters) of the probes of `grid`, stacked on a
        leading probe axis; `sample`: one example's tokens [1, L, D]."""
        final = self.final_weight_decay
        hyper = {
            "lr": [lr for lr, _ in grid],
            "wd": [wd for _, wd in grid],
            "final_wd": [wd if final is None else final for _, wd in grid],
            "clip": [np.inf if self.clip_norm is None else self.clip_norm] * len(grid),
        }
        hyper = {k: jnp.asarray(v, jnp.float32) for k, v in hyper.items()}
        # One compiled init called once per probe (a vmapped init compiles about twice as long).
        keys = jax.random.split(jax.random.key(self.seed), len(grid))
        inits = [_init(model, key, sample) for key in keys]
        params = jax.tree.map(lambda *p: np.stack(p), *inits)
        return params, _init_optimizer(params, hyper), hyper

    def predict(self, model: AttentiveClassifier, params, x: np.ndarray) -> np.ndarray:
        """View-averaged probabilities [P, N, C] of every probe for tokens [N, V, L, D], in
        batches of `eval_batch_size` over every device."""
        mesh = sharding.make_mesh(sharding.MeshConfig())
        params = jax.device_put(jax.tree.map(np.asarray, params), sharding.replicated(mesh))
        size = batches.batch_size(min(self.eval_batch_size, len(x)), mesh)
        fn = lambda batch: {"probs": _view_probs(model, params, batch["x"])}
        out = batches.run(fn, batches.padded({"x": x}, size), mesh, local=False)
        return out["probs"].swapaxes(0, 1)


def _optimizer(hyper: dict, total=1, warmup=0) -> optax.GradientTransformation:
    """AdamW with gradients clipped to `clip`, lr linear warmup then cosine to 0, weight decay
    on a cosine from `wd` to `final_wd`; every value may be traced, so one compiled step serves
    every grid and schedule length."""
    lr, wd, final_wd = hyper["lr"], hyper["wd"], hyper["final_wd"]

    def schedule(step):
        warm = step / jnp.maximum(warmup, 1)
        progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1), 0.0, 1.0)
        return lr * jnp.where(step < warmup, warm, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))

    def decay(step):
        progress = jnp.clip(step / jnp.maximum(total, 1), 0.0, 1.0)
        return final_wd + (wd - final_wd) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))

    return optax.chain(
        optax.clip_by_global_norm(hyper["clip"]),
        optax.scale_by_adam(),
        optax.add_decayed_weights(decay, mask=optim.kernel_mask),
        optax.scale_by_learning_rate(schedule),
    )


@functools.partial(jax.jit, static_argnums=0)
def _init(model: AttentiveClassifier, key, sample):
    return nn.meta.unbox(model.init(key, sample))["params"]


@jax.jit
def _init_optimizer(params, hyper):
    return jax.vmap(lambda p, h: _optimizer(h).init(p))(params, hyper)


def _step(model: AttentiveClassifier, params, opt_state, hyper, xb, yb, total, warmup):
    """One step of every probe: vmap over the leading probe axis of params, state and
    hyperparameters."""

    def one(p, o, h):
        def loss_fn(p):
            logits = model.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = _optimizer(h, total, warmup).update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    return jax.vmap(one)(params, opt_state, hyper)


_train_step = jax.jit(_step, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _augmented_step(probe: AttentiveProbe, model, state, hyper, x, y, total, warmup):
    """`_step` on the tokens [B, (S * V,) n, D] of an augmented batch: segments grouped, each
    spatial view an example."""
    x = probe.group_segments(x if x.ndim == 4 else x[:, None], "train")
    n, views = x.shape[:2]
    examples = x.reshape(n * views, *x.shape[2:]).astype(jnp.float32)
    params, opt_state, _ = _step(
        model, *state, hyper, examples, jnp.repeat(y, views), total, warmup
    )
    return params, opt_state


@functools.partial(jax.jit, static_argnums=0)
def _view_probs(model: AttentiveClassifier, params, x):
    """[N, P, C]: batch-major, as `batches.run` gathers it."""
    n, views = x.shape[:2]
    flat = x.reshape(n * views, *x.shape[2:])

    def one(p):
        probs = jax.nn.softmax(model.apply({"params": p}, flat), axis=-1)
        return probs.reshape(n, views, -1).mean(axis=1)

    return jax.vmap(one, out_axes=1)(params)
