"""Earthformer's size presets, hyperparameter checks and attention patterns.

Torch-free, so that ``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks a
params entry without importing torch: the size presets (their keys are the overrides a params
entry may name) and :func:`check`, the checks the builder in :mod:`nuwa.backbones.earthformer`
runs before it builds anything, and the ones its modules' constructors make (level widths and
heads, the attention patterns on every level's grid, the stem's group norms), computed on the
same grids.
"""

from __future__ import annotations

import re
from typing import Any

from . import int_list

PRESETS: dict[str, dict[str, Any]] = {
    # Sized for the project's default CPU run (32x32, 10 -> 10 frames, C=1, batch 16; ~0.26 s
    # forward+backward on one thread): a two-stage stem puts the transformer on an 8x8 grid
    # (levels 8x8x16 and 4x4x32), the SEVIR layout otherwise (axial self-attention, 1x1
    # cross-attention, global self-attention among the global vectors), with global vectors that
    # the decoder also reads so that every parameter is trained.
    "small": {
        "base_units": 16,
        "scale_alpha": 1.0,
        "downsample": 2,
        "enc_depth": [1, 1],
        "dec_depth": [1, 1],
        "num_heads": 2,
        "self_pattern": "axial",
        "cross_self_pattern": "axial",
        "cross_pattern": "cross_1x1",
        "num_global_vectors": 4,
        "use_dec_self_global": True,
        "use_dec_cross_global": True,
        "use_global_vector_ffn": False,
        "use_global_self_attn": True,
        "separate_global_qkv": False,
        "attn_drop": 0.0,
        "proj_drop": 0.0,
        "ffn_drop": 0.0,
        "ffn_activation": "gelu",
        "padding_type": "ignore",
        "pos_embed_type": "t+h+w",
        "use_relative_pos": True,
        "z_init_method": "zeros",
        "stem_dims": [8, 16],
        "stem_scales": [2, 2],
        "stem_convs": [1, 1],
        "stem_activation": "leaky",
    },
    # The published SEVIR model (scripts/cuboid_transformer/sevir/earthformer_sevir_v1.yaml, the
    # configuration of the released checkpoint; 13 -> 12 frames of 384x384x1): the stem divides the
    # resolution by 3*2*2 = 12 (384 -> 32x32 grid), two levels of width 128/256, axial
    # self-attention, 1x1 cross-attention, 8 global vectors used by the encoder only.
    # ``stem_*`` are ``initial_downsample_stack_conv_{dim,downscale,num_conv}_list``.  At 32x32
    # inputs the same stem gives a 3x3 grid (11 -> 6 -> 3 with padding); override ``stem_scales``
    # (e.g. [1, 1, 1]) to keep the paper's ~32x32 transformer grid.
    "reference": {
        "base_units": 128,
        "scale_alpha": 1.0,
        "downsample": 2,
        "enc_depth": [1, 1],
        "dec_depth": [1, 1],
        "num_heads": 4,
        "self_pattern": "axial",
        "cross_self_pattern": "axial",
        "cross_pattern": "cross_1x1",
        "num_global_vectors": 8,
        "use_dec_self_global": False,
        "use_dec_cross_global": False,
        "use_global_vector_ffn": False,
        "use_global_self_attn": True,
        "separate_global_qkv": True,
        "attn_drop": 0.1,
        "proj_drop": 0.1,
        "ffn_drop": 0.1,
        "ffn_activation": "gelu",
        "padding_type": "zeros",
        "pos_embed_type": "t+h+w",
        "use_relative_pos": True,
        "z_init_method": "zeros",
        "stem_dims": [16, 64, 128],
        "stem_scales": [3, 2, 2],
        "stem_convs": [2, 2, 2],
        "stem_activation": "leaky",
    },
}

ACTIVATIONS = ("gelu", "leaky", "relu", "silu")  # nuwa.backbones.earthformer._ACTIVATIONS' names

Triple = tuple[int, int, int]
SelfSpec = tuple[Triple, tuple[str, str, str], Triple]
CrossSpec = tuple[tuple[int, int], tuple[int, int], tuple[str, str, str], int]


def _strategy(value: Any) -> tuple[str, str, str]:
    strategy = tuple(value)
    if len(strategy) != 3 or any(s not in ("l", "d") for s in strategy):
        raise ValueError(f"strategy must be three of 'l'/'d' (e.g. 'lll', 'dld'), got {value!r}")
    return strategy  # type: ignore[return-value]


def _ints(value: Any, n: int, what: str, minimum: int) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be {n} ints, got {value!r}") from None
    if len(items) != n or any(v < minimum for v in items):
        raise ValueError(f"{what} must be {n} ints >= {minimum}, got {value!r}")
    return items


def self_attention_pattern(pattern: Any, grid: Triple) -> list[SelfSpec]:
    """``[(cuboid_size, strategy, shift_size), ...]`` for a ``(T, H, W)`` grid.

    Cuboid sizes are clamped to the grid (shift 0 on clamped axes) and dilated axes never shift,
    as in the official ``update_cuboid_size_shift_size``.
    """
    t, h, w = grid
    local, zero = ("l", "l", "l"), (0, 0, 0)
    if isinstance(pattern, str):
        if pattern == "full":
            specs = [((t, h, w), local, zero)]
        elif pattern == "axial":
            specs = [((t, 1, 1), local, zero), ((1, h, 1), local, zero), ((1, 1, w), local, zero)]
        elif pattern == "divided_st":
            specs = [((t, 1, 1), local, zero), ((1, h, w), local, zero)]
        elif match := re.fullmatch(r"video_swin(?:_(\d+)x(\d+))?", pattern):
            p, m = (int(match[1]), int(match[2])) if match[1] else (2, 4)
            p, m = min(p, t), min(m, h, w)
            specs = [((p, m, m), local, zero), ((p, m, m), local, (p // 2, m // 2, m // 2))]
        elif match := re.fullmatch(r"spatial_lg_(v1|\d+)", pattern):
            m = 4 if match[1] == "v1" else int(match[1])
            if h <= m and w <= m:
                specs = [((t, 1, 1), local, zero), ((1, h, w), local, zero)]
            else:
                specs = [((t, 1, 1), local, zero), ((1, m, m), local, zero), ((1, m, m), ("d", "d", "d"), zero)]
        elif match := re.fullmatch(r"axial_space_dilate_(\d+)", pattern):
            k = min(int(match[1]), h, w)
            dilated = ("d", "d", "d")
            specs = [
                ((t, 1, 1), local, zero),
                ((1, h // k, 1), dilated, zero), ((1, h // k, 1), local, zero),
                ((1, 1, w // k), dilated, zero), ((1, 1, w // k), local, zero),
            ]  # fmt: skip
        else:
            raise ValueError(
                f"unknown self-attention pattern {pattern!r}; named patterns: full, axial, divided_st, "
                "video_swin[_PxM], spatial_lg_{v1,M}, axial_space_dilate_K, or a list of "
                "(cuboid_size, strategy, shift_size)"
            )
    else:
        try:
            specs = [
                (_ints(c, 3, "cuboid_size", 1), _strategy(s), _ints(sh, 3, "shift_size", 0))
                for c, s, sh in pattern
            ]
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad self-attention pattern {pattern!r}: {err}") from None
        if not specs:
            raise ValueError("self-attention pattern must not be empty")
    resolved = []
    for cuboid, strategy, shift in specs:
        cuboid, shift = list(cuboid), list(shift)
        for axis, length in enumerate(grid):
            if strategy[axis] == "d" or length <= cuboid[axis]:
                shift[axis] = 0
            cuboid[axis] = min(cuboid[axis], length)
            if shift[axis] >= cuboid[axis]:
                raise ValueError(f"shift_size {tuple(shift)} must be smaller than cuboid_size {tuple(cuboid)}")
        resolved.append((tuple(cuboid), strategy, tuple(shift)))
    return resolved  # type: ignore[return-value]


def cross_attention_pattern(pattern: Any, hw: tuple[int, int]) -> list[CrossSpec]:
    """``[(cuboid_hw, shift_hw, strategy, n_temporal), ...]`` for an ``(H, W)`` grid."""
    h, w = hw
    if isinstance(pattern, str):
        match = re.fullmatch(r"cross_(\d+)x\1(_lg|_heter)?", pattern)
        if not match:
            raise ValueError(
                f"unknown cross-attention pattern {pattern!r}; named patterns: cross_KxK, cross_KxK_lg, "
                "cross_KxK_heter, or a list of (cuboid_hw, shift_hw, strategy, n_temporal)"
            )
        k = min(int(match[1]), h, w)
        specs: list[Any] = [((k, k), (0, 0), "lll", 1)]
        if match[2]:
            specs.append(((k, k), (0, 0), "ddd", 1))
        if match[2] == "_heter":
            specs.append(((k, k), (k // 2, k // 2), "lll", 1))
    else:
        specs = list(pattern)
        if not specs:
            raise ValueError("cross-attention pattern must not be empty")
    resolved = []
    try:
        for cuboid, shift, strategy, n_temporal in specs:
            cuboid, shift = list(_ints(cuboid, 2, "cuboid_hw", 1)), list(_ints(shift, 2, "shift_hw", 0))
            strategy, n_temporal = _strategy(strategy), int(n_temporal)
            if n_temporal < 1:
                raise ValueError(f"n_temporal must be >= 1, got {n_temporal}")
            for axis, length in enumerate(hw):
                if strategy[axis + 1] == "d" or length <= cuboid[axis]:
                    shift[axis] = 0
                cuboid[axis] = min(cuboid[axis], length)
                if shift[axis] >= cuboid[axis]:
                    raise ValueError(f"shift_hw {tuple(shift)} must be smaller than cuboid_hw {tuple(cuboid)}")
            resolved.append((tuple(cuboid), tuple(shift), strategy, n_temporal))
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad cross-attention pattern {pattern!r}: {err}") from None
    return resolved  # type: ignore[return-value]


def out_hw(hw: tuple[int, int], factor: int) -> tuple[int, int]:
    """The grid after ``factor x factor`` patch merging (zero-padded to a multiple)."""
    return (-(-hw[0] // factor), -(-hw[1] // factor))


def check(hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int) -> None:
    t_in, _, height, width = in_shape
    if t_in < 1 or out_frames < 1 or scale < 1:
        raise ValueError(f"earthformer: need T_in, out_frames, scale >= 1, got {t_in}, {out_frames}, {scale}")
    for key in ("base_units", "num_heads", "downsample"):
        if int(hp[key]) < 1:
            raise ValueError(f"earthformer: {key} must be >= 1, got {hp[key]!r}")
    if int(hp["num_global_vectors"]) < 0:
        raise ValueError(f"earthformer: num_global_vectors must be >= 0, got {hp['num_global_vectors']!r}")
    enc_depth, dec_depth = int_list(hp["enc_depth"], "enc_depth"), int_list(hp["dec_depth"], "dec_depth")
    if len(enc_depth) != len(dec_depth):
        raise ValueError(f"earthformer: enc_depth {enc_depth} and dec_depth {dec_depth} need one entry per level")
    stem_dims, stem_scales = int_list(hp["stem_dims"], "stem_dims"), int_list(hp["stem_scales"], "stem_scales")
    stem_convs = [int(c) for c in hp["stem_convs"]]
    if not (len(stem_dims) == len(stem_scales) == len(stem_convs)) or any(c < 0 for c in stem_convs):
        raise ValueError("earthformer: stem_dims, stem_scales, stem_convs need one entry (>= 0 convs) per stage")
    if stem_dims[-1] != int(hp["base_units"]):
        raise ValueError(f"earthformer: stem_dims[-1]={stem_dims[-1]} must equal base_units={hp['base_units']}")
    for key, allowed in (
        ("ffn_activation", ACTIVATIONS), ("stem_activation", ACTIVATIONS), ("padding_type", ("ignore", "zeros")),
        ("pos_embed_type", ("t+h+w", "t+hw")), ("z_init_method", ("zeros", "nearest_interp", "last", "mean")),
    ):  # fmt: skip
        if hp[key] not in allowed:
            raise ValueError(f"earthformer: {key} must be one of {', '.join(allowed)}; got {hp[key]!r}")
    for key in ("attn_drop", "proj_drop", "ffn_drop"):
        if not 0.0 <= float(hp[key]) < 1.0:
            raise ValueError(f"earthformer: {key} must be in [0, 1), got {hp[key]!r}")
    # what the modules' constructors check, on the grids the model builds (Earthformer.__init__)
    for dim, count in zip(stem_dims, stem_convs):
        if count and dim % max(1, dim // 4):
            raise ValueError(f"earthformer: stem_dims entry {dim} is not divisible by its GroupNorm's "
                             f"{max(1, dim // 4)} groups (dim // 4)")
    num_heads, levels = int(hp["num_heads"]), len(enc_depth)
    units = [int(hp["base_units"]) * int((int(hp["downsample"]) ** float(hp["scale_alpha"])) ** i) for i in range(levels)]
    for u in units:
        if u % num_heads:
            raise ValueError(f"earthformer: level width {u} is not divisible by num_heads={num_heads}")
    level_hw = [(height, width)]
    for factor in stem_scales:
        level_hw[0] = out_hw(level_hw[0], factor)
    for _ in range(levels - 1):
        level_hw.append(out_hw(level_hw[-1], int(hp["downsample"])))
    for hw in level_hw:
        self_attention_pattern(hp["self_pattern"], (t_in, *hw))
        self_attention_pattern(hp["cross_self_pattern"], (out_frames, *hw))
        for _, _, _, n_temporal in cross_attention_pattern(hp["cross_pattern"], hw):
            if n_temporal > min(out_frames, t_in):
                raise ValueError(f"n_temporal={n_temporal} exceeds the number of frames ({out_frames} / {t_in})")
