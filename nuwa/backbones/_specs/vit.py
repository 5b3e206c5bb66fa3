"""The vit backbone's size presets and hyperparameter checks (also the transformer checks of swin).

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.vit` runs
before it builds anything.
"""

from __future__ import annotations

from typing import Any

from .simvp import check_frame

PRESETS: dict[str, dict[str, Any]] = {
    # The project's default CPU run (32x32, 10 -> 10 frames, C=1, batch 16): SimVP-small's thin
    # encoder/decoder (N_S=4 -> an 8x8 grid, 64 tokens per sample) and two 64-wide blocks.
    "small": {
        "hid_S": 4,
        "hid_T": 64,
        "N_S": 4,
        "N_T": 2,
        "num_heads": 4,
        "mlp_ratio": 4.0,
        "drop": 0.0,
        "drop_path": 0.0,
        "spatio_kernel_enc": 3,
        "spatio_kernel_dec": 3,
    },
    # OpenSTL configs/taxibj/simvp/SimVP_ViT.py (hid_S 32, hid_T 256, N_S 2, N_T 8, drop_path 0.1;
    # SimVP_Model defaults mlp_ratio 8, ViTSubBlock num_heads 8) -- TaxiBJ benchmark "9.66M".
    # OpenSTL's 8 MetaBlocks are one block at T_in*hid_S = 128 channels plus seven at 256; we keep
    # the seven 256-wide blocks and replace the 128-wide one by the 1x1 input conv, so N_T = 7:
    # 9,328,354 params at in_shape (4, 2, 32, 32), 4 -> 4 (-3.4%; OpenSTL's layout counts
    # 9,657,698).  N_T = 8 here would be 10.64M (+10.2%).
    "reference": {
        "hid_S": 32,
        "hid_T": 256,
        "N_S": 2,
        "N_T": 7,
        "num_heads": 8,
        "mlp_ratio": 8.0,
        "drop": 0.0,
        "drop_path": 0.1,
        "spatio_kernel_enc": 3,
        "spatio_kernel_dec": 3,
    },
}


def check_transformer(backbone: str, hp: dict[str, Any]) -> None:
    for key in ("hid_T", "N_T", "num_heads"):
        if int(hp[key]) < 1:
            raise ValueError(f"{backbone}: {key} must be >= 1, got {hp[key]!r}")
    if int(hp["hid_T"]) % int(hp["num_heads"]):
        raise ValueError(f"{backbone}: hid_T={hp['hid_T']} is not divisible by num_heads={hp['num_heads']}")
    if float(hp["mlp_ratio"]) <= 0:
        raise ValueError(f"{backbone}: mlp_ratio must be > 0, got {hp['mlp_ratio']!r}")
    for key in ("drop", "drop_path"):
        if not 0.0 <= float(hp[key]) < 1.0:
            raise ValueError(f"{backbone}: {key} must be in [0, 1), got {hp[key]!r}")


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    check_frame("vit", hp, in_shape, out_frames, scale)
    check_transformer("vit", hp)


def check_upstream(hp: dict[str, Any], pretrain: dict[str, Any]) -> None:
    """What :meth:`nuwa.backbones.vit.SimVPViT.load_upstream` needs of the upstream ViT that
    ``pretrain`` (params.yaml's section) builds: its blocks' shapes are the translator's."""
    wanted = {"N_T": pretrain["depth"], "hid_T": pretrain["embed_dim"], "num_heads": pretrain["num_heads"]}
    for key, value in wanted.items():
        if int(hp[key]) != int(value):
            upstream_key = {"N_T": "depth", "hid_T": "embed_dim", "num_heads": "num_heads"}[key]
            raise ValueError(f"{key}={hp[key]} != the upstream's {upstream_key} {value} (build with {key}={value})")
    if int(int(hp["hid_T"]) * float(hp["mlp_ratio"])) != int(int(pretrain["embed_dim"]) * float(pretrain["mlp_ratio"])):
        raise ValueError(f"mlp_ratio={hp['mlp_ratio']} gives other MLP widths than the upstream's mlp_ratio "
                         f"{pretrain['mlp_ratio']} (build with mlp_ratio={pretrain['mlp_ratio']})")
