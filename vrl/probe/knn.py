"""Cosine k-nearest-neighbour classification and clip retrieval on frozen pooled features.

Classification follows InstDisc / DINO: the k most similar train clips vote for their class
with weight exp(cosine / temperature). Retrieval follows IIC: every test clip queries the train
clips, and Recall@k counts a hit when any of the k nearest has the query's class.

Multi-view: each train video is one bank entry, the mean of its L2-normalised views. Each test
view votes on its own and the normalised votes are averaged over views; retrieval ranks train
clips by the cosine similarity averaged over the query's views.
"""

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vrl import registry
from vrl.config import ConfigError
from vrl.probe import scores


@registry.register("probe", "knn")
@dataclasses.dataclass(frozen=True)
class KNNProbe:
    inputs: ClassVar[str] = "pooled"

    k: int = 20
    temperature: float = 0.07
    recall_at: tuple[int, ...] = (1, 5, 10, 20)
    chunk: int = 1024  # test queries per similarity matmul

    def __post_init__(self):
        if self.k < 1 or self.temperature <= 0 or self.chunk < 1:
            raise ConfigError(
                f"config.probe: knn needs k >= 1, temperature > 0 and chunk >= 1; got k={self.k}, "
                f"temperature={self.temperature}, chunk={self.chunk}"
            )
        if not self.recall_at or min(self.recall_at) < 1:
            raise ConfigError(f"config.probe.recall_at: need values >= 1, got {self.recall_at}")

    def run(self, train_x, train_y, test_x, test_y, num_classes: int) -> dict:
        bank = jnp.asarray(bank_vectors(train_x))
        bank_y = jnp.asarray(np.asarray(train_y, np.int32))
        queries = scores.l2_normalize(scores.view_features(test_x))  # [M, V, D]
        m, views, _ = queries.shape
        k = min(self.k, len(bank))
        depth = min(max(self.recall_at), len(bank))
        votes, neighbours = [], []
        for start in range(0, m, self.chunk):
            part = queries[start : start + self.chunk]
            pad = min(self.chunk, m) - len(part)
            part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)]) if pad else part
            v, nn_idx = _knn(
                jnp.asarray(part),
                bank,
                bank_y,
                self.temperature,
                k=k,
                depth=depth,
                num_classes=num_classes,
            )
            votes.append(np.asarray(v)[: len(part) - pad])
            neighbours.append(np.asarray(nn_idx)[: len(part) - pad])
        metrics = scores.classification(np.concatenate(votes), test_y, num_classes)
        hits = np.asarray(train_y)[np.concatenate(neighbours)] == np.asarray(test_y)[:, None]
        for r in self.recall_at:
            metrics[f"recall@{r}"] = float(100.0 * hits[:, :r].any(-1).mean())
        return {**metrics, "k": k, "num_train": int(len(bank))}


def bank_vectors(train_x: np.ndarray) -> np.ndarray:
    """[N, D] or [N, V, D] -> [N, D]: unit-length mean of each video's unit-length views."""
    return scores.l2_normalize(scores.l2_normalize(scores.view_features(train_x)).mean(axis=1))


@functools.partial(jax.jit, static_argnames=("k", "depth", "num_classes"))
def _knn(queries, bank, bank_y, temperature, *, k: int, depth: int, num_classes: int):
    """(votes [m, C] averaged over views, retrieval ranking [m, depth]) for queries [m, V, D]."""
    sims = jnp.einsum("mvd,nd->mvn", queries, bank)
    top, idx = jax.lax.top_k(sims, k)
    # Shifting by the largest similarity leaves the normalised votes unchanged and cannot overflow.
    weights = jnp.exp((top - top[..., :1]) / temperature)
    votes = jnp.einsum("mvk,mvkc->mvc", weights, jax.nn.one_hot(bank_y[idx], num_classes))
    votes = votes / votes.sum(-1, keepdims=True)
    _, ranking = jax.lax.top_k(sims.mean(axis=1), depth)
    return votes.mean(axis=1), ranking
