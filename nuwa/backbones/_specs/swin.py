"""The swin backbone's size presets and hyperparameter checks.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.swin` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from .simvp import check_frame
from .vit import PRESETS as VIT_PRESETS
from .vit import check_transformer

# OpenSTL's SimVP_Swin configs use the same translator sizes as SimVP_ViT (configs/taxibj/simvp/
# SimVP_Swin.py: hid_S 32, hid_T 256, N_S 2, N_T 8, drop_path 0.1; mlp_ratio 8, SwinSubBlock
# num_heads 8) -- TaxiBJ "9.66M" -- so the presets are vit's plus a window: None applies OpenSTL's
# rule (4 on both presets' grids). Reference: 9,331,098 params at in_shape (4, 2, 32, 32), 4 -> 4
# (-3.4%, for the reason vit.py's presets give).
PRESETS: dict[str, dict[str, Any]] = {size: {**hparams, "window_size": None} for size, hparams in VIT_PRESETS.items()}


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_frame("swin", hp, in_shape, out_frames, scale)
    check_transformer("swin", hp)
    window_size = hp["window_size"]
    if window_size is not None and int(window_size) < 1:
        raise ValueError(f"swin: window_size must be >= 1 or None (OpenSTL's rule), got {window_size!r}")
