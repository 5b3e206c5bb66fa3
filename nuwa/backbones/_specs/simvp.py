"""SimVP's size presets and hyperparameter checks (also the frame checks of vit and swin).

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.simvp` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from . import check_divisible, int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Sized for the project's default CPU run (32x32, 10 -> 10 frames, C=1, batch 16): N_S=4 puts
    # the translator on an 8x8 grid, and thin full-resolution encoder/decoder layers (their convs,
    # norms and pixel shuffles over B*T frames dominate CPU time) keep a step near 0.13 s.
    "small": {
        "hid_S": 4,
        "hid_T": 64,
        "N_S": 4,
        "N_T": 2,
        "incep_ker": [3, 5, 7, 11],
        "groups": 8,
        "spatio_kernel_enc": 3,
        "spatio_kernel_dec": 3,
    },
    # OpenSTL configs/taxibj/SimVP.py with model_type IncepU -- the TaxiBJ benchmark entry
    # "SimVP IncepU, 13.79M params" (13,794,914 here at in_shape (4, 2, 32, 32), 4 -> 4 frames).
    # (configs/taxibj/simvp/SimVP_IncepU.py, hid_S 64 / hid_T 512 / N_S 4, would be 55M.)
    "reference": {
        "hid_S": 32,
        "hid_T": 256,
        "N_S": 2,
        "N_T": 8,
        "incep_ker": [3, 5, 7, 11],
        "groups": 8,
        "spatio_kernel_enc": 3,
        "spatio_kernel_dec": 3,
    },
}


def check_frame(backbone: str, hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int,
                scale: int) -> None:
    """Check the hyperparameters :class:`SimVPBase` itself uses (``hid_S``, ``N_S``, the spatial
    kernels), the frame counts and scale, and that ``H``/``W`` survive the encoder's striding."""
    _, _, height, width = in_shape
    for key in ("hid_S", "N_S", "spatio_kernel_enc", "spatio_kernel_dec"):
        if int(hp[key]) < 1:
            raise ValueError(f"{backbone}: {key} must be >= 1, got {hp[key]!r}")
    if in_shape[0] < 1 or out_frames < 1 or scale < 1:
        raise ValueError(f"{backbone}: need T_in, out_frames, scale >= 1, got {in_shape[0]}, {out_frames}, {scale}")
    for key in ("spatio_kernel_enc", "spatio_kernel_dec"):
        if int(hp[key]) % 2 == 0:
            raise ValueError(f"{backbone}: {key} must be odd (same-size padding), got {hp[key]!r}")
    downsampling = 2 ** (int(hp["N_S"]) // 2)
    check_divisible(backbone, "H", height, downsampling)
    check_divisible(backbone, "W", width, downsampling)


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_frame("simvp", hp, in_shape, out_frames, scale)
    for key in ("hid_T", "groups"):
        if int(hp[key]) < 1:
            raise ValueError(f"simvp: {key} must be >= 1, got {hp[key]!r}")
    if int(hp["N_T"]) < 2:
        raise ValueError(f"simvp: N_T must be >= 2 (IncepU is a UNet), got {hp['N_T']!r}")
    if int(hp["hid_T"]) < 2:
        raise ValueError(f"simvp: hid_T must be >= 2, got {hp['hid_T']!r}")
    if any(k % 2 == 0 for k in int_list(hp["incep_ker"], "incep_ker")):
        raise ValueError(f"simvp: incep_ker must be odd kernel sizes, got {hp['incep_ker']!r}")
