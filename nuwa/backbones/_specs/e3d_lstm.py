"""E3D-LSTM's size presets and hyperparameter checks.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.e3d_lstm` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from . import check_recurrent_hparams, int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Near 0.3 s per forward + backward on one CPU thread at 32x32, 10 -> 10 frames, batch 16 (19
    # recurrent steps).  Patches of 8 put the cells on a 4x4 grid with 64 input channels: the
    # recall attends from all 2*4*4 window positions to those of every stored state, a cost
    # quadratic in both the grid size and the number of steps, which made patch 4 (8x8) ~4x slower.
    "small": {
        "num_hidden": [16, 16],
        "filter_size": 3,
        "temporal_filter_size": 2,
        "window_length": 2,
        "window_stride": 1,
        "patch_size": 8,
        "layer_norm": False,
        "upsample_channels": 16,
    },
    # OpenSTL configs/taxibj/E3DLSTM.py: num_hidden '128,128,128,128', filter_size 5 (the model
    # hard-codes 2x5x5 kernels), stride 1, patch_size 2, layer_norm 0; window 2, window stride 1.
    "reference": {
        "num_hidden": [128, 128, 128, 128],
        "filter_size": 5,
        "temporal_filter_size": 2,
        "window_length": 2,
        "window_stride": 1,
        "patch_size": 2,
        "layer_norm": False,
        "upsample_channels": 64,
    },
}


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_recurrent_hparams("e3d_lstm", hp, in_shape, out_frames, scale)
    temporal_filter_size = int(hp["temporal_filter_size"])
    window_length, window_stride = int(hp["window_length"]), int(hp["window_stride"])
    if temporal_filter_size < 1:
        raise ValueError(f"e3d_lstm: temporal_filter_size must be >= 1, got {hp['temporal_filter_size']!r}")
    if window_length < 1 or not 0 <= window_stride < window_length:
        raise ValueError(
            f"e3d_lstm: need window_length >= 1 and 0 <= window_stride < window_length, "
            f"got {hp['window_length']!r}, {hp['window_stride']!r}"
        )
    num_hidden = int_list(hp["num_hidden"], "num_hidden")
    if len(set(num_hidden)) != 1:
        # M flows through every layer, so all layers have one width.
        raise ValueError(f"e3d_lstm: all num_hidden entries must be equal, got {num_hidden}")
