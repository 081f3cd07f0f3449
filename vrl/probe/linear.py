"""Linear probe on frozen pooled features (the CVRL protocol, and two fast full-batch solvers)."""

import dataclasses
import functools
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vrl import registry, sharding
from vrl.config import ConfigError
from vrl.probe import augmented, scores


@registry.register("probe", "linear")
@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """One linear layer on frozen features; multi-view test scores are averaged over views.

    solver "sgd": softmax regression with SGD + momentum and a cosine schedule (CVRL protocol).
    solver "logistic": L2-regularised softmax regression on the whole train set at once,
        minimised by L-BFGS: no learning rate, batch size or epochs to tune.
    solver "ridge": regularised least squares on one-hot targets, closed form (seconds, no lr).

    `sweep` lists values of the solver's one knob (sgd: lr, logistic: l2, ridge: ridge); each is
    fitted on the train split minus a held-out `holdout_fraction` of its videos, the best on the
    held-out part is refitted on all of train and measured on test.

    `train_augmented` (sgd only): train on features of freshly augmented clips of the job's
    train_pp, computed by the frozen encoder at every step (`run_augmented`, the CVRL linear eval),
    instead of one cached feature per train clip; `batch_size` counts videos then.
    """

    inputs: ClassVar[str] = "pooled"

    solver: Literal["sgd", "logistic", "ridge"] = "sgd"
    normalize: bool = True  # L2-normalise features first (CVRL)
    standardize: bool = True  # then zero-mean / unit-variance with train statistics
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    warmup_epochs: float = 0.0  # sgd: linear warmup from 0, then cosine (CVRL: 5)
    momentum: float = 0.9
    weight_decay: float = 0.0
    l2: float = 1e-4  # logistic: penalty 0.5 * l2 * |W|^2 added to the mean cross-entropy
    max_iters: int = 300  # logistic: L-BFGS iterations
    ridge: float = 1e-2
    sweep: tuple[float, ...] = ()
    holdout_fraction: float = 0.2
    seed: int = 0
    train_augmented: bool = False  # sgd: train on augmented clips every epoch (see augmented.py)

    KNOBS: ClassVar[dict[str, str]] = {"sgd": "lr", "logistic": "l2", "ridge": "ridge"}

    def __post_init__(self):
        if self.train_augmented and (self.solver != "sgd" or self.sweep or self.standardize):
            raise ConfigError(
                "config.probe.train_augmented: trains SGD on features computed per step; needs "
                f"solver='sgd', no sweep and standardize=False (got solver={self.solver!r}, "
                f"sweep={self.sweep}, standardize={self.standardize})"
            )

    def run(self, train_x, train_y, test_x, test_y, num_classes: int) -> dict:
        train_x, test_x = scores.view_features(train_x), scores.view_features(test_x)
        train_y = np.asarray(train_y)
        knob = self.KNOBS[self.solver]
        extra = {}
        value = getattr(self, knob)
        if self.sweep:
            fit_idx, held_idx = scores.holdout_split(train_y, self.holdout_fraction, self.seed)
            held_top1 = {}
            for candidate in self.sweep:
                model = self.fit(train_x[fit_idx], train_y[fit_idx], num_classes, candidate)
                held_top1[candidate] = scores.top1(model(train_x[held_idx]), train_y[held_idx])
            value = max(self.sweep, key=lambda v: held_top1[v])  # first best on ties
            extra = {
                f"chosen_{knob}": value,
                "sweep": [{knob: v, "holdout_top1": held_top1[v]} for v in self.sweep],
                "num_holdout": int(len(held_idx)),
            }
        model = self.fit(train_x, train_y, num_classes, value)
        metrics = scores.classification(model(test_x), test_y, num_classes)
        return {**metrics, **extra, "num_train": int(train_x.shape[0] * train_x.shape[1])}

    def fit(self, train_x: np.ndarray, train_y: np.ndarray, num_classes: int, value: float):
        """Fits [N, V, D] features (each view an example); returns scores: [N, V, D] -> [N, C]."""
        views = train_x.shape[1]
        x = self.preprocess(train_x.reshape(-1, train_x.shape[-1]))
        y = np.repeat(train_y, views)
        mean, std = (x.mean(0), x.std(0) + 1e-6) if self.standardize else (0.0, 1.0)
        x = ((x - mean) / std).astype(np.float32)
        if self.solver == "ridge":
            w, b = fit_ridge(x, y, num_classes, value)
        elif self.solver == "logistic":
            w, b = fit_logistic(jnp.asarray(x), jnp.asarray(y), num_classes, value, self.max_iters)
        else:
            w, b = self.fit_sgd(x, y, num_classes, value)
        return self.predictor(w, b, mean, std)

    def run_augmented(self, train: augmented.Stream, test_x, test_y, num_classes: int) -> dict:
        """SGD on the features of augmented train clips, `epochs` passes of fresh clips."""
        test_x = scores.view_features(test_x)
        steps = train.steps_per_epoch(self.batch_size)
        hyper = dict(
            normalize=self.normalize,
            total=self.epochs * steps,
            warmup=int(round(self.warmup_epochs * steps)),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )
        params = (jnp.zeros((test_x.shape[-1], num_classes)), jnp.zeros((num_classes,)))
        opt_state = _sgd(self.lr, 1, 0, self.momentum, self.weight_decay).init(params)
        state = jax.device_put((params, opt_state), sharding.replicated(train.mesh))
        lr = jnp.float32(self.lr)
        step = lambda state, x, y: _sgd_step(state, x, y, lr, **hyper)
        (w, b), _ = augmented.fit(
            train, state, step, epochs=self.epochs, batch_size=self.batch_size, seed=self.seed
        )
        metrics = scores.classification(self.predictor(w, b)(test_x), test_y, num_classes)
        return {**metrics, "num_train": len(train)}

    def predictor(self, w, b, mean=0.0, std=1.0):
        """Scores of a fitted layer: features [N, V, D] -> [N, C]."""

        def predict(features: np.ndarray) -> np.ndarray:
            t = (self.preprocess(features) - mean) / std
            outputs = jnp.asarray(t, jnp.float32) @ w + b
            # Views are averaged as probabilities, or as least-squares class scores (ridge).
            if self.solver != "ridge":
                outputs = jax.nn.softmax(outputs, axis=-1)
            return np.asarray(outputs.mean(axis=1))

        return predict

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        return scores.l2_normalize(x) if self.normalize else x

    def fit_sgd(self, x, y, num_classes, lr):
        n = len(x)
        batch = min(self.batch_size, n)
        steps_per_epoch = max(n // batch, 1)
        return _fit_sgd(
            jnp.asarray(x),
            jnp.asarray(y),
            jnp.float32(lr),
            jax.random.key(self.seed),
            num_classes=num_classes,
            batch=batch,
            steps_per_epoch=steps_per_epoch,
            epochs=self.epochs,
            warmup=int(round(self.warmup_epochs * steps_per_epoch)),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )


def fit_ridge(x, y, num_classes, ridge):
    targets = np.eye(num_classes, dtype=np.float32)[y]
    x1 = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    gram = x1.T @ x1 + ridge * len(x) * np.eye(x1.shape[1], dtype=np.float32)
    w = np.linalg.solve(gram, x1.T @ targets)
    return jnp.asarray(w[:-1]), jnp.asarray(w[-1])


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iters"))
def fit_logistic(x, y, num_classes: int, l2, max_iters: int):
    """Full-batch L2-regularised softmax regression by L-BFGS (optax, zoom line search)."""

    def loss(params):
        w, b = params
        logits = x @ w + b
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * l2 * jnp.sum(w * w)

    params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=max_iters)
    return params


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "batch",
        "steps_per_epoch",
        "epochs",
        "warmup",
        "momentum",
        "weight_decay",
    ),
)
def _fit_sgd(
    x, y, lr, key, *, num_classes, batch, steps_per_epoch, epochs, warmup, momentum, weight_decay
):
    """Minibatch softmax regression, SGD + momentum, (warmup and) cosine decay; data reshuffled
    every epoch."""
    n, d = x.shape
    tx = _sgd(lr, epochs * steps_per_epoch, warmup, momentum, weight_decay)
    params = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))

    def epoch(carry, key):
        def step(carry, idx):
            return _sgd_update(tx, carry, x[idx], y[idx]), None

        order = jax.random.permutation(key, n)[: steps_per_epoch * batch]
        return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch))[0], None

    (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
    return params


def _sgd(lr, total: int, warmup: int, momentum: float, weight_decay: float):
    """SGD + momentum, lr linear from 0 over `warmup` steps then cosine to 0 at `total`."""
    schedule = optax.cosine_decay_schedule(lr, total)
    if warmup:  # optax's warmup_cosine_decay_schedule needs a concrete lr, this one is traced
        cosine = optax.cosine_decay_schedule(lr, total - warmup)
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), cosine], [warmup])
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)
    )


def _sgd_update(tx, state, xb, yb):
    """One step of softmax regression on examples xb [B, D], labels yb [B]."""

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(xb @ p[0] + p[1], yb).mean()

    params, opt = state
    updates, opt = tx.update(jax.grad(loss_fn)(params), opt, params)
    return optax.apply_updates(params, updates), opt


@functools.partial(
    jax.jit, static_argnames=("normalize", "total", "warmup", "momentum", "weight_decay")
)
def _sgd_step(state, x, y, lr, *, normalize, total, warmup, momentum, weight_decay):
    """One step on the features [B, (V,) D] of an augmented batch, each view an example."""
    if x.ndim == 3:
        y = jnp.repeat(y, x.shape[1])
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    if normalize:
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return _sgd_update(_sgd(lr, total, warmup, momentum, weight_decay), state, x, y)
