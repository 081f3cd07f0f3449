"""Image ViT (Hugging Face ViTModel) -> vrl video ViT, proven against transformers.

A tiny random HF ViT is saved with save_pretrained and converted with `--format=hf_vit`'s
reader. For a clip of T identical frames, both inflations make every tubelet see the image's
patch, and T/pt identical copies of each token leave attention unchanged, so vrl's tokens
equal, at every time slot, the HF encoder's patch tokens run without the class token (HF's own
modules: patch embedding + position table rows 1.. -> encoder -> final LayerNorm). With the
class token HF's patch tokens differ (it takes part in attention); vrl's ViT has none.
"""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vrl import weights  # noqa: E402
from vrl.convert import ConversionError, Options, common, image_vit  # noqa: E402
from vrl.models import layers, vit  # noqa: E402
from vrl.objectives import base  # noqa: E402

SHAPE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=8,
    image_size=32,
)
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def save_hf(folder, cls=None, stats=None, **config):
    """A random HF ViT (weights drawn wide so every bias, norm and table matters)."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(**{**SHAPE, **config})
    model = (cls or transformers.ViTModel)(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
    if stats is not None:
        pp = {"image_mean": stats[0], "image_std": stats[1], "do_normalize": True}
        (folder / "preprocessor_config.json").write_text(json.dumps(pp))
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_vit")
    return save_hf(folder), folder


def hf_patch_tokens(model, image: np.ndarray) -> np.ndarray:
    """HF's modules on the class-token-free sequence: [N, D]."""
    pixels = torch.from_numpy((image - 0.5) / 0.5).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        x = model.embeddings.patch_embeddings(pixels)
        x = x + model.embeddings.position_embeddings[:, 1:]
        # transformers 5 names the blocks `layers` (files keep `encoder.layer.N`), 4 `encoder.layer`
        blocks = model.layers if hasattr(model, "layers") else model.encoder.layer
        for block in blocks:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x
        x = model.layernorm(x)
    return x[0].numpy()


def vrl_tokens(converted, video: np.ndarray) -> np.ndarray:
    kwargs = {k: v for k, v in converted.model.items() if k != "name"}
    module = vit.ViT(**kwargs)
    x = layers.to_model_input(video[None], module)
    return np.asarray(module.apply({"params": converted.params["encoder"]}, x, train=False)[0])


@pytest.mark.parametrize("inflation", ["average", "central_frame"])
def test_identical_frames_give_the_image_models_patch_tokens(hf, inflation):
    model, folder = hf
    converted, tensors = image_vit.from_hf(str(folder), Options(frames=4), inflation=inflation)
    assert tensors.unused() == []
    image = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
    ref = hf_patch_tokens(model, image)  # [16, D]
    ours = vrl_tokens(converted, np.repeat(image[None], 4, axis=0))  # [2 * 16, D]
    assert ours.shape == (2 * 16, 32)
    for t in range(2):
        np.testing.assert_allclose(ours[t * 16 : (t + 1) * 16], ref, atol=2e-5, rtol=0)
    with torch.no_grad():  # with its class token, HF's patch tokens are another function
        pixels = torch.from_numpy((image - 0.5) / 0.5).permute(2, 0, 1)[None].float()
        with_cls = model(pixels).last_hidden_state[0, 1:].numpy()
    assert np.abs(with_cls - ref).max() > 1e-3


def test_kernel_inflation_and_tiled_position_table(tmp_path):
    model = save_hf(tmp_path, stats=IMAGENET)  # vrl's own statistics: nothing to fold
    weight = model.embeddings.patch_embeddings.projection.weight.detach().numpy()
    kernel_2d = weight.transpose(2, 3, 1, 0)  # [p, p, 3, D]
    table = model.embeddings.position_embeddings.detach().numpy()[0, 1:].reshape(4, 4, 32)
    for inflation, tubelet in (("central_frame", 2), ("central_frame", 3), ("average", 2)):
        arch = f"inflation={inflation},tubelet={tubelet}"
        converted, _ = image_vit.from_hf(str(tmp_path), Options(frames=6, arch=arch))
        embed = converted.params["encoder"]["embed"]
        kernel = embed["projection"]["kernel"].reshape(tubelet, 8, 8, 3, 32)
        for slot in range(tubelet):
            if inflation == "average":
                want = kernel_2d / tubelet
            else:
                want = kernel_2d if slot == tubelet // 2 else np.zeros_like(kernel_2d)
            np.testing.assert_array_equal(kernel[slot], want)
        np.testing.assert_array_equal(
            embed["projection"]["bias"], model.embeddings.patch_embeddings.projection.bias.detach()
        )
        posemb = embed["posemb"]
        assert posemb.shape == (6 // tubelet, 4, 4, 32)
        for t in range(posemb.shape[0]):
            np.testing.assert_array_equal(posemb[t], table)
        assert converted.model["posemb"] == "learned"
        assert converted.model["patch"] == (tubelet, 8, 8)


def test_classifier_checkpoint_with_tokenlearner_loads_as_init_from(tmp_path):
    """ViTForImageClassification (vit. prefix, head dropped) with the recipe's TokenLearner:
    a supervised TokenLearner run loads it strictly through `init_from`."""
    src, workdir = tmp_path / "hf", str(tmp_path / "run")
    save_hf(src, cls=transformers.ViTForImageClassification, num_labels=5)
    arch = "tokenlearner_layer=1,tokenlearner_tokens=4"
    converted, tensors = image_vit.from_hf(str(src), Options(frames=4, arch=arch))
    assert sorted(converted.params["encoder"]["tokenlearner"]) == ["fc1", "fc2", "norm"]
    config = common.write_run(converted, tensors, workdir, note="test")
    assert config["model"]["tokenlearner_layer"] == 1

    finetune = base.build({**config, "objective": {
        "name": "supervised", "num_classes": 3, "init_from": workdir}})  # fmt: skip
    batch = common.init_batch(finetune, (4, 32, 32))
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(finetune.init(r, batch)), jax.random.key(1))
    params, extra = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # what init makes
    params, _ = weights.initial_variables(finetune, params, extra)
    for a, b in zip(
        jax.tree.leaves(params["encoder"]), jax.tree.leaves(converted.params["encoder"])
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "config,options,overrides,names",
    [
        ({"model_type": "videomae"}, {}, {}, "model_type"),
        ({"hidden_act": "relu"}, {}, {}, "hidden_act"),
        ({"qkv_bias": False}, {}, {}, "qkv_bias"),
        ({"image_size": 30}, {}, {}, "image_size"),
        ({}, {"image_size": 64}, {}, "--image_size"),
        ({}, {"frames": 5}, {}, "--frames"),
        ({}, {"arch": "inflation=sideways"}, {}, "inflation"),
        ({}, {"arch": "depth=3"}, {}, "--arch"),
        ({}, {"arch": "tokenlearner_layer=9"}, {}, "tokenlearner_layer"),
        ({"image_size": 40}, {}, {}, "position_embeddings"),
    ],
)
def test_bad_inputs_give_one_line_errors(hf, tmp_path, config, options, overrides, names):
    _, folder = hf
    src = tmp_path / "hf"
    src.mkdir()
    for f in folder.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, **config}))
    with pytest.raises(ConversionError) as e:
        image_vit.from_hf(str(src), Options(**options), **overrides)
    assert "\n" not in str(e.value) and names in str(e.value)
