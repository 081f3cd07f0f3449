"""The `mixture` source (vrl/data/mixture.py): several sources read as one, V-JEPA's VideoMix2M.

Mixing frequencies, per-seed order, resuming, process slicing, labels across datasets, one-line
config errors, and the `:runlocal,data=videomix2m` recipe feeding batches.
"""

import collections
import os

import numpy as np
import pytest
import videos

from vrl import config as config_lib
from vrl import setup as setup_lib
from vrl.config import __main__ as resolve_cli
from vrl.data import mixture, pipeline, prepare

ROOT = os.path.join(os.path.dirname(__file__), "..")
PP = "uniform_clip(frames=4, stride=2)|random_resized_crop(size=32)|flip(p=0.5)"


def synthetic(num_videos: int, seed: int = 0, **extra) -> dict:
    return {"name": "synthetic", "num_videos": num_videos, "seed": seed, "frames": 8, **extra}


def mix(*parts: dict, weights=None) -> dict:
    source = {"name": "mixture", "sources": tuple(parts)}
    if weights is not None:
        source["weights"] = weights
    return source


def data_config(source: dict, **kwargs) -> pipeline.DataConfig:
    fields = dict(source=source, train_pp=PP, test_pp=PP, batch_size=8, prefetch=0)
    return pipeline.DataConfig(**{**fields, **kwargs})


def iterator(cfg, seed=0, index=0, processes=1):
    data = pipeline.train_data(cfg)
    return iter(data.iterator(seed=seed, process_index=index, process_count=processes))


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def part_counts(source, order, count) -> np.ndarray:
    parts = [source.part_of(order[i])[0] for i in range(count)]
    return np.bincount(parts, minlength=len(source.parts))


# ------------------------------------------------------------------ how often each part comes


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.6, 0.3, 0.1), (5.0, 1.0, 2.0)])
def test_weighted_mixture_draws_each_part_as_often_as_its_weight(weights):
    # Parts of very different sizes: the weights, not the sizes, set the shares.
    cfg = data_config(mix(synthetic(200), synthetic(30, 1), synthetic(7, 2), weights=weights))
    source = pipeline.make_source(cfg, "train")
    assert source.parts == [(0, 200), (200, 230), (230, 237)]
    order = pipeline.record_order(source, seed=3)
    count = 20_000
    shares = part_counts(source, order, count) / count
    np.testing.assert_allclose(shares, np.asarray(weights) / sum(weights), atol=0.02)
    # ... and within every stretch of a few hundred, not only on average.
    for start in (0, 7_777):
        window = [source.part_of(order[i])[0] for i in range(start, start + 500)]
        got = np.bincount(window, minlength=3) / 500
        np.testing.assert_allclose(got, np.asarray(weights) / sum(weights), atol=0.03)


def test_weighted_parts_cycle_through_all_their_videos_in_a_fresh_order():
    cfg = data_config(mix(synthetic(10), synthetic(4, 1), weights=(1.0, 1.0)))
    source = pipeline.make_source(cfg, "train")
    order = pipeline.record_order(source, seed=0)
    small = [i for i in (order[j] for j in range(40)) if i >= 10][:12]  # part 1: three passes
    passes = [small[0:4], small[4:8], small[8:12]]
    assert all(sorted(p) == [10, 11, 12, 13] for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # reshuffled between passes


def test_unweighted_mixture_is_one_shuffle_of_all_videos_as_the_release():
    # facebookresearch/jepa `VideoDataset` + `DistributedSampler` (no `datasets_weights`):
    # each video of each dataset once per epoch, so the parts come in proportion to size.
    cfg = data_config(mix(synthetic(30), synthetic(10, 1)))
    source = pipeline.make_source(cfg, "train")
    order = pipeline.record_order(source, seed=0)
    for epoch in range(3):
        seen = [order[i] for i in range(epoch * 40, (epoch + 1) * 40)]
        assert sorted(seen) == list(range(40))
    assert part_counts(source, order, 40).tolist() == [30, 10]
    assert [order[i] for i in range(40)] != list(range(40))


def test_same_seed_same_order_other_seed_other_order():
    for weights in (None, (2.0, 1.0)):
        cfg = data_config(mix(synthetic(30), synthetic(10, 1), weights=weights))
        source = pipeline.make_source(cfg, "train")
        rebuilt = pipeline.make_source(cfg, "train")
        first, again, other = (
            [pipeline.record_order(src, seed)[i] for i in range(100)]
            for src, seed in ((source, 5), (rebuilt, 5), (source, 6))
        )
        assert first == again and first != other
    cfg = data_config(mix(synthetic(12), synthetic(12, 1), weights=(1.0, 1.0)))
    a, b = (next(iterator(cfg, seed=1)) for _ in range(2))
    assert_same(a, b)


# ------------------------------------------------------------------ resuming, processes


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)])
def test_a_restored_iterator_continues_exactly_where_it_was_saved(weights):
    # (Worker processes, which pickle the mixture, are covered for every source by
    # test_pipeline.py; a worker start costs ~20 s here.)
    cfg = data_config(mix(synthetic(20), synthetic(6, 1, size=48), weights=weights))
    straight = iterator(cfg, seed=2)
    expected = [next(straight) for _ in range(5)]
    it = iterator(cfg, seed=2)
    for _ in range(2):
        next(it)
    state = it.get_state()
    resumed = iterator(cfg, seed=2)
    resumed.set_state(state)
    for want in expected[2:]:
        assert_same(next(resumed), want)


def test_two_processes_read_the_halves_of_one_process_batches():
    cfg = data_config(mix(synthetic(20), synthetic(6, 1), weights=(1.0, 1.0)))
    (whole,) = [next(iterator(cfg))]
    halves = [next(iterator(cfg, index=i, processes=2)) for i in range(2)]
    for key in whole:
        np.testing.assert_array_equal(
            whole[key], np.concatenate([h[key] for h in halves]), err_msg=key
        )


# ------------------------------------------------------------------ records and labels


def test_labels_ids_and_decoding_across_different_datasets(tmp_path):
    root = tmp_path / "folder"
    for rel in ("cat/a.mp4", "dog/b.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        videos.make_video(root / rel, "h264", frames=12, size=(64, 48), fps=30)
    cfg = data_config(mix(synthetic(3), {"name": "video_folder", "root": str(root)}))
    source = pipeline.make_source(cfg, "train")
    # Class 1 of the folder is not class 1 of the synthetic motions: only `source` is kept.
    assert source.label_names == {"source": ["synthetic", "video_folder"]}
    assert source.names == ["synthetic", "video_folder"]
    record = source[4]
    assert record["id"] == "video_folder:dog/b.mp4" and record["labels"] == {"source": 1}
    frames = source.decode(record, np.array([[0, 5]]))
    assert frames.shape == (1, 2, 48, 64, 3)
    assert [videos.read_index(f) for f in frames[0]] == [0, 5]
    batch = next(iterator(data_config(cfg.source, batch_size=5)))
    assert sorted(batch["label/source"].tolist()) == [0, 0, 0, 1, 1]
    assert not any(k in batch for k in ("label/label", "label/motion"))


def test_a_mixture_of_prepared_datasets_decodes_each_through_its_own_store(tmp_path):
    # As VideoMix2M: labeled datasets (Kinetics, SSv2) and an unlabeled one (HowTo100M).
    root = tmp_path / "videos"
    names = {"k": ["cat/a.mp4", "dog/b.mp4"], "h": ["x/c.mp4", "x/d.mp4"]}
    for rel in names["k"] + names["h"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        videos.make_video(root / rel, "h264", frames=12, size=(64, 48), fps=30)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "train.csv").write_text(
        "path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in names["k"])
    )
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "train.csv").write_text("path\n" + "".join(f"{p}\n" for p in names["h"]))
    data_dir = str(tmp_path / "tfds")
    for part, name, store in (("k", "kin", "video"), ("h", "how", "frames")):
        prepare.prepare(
            str(root), str(tmp_path / part / "{split}.csv"), name, ["train"], data_dir,
            options=prepare.Options(store=store), workers=1,
        )  # fmt: skip
    parts = [{"name": "tfds", "dataset": n, "data_dir": data_dir} for n in ("kin", "how")]
    cfg = data_config(mix(*parts), train_pp="uniform_clip(frames=4, stride=2)", batch_size=4)
    source = pipeline.make_source(cfg, "train")
    assert source.label_names == {"source": ["kin", "how"]}
    (batch,) = [next(iterator(cfg))]  # one epoch: each video once
    assert sorted(map(str, batch["id"])) == sorted(
        [f"kin:{p}" for p in names["k"]] + [f"how:{p}" for p in names["h"]]
    )
    for vid, video, start in zip(batch["id"], batch["video"], batch["temporal/start"]):
        shown = [videos.read_index(f) for f in video]
        assert shown == [int(start[0]) + 2 * i for i in range(4)], vid


def test_label_sets_every_part_shares_are_kept():
    cfg = data_config(mix(synthetic(8), synthetic(8, 1)))
    source = pipeline.make_source(cfg, "train")
    assert set(source.label_names) == {"motion", "appearance", "source"}
    assert source.label_names["source"] == ["synthetic#0", "synthetic#1"]
    assert source[9]["labels"]["source"] == 1 and source[9]["id"].startswith("synthetic#1:")


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize(
    "source, message",
    [
        (mix(), "config.data.source.sources: empty mixture"),
        (
            mix(synthetic(4), synthetic(4), weights=(1.0,)),
            "config.data.source.weights: 1 weights for 2 sources",
        ),
        (
            mix(synthetic(4), synthetic(4), weights=(1.0, -0.5)),
            "config.data.source.weights: -0.5 is not allowed; allowed: finite numbers > 0",
        ),
        (
            mix(synthetic(4), synthetic(4), weights=(0.0, 1.0)),
            "config.data.source.weights: 0.0 is not allowed",
        ),
        (
            mix(synthetic(4), synthetic(4), weights=(float("nan"), 1.0)),
            "config.data.source.weights: nan is not allowed",
        ),
        (
            mix(synthetic(4), {"name": "synthetic", "num_vids": 3}),
            "config.data.source.sources[1].num_vids: unknown key; allowed:",
        ),
        (
            mix(synthetic(4), {"name": "youtube"}),
            "config.data.source.sources[1].name: unknown source 'youtube'; allowed:",
        ),
        (
            mix({"name": "tfds", "dataset": "ssv2", "data_dir": "/nonexistent/tfds"}),
            "config.data.source.sources[0] (ssv2, split 'train'): ",
        ),
        (
            mix(synthetic(4), {**synthetic(4), "split": "test"}),
            "config.data.source.sources[1].split: every part reads the mixture's split",
        ),
        (mix(mix(synthetic(4))), "config.data.source.sources[0].name: a mixture in a mixture"),
        ({"name": "mixture", "sources": 3}, "config.data.source.sources: expected a tuple"),
        (
            {"name": "mixture", "sources": (synthetic(4),), "weigths": (1.0,)},
            "config.data.source.weigths: unknown key; allowed: sources, split, weights",
        ),
    ],
)
def test_bad_mixtures_fail_with_one_line_naming_the_key(source, message):
    with pytest.raises(config_lib.ConfigError) as error:
        pipeline.make_source(data_config(source), "train")
    text = str(error.value)
    assert text.startswith(message), text
    assert "\n" not in text


# ------------------------------------------------------------------ the recipe


def test_vjepa_recipe_videomix2m_reads_the_three_prepared_datasets_in_proportion_to_size():
    path = os.path.join(ROOT, "configs", "vjepa_vitl_k710.py")
    c = resolve_cli.resolve(config_lib.load_file(path, "data=videomix2m"))
    source = c["data"]["source"]
    assert source["name"] == "mixture" and source["weights"] is None
    assert [s["dataset"] for s in source["sources"]] == ["kinetics710", "ssv2", "howto100m"]
    assert all(s["name"] == "tfds" for s in source["sources"])
    default = resolve_cli.resolve(config_lib.load_file(path, "size=L"))
    assert default["data"]["source"]["dataset"] == "kinetics710"
    assert {k: v for k, v in c["data"].items() if k != "source"} == {
        k: v for k, v in default["data"].items() if k != "source"
    }
    with pytest.raises(config_lib.ConfigError, match="config arg data='k400': not allowed"):
        config_lib.load_file(path, "data=k400")


def test_vjepa_runlocal_videomix2m_feeds_masked_batches_from_both_parts():
    path = os.path.join(ROOT, "configs", "vjepa_vitl_k710.py")
    c = config_lib.load_file(path, "runlocal,data=videomix2m")
    s = setup_lib.setup(c)
    assert isinstance(s.train_data.source, mixture.Mixture)
    assert s.train_data.num_examples == 32 and s.train_data.source.parts == [(0, 24), (24, 32)]
    it = iter(
        s.train_data.iterator(
            seed=0,
            process_index=0,
            process_count=1,
            extra_ops=s.objective.batch_ops(s.train_data.clip),
        )
    )
    counts = collections.Counter()
    for _ in range(4):  # one epoch: every video once
        batch = next(it)
        assert batch["video"].shape == (8, 8, 64, 64, 3)
        counts.update(batch["label/source"].tolist())
    assert counts == {0: 24, 1: 8}
