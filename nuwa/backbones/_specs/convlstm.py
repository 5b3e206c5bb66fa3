"""ConvLSTM's size presets and hyperparameter checks.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.convlstm` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from . import check_recurrent_hparams, int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Fast on a 2-core CPU at 32x32, 10 -> 10 frames (19 recurrent steps): patches of 4 put the
    # cells on an 8x8 grid with 16 input channels.
    "small": {
        "num_hidden": [24, 24],
        "filter_size": 3,
        "patch_size": 4,
        "layer_norm": False,
        "upsample_channels": 16,
    },
    # OpenSTL's TaxiBJ ConvLSTM settings (same as configs/taxibj/PredRNN.py's model block).
    "reference": {
        "num_hidden": [128, 128, 128, 128],
        "filter_size": 5,
        "patch_size": 2,
        "layer_norm": False,
        "upsample_channels": 64,
    },
}


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_recurrent_hparams("convlstm", hp, in_shape, out_frames, scale)
    int_list(hp["num_hidden"], "num_hidden")
