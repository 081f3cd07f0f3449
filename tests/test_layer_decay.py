"""Layer-wise lr decay numbers the layers of every encoder: ViT blocks, and the stem and residual
blocks of the 3-D ResNets (where it used to be a silent no-op); an encoder without numbered
layers is refused at start-up."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import optim
from vrl.config import ConfigError
from vrl.durations import RunLength
from vrl.objectives import base

TINY_VIT = {"name": "vit", "size": "Ti", "width": 32, "depth": 3, "heads": 2, "patch": (2, 8, 8)}
DECAY = 0.5
LENGTH = RunLength(steps_per_epoch=10, batch_size=1, total_steps=10)


def supervised_params(model: dict):
    """Parameter shapes of an encoder with a classifier head (no real initialisation)."""
    objective = base.build({"model": model, "objective": {"name": "supervised", "num_classes": 8}})
    batch = {
        "video": jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32),
        "label/label": jax.ShapeDtypeStruct((1,), jnp.int32),
    }
    params, _ = jax.eval_shape(lambda b: objective.init(jax.random.key(0), b), batch)
    return objective, nn.unbox(params)


def lr_scales(objective, shapes) -> dict[str, float]:
    """{parameter path: its lr multiplier}, read off one SGD step (lr 1) on gradients of ones."""
    cfg = optim.OptimConfig(
        name="sgd", lr=1.0, schedule="constant", momentum=0.0, layer_decay=DECAY
    )
    tx, _ = optim.make(cfg, LENGTH, objective.layer_ids)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    updates, _ = tx.update(params, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    return {jax.tree_util.keystr(p): float(-u.reshape(-1)[0]) for p, u in flat}


@pytest.mark.parametrize(
    "model, block",
    [
        ({"name": "cvrl_r3d", "depth": 18, "width": 0.125}, r"res(\d)_block(\d)"),
        ({"name": "video_resnet", "arch": "r3d_18"}, r"layer(\d)_block(\d)"),
    ],
    ids=["cvrl_r3d_18", "torchvision_r3d_18"],
)
def test_resnet_stem_smallest_blocks_in_order_head_one(model, block):
    objective, shapes = supervised_params(model)
    ids, num_layers = objective.layer_ids(shapes)
    assert num_layers == 8  # 4 stages x 2 blocks
    scales = lr_scales(objective, shapes)
    stem = {s for p, s in scales.items() if p.startswith("['encoder']['stem")}
    head = {s for p, s in scales.items() if p.startswith("['head']")}
    assert stem == {DECAY**9} and head == {1.0}
    # Every block, in network order (stage, then block), one decay step above the one before.
    by_block: dict[tuple[int, int], set] = {}
    for path, scale in scales.items():
        if m := re.search(block, path):
            by_block.setdefault((int(m.group(1)), int(m.group(2))), set()).add(scale)
    assert [by_block[k] for k in sorted(by_block)] == [{DECAY ** (9 - i)} for i in range(1, 9)]
    assert min(scales.values()) == DECAY**9 and max(scales.values()) == 1.0


def previous_vit_layer_ids(params):
    """The numbering before the 3-D ResNets were covered: `embed` -> 0, `block{i}` -> i + 1."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = [int(m.group(1)) for p in paths if (m := re.search(r"'encoder'.*'block(\d+)'", p))]
    num_layers = max(blocks) + 1 if blocks else 0

    def number(path, _):
        name = jax.tree_util.keystr(path)
        if (m := re.search(r"'encoder'.*'block(\d+)'", name)) is not None:
            return int(m.group(1)) + 1
        return 0 if re.search(r"'encoder'.*'embed'", name) else num_layers + 1

    return jax.tree_util.tree_map_with_path(number, params), num_layers


@pytest.mark.parametrize(
    "model",
    [TINY_VIT, {**TINY_VIT, "tokenlearner_layer": 1, "tokenfuser": True}],
    ids=["vit", "vit_tokenfuser"],
)
def test_vit_numbering_is_unchanged(model):
    objective, shapes = supervised_params(model)
    ids, num_layers = objective.layer_ids(shapes)
    old_ids, old_num_layers = previous_vit_layer_ids(shapes)
    assert num_layers == old_num_layers == 3
    assert jax.tree.leaves(ids) == jax.tree.leaves(old_ids)
    scales = lr_scales(objective, shapes)
    assert scales["['encoder']['embed']['projection']['kernel']"] == DECAY**4
    assert scales["['encoder']['block2']['mlp']['fc1']['kernel']"] == DECAY
    assert scales["['head']['logits']['kernel']"] == 1.0


def test_layer_decay_without_numbered_layers_is_a_config_error():
    params = {"encoder": {"dense": {"kernel": np.ones((2, 2))}}, "head": {"bias": np.ones(2)}}
    cfg = optim.OptimConfig(name="adamw", layer_decay=0.75)
    tx, _ = optim.make(cfg, LENGTH, base.layer_ids)
    with pytest.raises(ConfigError, match=r"^config\.optim\.layer_decay: .*allowed: None$"):
        tx.init(params)
