"""Torch-free side of the backbones: each backbone's size presets and the checks its builder
runs before building anything, one module per backbone (``nuwa.backbones._specs.<kind>``:
``PRESETS`` and ``check(hp, in_shape, out_frames, scale)``), and the helpers they share.

``nuwa validate`` (and Snakemake, each time it reads params.yaml) checks every backbone entry
with them without importing torch; each builder calls the same ``check`` first, so the two
cannot disagree. What only a module's constructor would find is left to
:func:`nuwa.backbones.build_on_meta` (``nuwa.config.load_params(models=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


# ---------------------------------------------------------------------------------------------
# Hyperparameters: size presets + keyword overrides
# ---------------------------------------------------------------------------------------------


def resolve_hparams(
    backbone: str, presets: Mapping[str, Mapping[str, Any]], size: str, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Return ``presets[size]`` with ``overrides`` applied.

    Every preset of a backbone defines the same keys, so the keys of the chosen preset are the
    allowed override names; anything else is a typo or a hyperparameter of another backbone and
    is rejected rather than silently ignored.
    """
    if size not in presets:
        raise ValueError(f"{backbone}: unknown size {size!r}; available sizes: {', '.join(presets)}")
    hparams = dict(presets[size])
    unknown = sorted(set(overrides) - set(hparams))
    if unknown:
        raise ValueError(
            f"{backbone}: unknown hyperparameter(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(hparams))}"
        )
    hparams.update(overrides)
    return hparams


def int_list(value: Any, name: str) -> list[int]:
    """Accept ``[64, 64]``, ``(64, 64)`` or OpenSTL's ``"64,64"`` spelling of an int list."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        items = [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of ints, got {value!r}") from None
    if not items or any(v <= 0 for v in items):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {value!r}")
    return items


def check_divisible(backbone: str, what: str, size: int, divisor: int) -> None:
    if size % divisor:
        raise ValueError(f"{backbone}: {what}={size} is not divisible by {divisor}")


def check_recurrent_hparams(
    backbone: str, hp: dict[str, Any], in_shape: tuple[int, int, int, int], out_frames: int, scale: int
) -> tuple[int, int]:
    """The checks every patch-reshaping recurrent backbone shares; returns (filter_size, patch_size)."""
    t_in, _, height, width = in_shape
    if t_in < 1 or out_frames < 1 or scale < 1:
        raise ValueError(f"{backbone}: need T_in, out_frames, scale >= 1, got {t_in}, {out_frames}, {scale}")
    filter_size, patch_size = int(hp["filter_size"]), int(hp["patch_size"])
    if filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"{backbone}: filter_size must be a positive odd int, got {hp['filter_size']!r}")
    if patch_size < 1:
        raise ValueError(f"{backbone}: patch_size must be >= 1, got {hp['patch_size']!r}")
    check_divisible(backbone, "H", height, patch_size)
    check_divisible(backbone, "W", width, patch_size)
    return filter_size, patch_size
