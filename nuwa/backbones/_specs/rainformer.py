"""Rainformer's size presets and hyperparameter checks.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.rainformer` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from . import int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Sized for the project's default CPU run (32x32, 10 -> 10 frames, C=1, batch 16): three stages
    # (16x16, 8x8, 4x4 grids) of 16/32/64 channels with 4x4 windows, one block each, a mirrored
    # decoder and a 16-channel full-resolution final stage; about 0.17 s forward+backward on one
    # thread, 1.03M parameters.
    "small": {
        "hidden_dim": 16,
        "downscaling_factors": [2, 2, 2],
        "layers": [2, 2, 2],
        "heads": [1, 2, 4],
        "head_dim": 8,
        "window_size": 4,
        "final_dim": 16,
        # No channel-attention bottleneck: at these widths CBAM's reduction 16 (or even 2-4) leaves
        # MLPs of 1-8 ReLU units fed with non-negative descriptors, which die together at init
        # for a noticeable fraction of seeds (no gradient ever reaches them).
        "ca_reduction": 1,
    },
    # The paper's configuration (Rainformer/train.py and test.py: KNMI radar, 9 -> 9 frames at
    # 288x288): 187,557,014 parameters in the authors' code, 131,810,873 without its unused gate
    # convs -- which is what this file builds at that setting.  final_dim None = T_out*C.
    "reference": {
        "hidden_dim": 96,
        "downscaling_factors": [4, 2, 2, 2],
        "layers": [2, 2, 2, 2],
        "heads": [3, 6, 12, 24],
        "head_dim": 32,
        "window_size": 9,
        "final_dim": None,
        "ca_reduction": 16,
    },
}


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    t_in, channels, height, width = in_shape
    if min(t_in, channels, height, width) < 1 or out_frames < 1 or scale < 1:
        raise ValueError(f"rainformer: need positive in_shape, out_frames and scale, got {in_shape}, {out_frames}, {scale}")
    for key in ("hidden_dim", "head_dim", "window_size", "ca_reduction"):
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"rainformer: {key} must be a positive int, got {hp[key]!r}")
    final_dim = hp["final_dim"]
    if final_dim is not None and (not isinstance(final_dim, int) or final_dim < 1):
        raise ValueError(f"rainformer: final_dim must be a positive int or None (= T_out*C), got {final_dim!r}")
    factors = int_list(hp["downscaling_factors"], "downscaling_factors")
    layers = int_list(hp["layers"], "layers")
    heads = int_list(hp["heads"], "heads")
    if not len(factors) == len(layers) == len(heads):
        raise ValueError(
            f"rainformer: downscaling_factors, layers and heads need one entry per stage, got {factors}, {layers}, {heads}"
        )
    if any(depth % 2 for depth in layers):
        raise ValueError(f"rainformer: layers must be even (W-MSA + SW-MSA pairs), got {layers}")
    # Patch expanding splits channels into factor**2 sub-pixels: check every expansion's input.
    dims = [hp["hidden_dim"] * 2**i for i in range(len(factors))]
    c_in = dims[-1]
    for level in [*reversed(range(len(factors) - 1)), None]:  # decoder levels, then the final stage
        factor = factors[0] if level is None else factors[level + 1]
        if c_in % factor**2:
            raise ValueError(
                f"rainformer: patch expanding by {factor} needs channels divisible by {factor**2}, got {c_in} "
                f"(hidden_dim={hp['hidden_dim']}, downscaling_factors={factors})"
            )
        if level is not None:
            c_in = 2 * dims[level]
