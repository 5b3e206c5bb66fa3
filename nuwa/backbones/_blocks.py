"""Building blocks shared by several backbones.

Tensors follow the registry's layout: sequences are ``(B, T, C, H, W)``, single frames
``(N, C, H, W)``.  Nothing in here is specific to one backbone; backbone files import what they
need and keep their own cells/translators to themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


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


# ---------------------------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------------------------


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm that falls back to fewer groups when ``channels`` is not divisible."""
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Module):
    """``Conv2d -> GroupNorm -> activation``.

    ``stride=2`` halves the resolution; ``upsample=True`` doubles it with a conv to 4x channels
    followed by ``PixelShuffle(2)`` (the sub-pixel upsampling SimVP/OpenSTL use, which avoids the
    checkerboard artifacts of overlapping transposed convs).  Padding keeps ``H*stride`` exact
    for odd kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        upsample: bool = False,
        groups: int = 1,
        norm_groups: int = 2,
        act: type[nn.Module] | None = nn.SiLU,
        norm: bool = True,
    ) -> None:
        super().__init__()
        if upsample and stride != 1:
            raise ValueError("ConvNormAct: upsample and stride > 1 are exclusive")
        padding = (kernel_size - stride + 1) // 2
        if upsample:
            self.conv = nn.Sequential(
                nn.Conv2d(in_channels, out_channels * 4, kernel_size, padding=padding, groups=groups),
                nn.PixelShuffle(2),
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups)
        self.norm = group_norm(out_channels, norm_groups) if norm else nn.Identity()
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


class TransposedConvUpsampler(nn.Module):
    """Upsample frames ``(N, C_in, H, W) -> (N, C_out, H*scale, W*scale)``.

    One transposed-conv stage per prime factor of ``scale`` (so 4 = 2 x 2, 6 = 2 x 3); a stage of
    factor ``f`` uses ``kernel = f + 2*(f//2)``, ``stride = f``, ``padding = f//2`` which gives an
    exact ``f``-fold size with overlapping kernels.  Stages are followed by GroupNorm + SiLU, and
    a 1x1 conv reads out ``out_channels``.  ``scale == 1`` is the identity when the channel
    counts match (no parameters), else just the 1x1 readout.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale
        hidden = hidden_channels or in_channels
        stages: list[nn.Module] = []
        channels = in_channels
        for factor in _prime_factors(scale):
            stages += [
                nn.ConvTranspose2d(channels, hidden, factor + 2 * (factor // 2), stride=factor, padding=factor // 2),
                group_norm(hidden, 2),
                nn.SiLU(),
            ]
            channels = hidden
        self.stages = nn.Sequential(*stages)
        self.readout = nn.Identity() if channels == out_channels and not stages else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.stages(x))


# ---------------------------------------------------------------------------------------------
# Sequence / patch reshaping
# ---------------------------------------------------------------------------------------------


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W) -> (B*T, C, H, W)``: run a frame-wise module over all frames at once."""
    b, t = x.shape[:2]
    return x.reshape(b * t, *x.shape[2:])


def unfold_time(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`fold_time`."""
    return x.reshape(batch, x.shape[0] // batch, *x.shape[1:])


def reshape_patch(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Space-to-depth as in PredRNN/OpenSTL: ``(..., C, H, W) -> (..., C*p*p, H/p, W/p)``.

    Each non-overlapping ``p x p`` patch becomes ``p*p`` channels, so recurrent cells run on a
    ``p``-times smaller grid.  Channel order is ``c*p*p + i*p + j`` (``pixel_unshuffle``'s;
    OpenSTL's channels-last version orders differently, which only permutes channels).
    """
    if patch_size == 1:
        return x
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"frame size {h}x{w} is not divisible by patch_size {patch_size}")
    y = F.pixel_unshuffle(x.reshape(-1, c, h, w), patch_size)
    return y.reshape(*lead, *y.shape[1:])


def reshape_patch_back(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`reshape_patch`: ``(..., C*p*p, H/p, W/p) -> (..., C, H, W)``."""
    if patch_size == 1:
        return x
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    y = F.pixel_shuffle(x.reshape(-1, c, h, w), patch_size)
    return y.reshape(*lead, *y.shape[1:])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
