"""TokenLearner v1.1 / v1.0 and TokenFuser: shapes, attention maps, per-frame independence."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from vrl.models.tokenlearner import TokenFuser, TokenLearnerV10, TokenLearnerV11

# "rbg" keys: fast to compile on CPU; the tests only need determinism.
KEY = jax.random.key(0, impl="rbg")


def features(seed: int, shape) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape)


def run(module, x):
    """(tokens, attention maps) from one jitted init + apply."""

    @jax.jit
    def forward(x):
        variables = module.init(KEY, x)
        tokens, state = module.apply(variables, x, mutable=["intermediates"])
        (maps,) = state["intermediates"]["attention_maps"]
        return tokens, maps

    return forward(x)


@pytest.mark.parametrize("learner", [TokenLearnerV11, TokenLearnerV10], ids=["v1.1", "v1.0"])
@pytest.mark.parametrize(
    "shape,lead", [((2, 4, 5, 16), (2,)), ((2, 3, 4, 5, 16), (2, 3))], ids=["image", "video"]
)
def test_tokenlearner_shapes_and_maps(learner, shape, lead):
    tokens, maps = run(learner(num_tokens=6), features(0, shape))
    assert tokens.shape == (*lead, 6, 16)
    assert maps.shape == (*lead, 6, 4, 5)
    assert np.isfinite(tokens).all()
    if learner is TokenLearnerV11:
        # Softmax over space: every learned token is a convex combination of the positions.
        np.testing.assert_allclose(maps.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
    else:
        assert ((maps > 0) & (maps < 1)).all()  # sigmoid maps


def test_tokenlearner_v11_tokens_are_the_map_weighted_sums():
    x = features(0, (2, 4, 5, 16))
    tokens, maps = run(TokenLearnerV11(num_tokens=3), x)
    expected = np.einsum("bshw,bhwc->bsc", np.asarray(maps), np.asarray(x))
    np.testing.assert_allclose(tokens, expected, rtol=1e-4, atol=1e-5)


def test_tokenlearner_video_is_applied_per_frame():
    x = features(0, (1, 3, 4, 4, 8))
    module = TokenLearnerV11(num_tokens=2)
    variables = jax.jit(module.init)(KEY, x)
    apply = jax.jit(module.apply)
    changed = x.at[:, 1].add(features(1, (1, 4, 4, 8)))
    before, after = apply(variables, x), apply(variables, changed)
    np.testing.assert_allclose(before[:, [0, 2]], after[:, [0, 2]], rtol=1e-6)
    assert not np.allclose(before[:, 1], after[:, 1])


def test_token_fuser_maps_tokens_back_to_every_position():
    original = features(0, (2, 3, 4, 5, 16))  # [B, T, H, W, C]
    tokens = features(1, (2, 3, 6, 16))  # [B, T, S, C]
    fuser = TokenFuser(bottleneck=8)
    variables = jax.jit(fuser.init)(KEY, tokens, original)
    apply = jax.jit(fuser.apply)
    # The token-mixing Dense starts at zero: a new fuser adds nothing to the residual stream.
    np.testing.assert_allclose(apply(variables, tokens, original), 0.0, atol=1e-6)

    params = nn.unbox(variables["params"])
    mix = params["token_mix"]["kernel"]
    params["token_mix"]["kernel"] = jax.random.normal(jax.random.key(2), mix.shape)
    fused = apply({"params": params}, tokens, original)
    assert fused.shape == original.shape and np.isfinite(fused).all()
    other = apply({"params": params}, features(3, tokens.shape), original)
    assert not np.allclose(fused, other)
    with pytest.raises(ValueError, match="do not match"):
        fuser.apply(variables, tokens[:, :2], original)
