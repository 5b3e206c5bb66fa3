"""PredRNN-V2's size presets and hyperparameter checks.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.predrnn_v2` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from . import check_recurrent_hparams, int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Fast on a 2-core CPU at 32x32, 10 -> 10 frames (19 recurrent steps): patches of 4 put the
    # cells on an 8x8 grid with 16 input channels.
    "small": {
        "num_hidden": [16, 16],
        "filter_size": 3,
        "patch_size": 4,
        "layer_norm": False,
        "decouple_beta": 0.1,
        "upsample_channels": 16,
    },
    # OpenSTL configs/taxibj/PredRNNv2.py: num_hidden '128,128,128,128', filter_size 5, stride 1,
    # patch_size 2, layer_norm 0, decouple_beta 0.1.
    "reference": {
        "num_hidden": [128, 128, 128, 128],
        "filter_size": 5,
        "patch_size": 2,
        "layer_norm": False,
        "decouple_beta": 0.1,
        "upsample_channels": 64,
    },
}


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_recurrent_hparams("predrnn_v2", hp, in_shape, out_frames, scale)
    num_hidden = int_list(hp["num_hidden"], "num_hidden")
    if len(set(num_hidden)) != 1:
        # M flows through every layer and the adapter is shared, so all layers have one width.
        raise ValueError(f"predrnn_v2: all num_hidden entries must be equal, got {num_hidden}")
    if float(hp["decouple_beta"]) < 0:
        raise ValueError(f"predrnn_v2: decouple_beta must be >= 0, got {hp['decouple_beta']!r}")
