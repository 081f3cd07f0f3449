"""Linear probe on frozen pooled features (the CVRL protocol, and a closed-form variant)."""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vrl import registry
from vrl.probe import scores


@registry.register("probe", "linear")
@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """One linear layer on frozen features; multi-view test scores are averaged over views.

    solver "sgd": softmax regression with SGD + momentum and a cosine schedule (CVRL protocol).
    solver "ridge": regularised least squares on one-hot targets, closed form (seconds, no lr).
    """

    solver: Literal["sgd", "ridge"] = "sgd"
    normalize: bool = True  # L2-normalise features first (CVRL)
    standardize: bool = True  # then zero-mean / unit-variance with train statistics
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    ridge: float = 1e-2
    seed: int = 0

    def run(self, train_x, train_y, test_x, test_y, num_classes: int) -> dict:
        train_x, test_x = scores.view_features(train_x), scores.view_features(test_x)
        views = train_x.shape[1]
        x = self.preprocess(train_x.reshape(-1, train_x.shape[-1]))
        y = np.repeat(np.asarray(train_y), views)
        stats = (x.mean(0), x.std(0) + 1e-6) if self.standardize else (0.0, 1.0)
        x = (x - stats[0]) / stats[1]
        w, b = self.fit_ridge(x, y, num_classes) if self.solver == "ridge" else self.fit_sgd(x, y, num_classes)
        t = (self.preprocess(test_x) - stats[0]) / stats[1]
        outputs = jnp.asarray(t) @ w + b
        # Views are averaged as probabilities (sgd) or as least-squares class scores (ridge).
        if self.solver == "sgd":
            outputs = jax.nn.softmax(outputs, axis=-1)
        averaged = np.asarray(outputs.mean(axis=1))
        return {**scores.classification(averaged, test_y, num_classes), "num_train": len(y)}

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        if self.normalize:
            x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        return x

    def fit_ridge(self, x, y, num_classes):
        targets = np.eye(num_classes, dtype=np.float32)[y]
        x1 = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
        gram = x1.T @ x1 + self.ridge * len(x) * np.eye(x1.shape[1], dtype=np.float32)
        w = np.linalg.solve(gram, x1.T @ targets)
        return jnp.asarray(w[:-1]), jnp.asarray(w[-1])

    def fit_sgd(self, x, y, num_classes):
        n, d = x.shape
        batch = min(self.batch_size, n)
        steps_per_epoch = max(n // batch, 1)
        total = self.epochs * steps_per_epoch
        tx = optax.chain(
            optax.add_decayed_weights(self.weight_decay),
            optax.sgd(optax.cosine_decay_schedule(self.lr, total), momentum=self.momentum),
        )
        params = (jnp.zeros((d, num_classes)), jnp.zeros((num_classes,)))
        x, y = jnp.asarray(x), jnp.asarray(y)

        def loss_fn(p, xb, yb):
            logits = xb @ p[0] + p[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        def epoch(carry, key):
            def step(carry, idx):
                p, opt = carry
                grads = jax.grad(loss_fn)(p, x[idx], y[idx])
                updates, opt = tx.update(grads, opt, p)
                return (optax.apply_updates(p, updates), opt), None

            order = jax.random.permutation(key, n)[: steps_per_epoch * batch]
            return jax.lax.scan(step, carry, order.reshape(steps_per_epoch, batch))[0], None

        keys = jax.random.split(jax.random.key(self.seed), self.epochs)
        (params, _), _ = jax.jit(lambda c: jax.lax.scan(epoch, c, keys))((params, tx.init(params)))
        return params
