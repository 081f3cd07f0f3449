"""Meshes and layouts: rule presets on a (4, 2) mesh, replication where a dimension does not
divide, rule coverage of every model, equal train steps under every preset, FSDP memory,
re-sharding restores, gradient accumulation and remat equivalence, batch-size errors."""

import logging
import os
import types

import flax.linen as nn
import grain
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import RECIPES
from configs import common as config_common
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import optim, sharding
from vrl import setup as setup_lib
from vrl.data import pipeline
from vrl.durations import RunLength
from vrl.models import heads, layers
from vrl.objectives import base
from vrl.state import abstract_state, init_state, make_train_step

TINY_VIT = {"name": "vit", "width": 64, "depth": 1, "heads": 2, "patch": (2, 8, 8)}


def supervised(model=None, opt="sgd", lr=0.5, eps=1e-8):
    config = {"model": model or TINY_VIT, "objective": {"name": "supervised", "num_classes": 8}}
    objective = base.build(config)
    tx, schedule = optim.make(
        optim.OptimConfig(name=opt, lr=lr, schedule="constant", momentum=0.9, eps=eps),
        RunLength(steps_per_epoch=10, batch_size=32, total_steps=10),
    )
    return objective, tx, schedule


def clips(n, seed=0, frames=4, size=16):
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (n, frames, size, size, 3), dtype=np.uint8),
        "label/label": rng.integers(0, 8, n).astype(np.int32),
    }


def mesh_of(data=1, fsdp=1, model=1, rules="data", devices=None):
    cfg = sharding.MeshConfig(data=data, fsdp=fsdp, model=model, rules=rules)
    return sharding.make_mesh(cfg, devices), cfg.axis_rules()


def state_on(mesh, rules, objective, tx, seed=0):
    return init_state(objective, tx, clips(2), mesh, rules, seed)


def leaf(tree, *path):
    for key in path:
        tree = tree[key]
    return tree


def one_step(objective, tx, schedule, mesh, rules, batch, accum=1, seed=0):
    """(state before, state after, metrics) of one jitted train step on `mesh`."""
    state, shardings = init_state(objective, tx, clips(2), mesh, rules, seed)
    step = make_train_step(objective, tx, schedule, seed, accum, False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch_shardings = {k: sharding.batch_sharding(mesh, v.ndim) for k, v in batch.items()}
        fn = jax.jit(
            step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None)
        )
        after, metrics = fn(state, sharding.to_global(batch, mesh))
    return state, after, jax.device_get(metrics)


# ------------------------------------------------------------------------------ preset layouts

BLOCK = ("params", "encoder", "block0")
CHECKED = {
    "query": (*BLOCK, "attention", "query", "kernel"),  # (embed, heads, kv)
    "out": (*BLOCK, "attention", "out", "kernel"),  # (heads, kv, embed)
    "fc1": (*BLOCK, "mlp", "fc1", "kernel"),  # (embed, mlp)
    "fc2": (*BLOCK, "mlp", "fc2", "kernel"),  # (mlp, embed)
    "logits": ("params", "head", "logits", "kernel"),  # (embed, classes)
}
EXPECTED = {
    "data": dict(query=P(), out=P(), fc1=P(), fc2=P(), logits=P()),
    "fsdp": dict(
        query=P("fsdp"),
        out=P(None, None, "fsdp"),
        fc1=P("fsdp"),
        fc2=P(None, "fsdp"),
        logits=P("fsdp"),
    ),
    "tensor": dict(
        query=P(None, "model"), out=P("model"), fc1=P(None, "model"), fc2=P("model"), logits=P()
    ),
    "fsdp_tensor": dict(
        query=P("fsdp", "model"),
        out=P("model", None, "fsdp"),
        fc1=P("fsdp", "model"),
        fc2=P("model", "fsdp"),
        logits=P("fsdp"),
    ),
}


@pytest.fixture(scope="module")
def preset_steps():
    """preset -> (state before, state after, metrics) of one step on the same (4, 2) mesh."""
    # A large Adam epsilon keeps the first update smooth in the gradient (comparable across
    # layouts, whose reductions differ in rounding).
    objective, tx, schedule = supervised(opt="adamw", lr=1e-2, eps=1e-3)
    batch = clips(16, seed=1)
    out = {}
    for preset in EXPECTED:
        mesh, rules = mesh_of(fsdp=4, model=2, rules=preset)
        out[preset] = one_step(objective, tx, schedule, mesh, rules, batch)
    return out


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_preset_lays_out_parameters_and_optimizer_state_on_a_4x2_mesh(preset, preset_steps):
    state = preset_steps[preset][0]
    tree = {"params": state.params}
    for name, path in CHECKED.items():
        array = leaf(tree, *path)
        assert array.sharding.spec == EXPECTED[preset][name], (preset, name)
        assert array.sharding.mesh.shape == {"data": 1, "fsdp": 4, "model": 2}
    # Adam's moments follow their parameters.
    moments = [
        x
        for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
        if "'block0']['mlp']['fc1']['kernel']" in jax.tree_util.keystr(p)
    ]
    assert len(moments) == 2
    assert all(m.sharding.spec == EXPECTED[preset]["fc1"] for m in moments)
    mesh = state.step.sharding.mesh
    assert sharding.batch_sharding(mesh, 5).spec == P(("data", "fsdp"), None, None, None, None)


@pytest.mark.parametrize("preset", ["fsdp", "tensor", "fsdp_tensor"])
def test_every_preset_computes_the_same_train_step(preset, preset_steps):
    _, reference, ref_metrics = preset_steps["data"]
    _, after, metrics = preset_steps[preset]
    np.testing.assert_allclose(metrics["train/loss"], ref_metrics["train/loss"], rtol=1e-5)
    assert metrics["train/grad_norm"] > 0
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=preset)


def test_dimensions_that_do_not_divide_the_mesh_stay_whole(caplog):
    # 3 heads under a 2-way model axis; 6 R3D stem channels under a 4-way fsdp axis.
    mesh, rules = mesh_of(fsdp=4, model=2, rules="fsdp_tensor")
    vit = {"name": "vit", "width": 96, "depth": 1, "heads": 3, "patch": (2, 8, 8)}
    objective, tx, _ = supervised(model=vit)
    caplog.set_level(logging.INFO)
    state, _ = state_on(mesh, rules, objective, tx)
    logged = "\n".join(m for m in caplog.messages if "keep a dimension" in m)
    assert "['query']['kernel'] (96, 3, 32) P('fsdp', 'model') -> P('fsdp',)" in logged
    assert "fc1" not in logged  # nothing to report where everything divides
    assert leaf(
        state.params, "encoder", "block0", "attention", "query", "kernel"
    ).sharding.spec == P("fsdp")  # heads (3) replicated, embed (96) still split
    assert leaf(state.params, "encoder", "block0", "mlp", "fc1", "kernel").sharding.spec == P(
        "fsdp", "model"
    )
    # The CVRL R3D layout from its abstract parameters only (compiling its init is slow on CPU).
    objective, _, _ = supervised(model={"name": "cvrl_r3d", "depth": 18, "width": 0.094})
    abstract, _ = jax.eval_shape(objective.init, jax.random.key(0), clips(2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = sharding.logical_shardings(abstract, mesh, rules)
    stem = leaf(abstract, "encoder", "stem", "kernel").value
    assert stem.shape[-1] == 6 and leaf(shardings, "encoder", "stem", "kernel").spec == P()
    res5 = leaf(abstract, "encoder", "res5_block0", "conv1", "kernel").value
    assert res5.shape[-1] == 48
    assert leaf(shardings, "encoder", "res5_block0", "conv1", "kernel").spec == P(
        None, None, None, None, "fsdp"
    )


def test_fit_spec_keeps_the_longest_dividing_prefix():
    mesh, _ = mesh_of(data=2, fsdp=4)
    assert sharding.fit_spec((12, 6), P(("data", "fsdp"), "fsdp"), mesh) == P("data")
    whole = P(("data", "fsdp"), "fsdp")
    assert sharding.fit_spec((16, 8), whole, mesh) == whole
    assert sharding.fit_spec((3,), P("fsdp"), mesh) == P()
    assert sharding.fit_spec((), P(), mesh) == P()


# ---------------------------------------------------------------------------- rule coverage


def runlocal_models():
    """(name, objective, one real batch) for every config's :runlocal variant (and TokenFuser)."""
    out = []
    for path in RECIPES:
        if "salt_stage2" in path:  # needs a stage-1 teacher run; same modules as vjepa
            continue
        args = ["runlocal"] + (["runlocal,fuser"] if "tokenlearner" in path else [])
        for arg in args:
            s = setup_lib.setup(config_lib.load_file(path, arg))
            clip = s.train_data.clip
            data = s.train_data.iterator(
                seed=0,
                process_index=0,
                process_count=1,
                extra_ops=s.objective.batch_ops(clip),
            )
            device, _ = pipeline.split_host_keys(next(iter(data)))
            batch = {k: np.asarray(v[:2]) for k, v in device.items()}
            out.append((f"{os.path.basename(path)}:{arg}", s.objective, batch))
    return out


def test_rules_only_name_known_axes():
    for preset, rules in sharding.RULES.items():
        for logical, mesh_axes in rules:
            assert logical in sharding.PARAM_AXES + sharding.ACTIVATION_AXES, (preset, logical)
            axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
            assert set(axes) <= set(sharding.AXES), (preset, mesh_axes)


def test_every_parameter_and_activation_of_every_model_is_covered(monkeypatch):
    """Each parameter carries known logical names; under FSDP on 8 devices every parameter of
    1024+ elements is split; activations are constrained with known names only."""
    seen_activation_names = set()
    original = layers.constrain

    def recording(x, axes):
        seen_activation_names.update(a for a in axes if a is not None)
        return original(x, axes)

    monkeypatch.setattr(layers, "constrain", recording)
    mesh, rules = mesh_of(fsdp=8, rules="fsdp")
    models = runlocal_models()
    pooler = heads.AttentivePooler(num_queries=1, heads=2)
    pooler_params = jax.eval_shape(
        lambda r: pooler.init(r, np.zeros((2, 8, 64), np.float32)), jax.random.key(0)
    )
    abstract_trees = [
        (n, jax.eval_shape(lambda r, o=o, b=b: o.init(r, b), jax.random.key(0)))
        for n, o, b in models
    ]
    abstract_trees.append(("attentive_pooler", (pooler_params["params"], {})))
    assert len(abstract_trees) >= 7
    for name, (params, extra) in abstract_trees:
        boxes = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert boxes and all(isinstance(b, nn.Partitioned) for b in boxes), name
        for box in boxes:
            assert set(box.names) <= set(sharding.PARAM_AXES) | {None}, (name, box.names)
        unboxed_extra = {
            jax.tree_util.keystr(p).split("]")[0]
            for p, x in jax.tree_util.tree_flatten_with_path(
                extra, is_leaf=lambda x: isinstance(x, nn.Partitioned)
            )[0]
            if not isinstance(x, nn.Partitioned)
        }
        assert unboxed_extra <= {"['batch_stats'"}, (name, unboxed_extra)  # EMA/teacher boxed
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            shardings = sharding.logical_shardings(params, mesh, rules)
        shapes = [b.value.shape for b in boxes]
        for shape, s in zip(shapes, jax.tree.leaves(shardings)):
            if np.prod(shape) >= 1024:
                assert "fsdp" in jax.tree.leaves(tuple(s.spec)), (name, shape, s.spec)
    assert seen_activation_names <= set(sharding.ACTIVATION_AXES)
    assert {"batch", "length", "act_embed", "act_heads", "act_mlp"} <= seen_activation_names


# ------------------------------------------------------------------------------------- memory


def per_device_state_bytes(state) -> int:
    counts = sharding.bytes_per_device({"params": state.params, "opt": state.opt_state})
    return max(counts.values())


def test_fsdp_holds_an_eighth_of_parameters_and_optimizer_state_per_device():
    vit = {"name": "vit", "width": 128, "depth": 1, "heads": 4, "patch": (2, 8, 8)}
    objective, tx, _ = supervised(model=vit, opt="adamw")
    replicated = per_device_state_bytes(state_on(*mesh_of(data=8), objective, tx)[0])
    fsdp = per_device_state_bytes(state_on(*mesh_of(fsdp=8, rules="fsdp"), objective, tx)[0])
    ratio = fsdp / replicated
    assert replicated > 2e6  # params + two Adam moments of a ~0.25M-parameter model
    assert ratio <= 1 / 8 + 0.05, f"FSDP holds {ratio:.3f} of the replicated bytes per device"


# ---------------------------------------------------------------------------- re-sharding restore


def test_checkpoint_saved_on_8_devices_restores_onto_4_with_another_layout(tmp_path):
    objective, tx, _ = supervised(opt="adamw")
    mesh8, rules8 = mesh_of(fsdp=8, rules="fsdp")
    saved, _ = state_on(mesh8, rules8, objective, tx, seed=3)
    mngr = ckpt_lib.manager(str(tmp_path), ckpt_lib.CheckpointConfig(async_save=False))
    iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt_lib.save(mngr, 1, saved, iterator, {"config": {}, "init_batch": {}}, force=True)
    mngr.wait_until_finished()

    mesh4, rules4 = mesh_of(data=2, model=2, rules="tensor", devices=jax.devices()[:4])
    fresh, shardings = state_on(mesh4, rules4, objective, tx, seed=4)
    restored = ckpt_lib.restore_state(mngr, 1, abstract_state(shardings, fresh))
    mngr.close()
    fc1 = leaf(restored.params, "encoder", "block0", "mlp", "fc1", "kernel")
    assert fc1.sharding.spec == P(None, "model") and len(fc1.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        assert a.sharding.mesh.devices.size == 4
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------- accumulation and remat


def test_four_micro_batches_equal_one_four_times_larger_step():
    """A per-example loss: accumulation is exact. (Contrastive losses and batch norm would see
    4x smaller batches instead.)"""
    objective, tx, schedule = supervised()
    batch, init = clips(32, seed=2), clips(2)
    mesh, rules = mesh_of(data=8)
    state, _ = init_state(objective, tx, init, mesh, rules, 0)
    results = []
    for accum in (1, 4):
        step = make_train_step(objective, tx, schedule, 0, accum, False)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            after, metrics = jax.jit(step)(state, sharding.to_global(batch, mesh))
        results.append(jax.device_get((after.params, metrics)))
    (big, big_m), (micro, micro_m) = results
    np.testing.assert_allclose(micro_m["train/loss"], big_m["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(micro_m["train/grad_norm"], big_m["train/grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(micro), jax.tree.leaves(big)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    start = jax.device_get(state.params)
    moved = sum(
        float(np.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(big), jax.tree.leaves(start))
    )
    assert moved > 0  # the step did update the parameters


def test_remat_policies_give_the_same_loss_and_gradients():
    batch = clips(4, seed=5)

    def loss_and_grads(**remat):
        objective, _, _ = supervised(model={**TINY_VIT, **remat})
        params, extra = jax.jit(objective.init)(jax.random.key(0), clips(2))
        loss = lambda p: objective.loss(p, extra, batch, jax.random.key(1), True)[0]
        return jax.jit(jax.value_and_grad(loss))(nn.meta.unbox(params))

    loss, grads = loss_and_grads(remat=False)
    for policy in ("full", "dots_with_no_batch_dims_saveable"):
        remat_loss, remat_grads = loss_and_grads(remat=True, remat_policy=policy)
        np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=policy)


# --------------------------------------------------------------------------- mesh and batch errors


def test_a_batch_that_does_not_divide_the_data_parallel_size_is_an_error():
    mesh, _ = mesh_of(data=2, fsdp=4)
    assert sharding.batch_size_per_process(16, mesh) == 16
    with pytest.raises(
        sharding.MeshError,
        match=r"batch_size=12 must be a multiple of the "
        r"data-parallel size 8 \(mesh data=2 x fsdp=4\)",
    ):
        sharding.batch_size_per_process(12, mesh)
    with pytest.raises(
        sharding.MeshError,
        match=r"grad_accum_steps=4: each micro-batch of "
        r"config.data.batch_size=16 .* multiple of 32",
    ):
        sharding.batch_size_per_process(16, mesh, grad_accum_steps=4)


def test_mesh_sizes_are_checked():
    with pytest.raises(sharding.MeshError, match="needs 6 devices, there are 8"):
        mesh_of(data=3, model=2)
    with pytest.raises(sharding.MeshError, match="at most one -1"):
        mesh_of(data=-1, fsdp=-1)
    with pytest.raises(sharding.MeshError, match="dcn_data=0: must be >= 1"):
        sharding.make_mesh(sharding.MeshConfig(dcn_data=0))


def test_dcn_groups_are_blocks_of_consecutive_processes():
    devices = [
        types.SimpleNamespace(id=10 * p + i, process_index=p) for p in range(4) for i in range(2)
    ]
    groups = sharding.process_groups(devices[::-1], 2)
    assert [[d.id for d in g] for g in groups] == [[0, 1, 10, 11], [20, 21, 30, 31]]
    with pytest.raises(sharding.MeshError, match="dcn_data=3 must divide the number of processes"):
        sharding.process_groups(devices, 3)
    with pytest.raises(sharding.MeshError, match="number of processes 1"):
        sharding.make_mesh(sharding.MeshConfig(dcn_data=2))


def test_config_section_lists_every_mesh_key():
    section = config_common.section(sharding.MeshConfig, fsdp=8, rules="fsdp")
    assert set(section) == {"data", "fsdp", "model", "rules", "dcn_data"}
    cfg = config_lib.instantiate(sharding.MeshConfig, section.to_dict(), "config.mesh")
    assert cfg == sharding.MeshConfig(fsdp=8, rules="fsdp")
    assert cfg.axis_rules() == tuple(sharding.RULES["fsdp"])
