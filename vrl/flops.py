"""Analytic training FLOPs of vrl's models and objectives, for MFU and speedup goals.

Model FLOPs are analytic, counted as 2 x multiply-accumulates of the matrix products and
convolutions (norms, softmax and elementwise work are ignored, as in the MFU literature):

  ViT block on n tokens, width D, MLP width M:  2n(4D^2 + 2DM) + 4n^2 D
  tubelet embedding of n tokens:                 2n (pt ph pw 3) D
  TokenLearner v1.1 on a frame of P positions:   2P(D B + B S) + 2 S P D   (bottleneck B, S tokens)
  TokenLearner v1.0:                             2P 9 (D S + 3 S^2) + 2 S P D
  TokenFuser:                                    2 D S^2 + 2P(D B + B S) + 2 P S D
  convolution:                                   2 kt kh kw C_in C_out T' H' W'
  training = 3 x forward for trained parts (the backward pass is twice the forward),
             1 x forward for frozen parts (V-JEPA's EMA target, SALT's teacher)

Per objective: supervised = 3 ViT(N); VideoMAE = 3 [embed(N) + ViT blocks(K) + decoder(N)];
V-JEPA = sum over mask types 3 [embed(N) + blocks(K_m) + predictor(N)] + 1 ViT(N) target;
SALT = the same with the teacher's ViT(N) as target; CVRL = 3 R3D(2 views) (+ the MLP head).
"""

import math

from vrl.models import r3d, vit
from vrl.objectives import jepa


def vit_block_flops(n: float, width: int, mlp: int) -> float:
    return 2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width


def vit_flops(encoder: vit.ViT, n_total: int, n_kept: int) -> float:
    """Forward FLOPs of the ViT: embedding of every tubelet, blocks on the kept ones."""
    width, depth, _, mlp = encoder.dims
    pt, ph, pw = encoder.patch
    return 2 * n_total * pt * ph * pw * 3 * width + depth * vit_block_flops(n_kept, width, mlp)


def tokenlearner_flops(
    version: str, positions: int, width: int, tokens: int, bottleneck: int = 64
) -> float:
    """Forward FLOPs of one TokenLearner on a frame of `positions` tokens."""
    if version == "1.1":
        maps = 2 * positions * (width * bottleneck + bottleneck * tokens)
    else:
        maps = 2 * positions * 9 * (width * tokens + 3 * tokens * tokens)
    return maps + 2 * tokens * positions * width


def tokenfuser_flops(positions: int, width: int, tokens: int, bottleneck=64) -> float:
    """Forward FLOPs of one TokenFuser back onto a frame of `positions` tokens."""
    mix = 2 * width * tokens * tokens
    weights = 2 * positions * (width * bottleneck + bottleneck * tokens)
    return mix + weights + 2 * positions * tokens * width


def tokenlearner_vit_flops(encoder: vit.ViT, grid: tuple[int, int, int]) -> float:
    """Forward FLOPs of a ViT with TokenLearner (and TokenFuser) inserted at its layer."""
    width, depth, _, mlp = encoder.dims
    pt, ph, pw = encoder.patch
    t, h, w = grid
    n, s = t * h * w, encoder.tokenlearner_tokens
    layer = encoder.tokenlearner_layer
    learner = t * tokenlearner_flops(encoder.tokenlearner_version, h * w, width, s)
    total = 2 * n * pt * ph * pw * 3 * width + layer * vit_block_flops(n, width, mlp)
    if encoder.tokenfuser:
        fuser = t * tokenfuser_flops(h * w, width, s)
        per_block = learner + vit_block_flops(t * s, width, mlp) + fuser
        return total + (depth - layer) * per_block
    return total + learner + (depth - layer) * vit_block_flops(t * s, width, mlp)


def head_transformer_flops(
    n: int, k: int, enc_width: int, width: int, depth: int, out: int
) -> float:
    """Decoder / predictor: embed K tokens, blocks on all N, project N tokens out."""
    blocks = depth * vit_block_flops(n, width, 4 * width)
    return 2 * k * enc_width * width + blocks + 2 * n * width * out


def r3d_flops(model: r3d.R3D, frames: int, height: int, width: int) -> float:
    """Forward FLOPs of the convolutions of R3D, walking the same layout as the model."""
    block_type, counts = model._spec()
    total = 0.0
    t, h, w = math.ceil(frames / 2), math.ceil(height / 2), math.ceil(width / 2)
    c_in = r3d._scaled(64, model.width)
    total += 2 * 5 * 7 * 7 * 3 * c_in * t * h * w
    h, w = math.ceil(h / 2), math.ceil(w / 2)  # max pool
    stages = zip(counts, r3d.STAGE_WIDTHS, r3d.TEMPORAL_KERNELS)
    for stage, (count, base_width, kt) in enumerate(stages):
        features = r3d._scaled(base_width, model.width)
        for i in range(count):
            stride = 2 if (stage > 0 and i == 0) else 1
            h_out, w_out = math.ceil(h / stride), math.ceil(w / stride)
            if block_type == "basic":
                out = features
                total += 2 * kt * 9 * c_in * features * t * h_out * w_out
                total += 2 * 9 * features * features * t * h_out * w_out
            else:
                out = features * r3d.BOTTLENECK_EXPANSION
                total += 2 * kt * c_in * features * t * h * w
                total += 2 * 9 * features * features * t * h_out * w_out
                total += 2 * features * out * t * h_out * w_out
            if c_in != out or stride != 1:
                total += 2 * c_in * out * t * h_out * w_out
            c_in, h, w = out, h_out, w_out
    return total


def model_flops(objective, batch: dict, clip) -> float:
    """Analytic training FLOPs of one step (see the module docstring)."""
    encoder = objective.encoder
    size = batch["video"].shape[0]
    if isinstance(encoder, r3d.R3D):
        views = batch["video"].shape[1] if batch["video"].ndim == 6 else 1
        forward = r3d_flops(encoder, *clip) * views
        head = 2 * encoder.output_dim * getattr(objective, "head_hidden", 0) * views
        return 3 * size * (forward + head)
    n = math.prod(encoder.token_grid(*clip))
    width = encoder.output_dim
    if "keep_idx" in batch:  # VideoMAE
        k = batch["keep_idx"].shape[1]
        pt, ph, pw = encoder.patch
        decoder = head_transformer_flops(
            n, k, width, objective.decoder_width, objective.decoder_depth, pt * ph * pw * 3
        )
        return 3 * size * (vit_flops(encoder, n, k) + decoder)
    if "keep_idx/0" in batch:  # V-JEPA, SALT
        target_encoder = objective.teacher if isinstance(objective, jepa.SALT) else encoder
        target_width = target_encoder.output_dim
        total = vit_flops(target_encoder, n, n)
        i = 0
        while f"keep_idx/{i}" in batch:
            k = batch[f"keep_idx/{i}"].shape[1]
            tokens = n  # context and mask tokens; fewer when only the targets are predicted
            if objective.predictor_targets == "targets_only" and f"target_idx/{i}" in batch:
                tokens = k + batch[f"target_idx/{i}"].shape[1]
            predictor = head_transformer_flops(
                tokens, k, width, objective.predictor_width, objective.predictor_depth, target_width
            )
            total += 3 * (vit_flops(encoder, n, k) + predictor)
            i += 1
        return size * total
    if encoder.tokenlearner_layer is not None:
        return 3 * size * tokenlearner_vit_flops(encoder, vit.token_grid_of(clip, encoder.patch))
    return 3 * size * vit_flops(encoder, n, n)
