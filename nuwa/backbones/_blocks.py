"""Building blocks shared by several backbones.

Tensors follow the registry's layout: sequences are ``(B, T, C, H, W)``, single frames
``(N, C, H, W)``.  Nothing in here is specific to one backbone; backbone files import what they
need and keep their own cells/translators to themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

# Hyperparameters (size presets + keyword overrides) and the checks shared by the recurrent
# backbones are torch-free, in nuwa.backbones._specs (`nuwa validate` checks params entries with them)
from ._specs import check_divisible, check_recurrent_hparams, int_list, resolve_hparams  # noqa: F401


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


# ---------------------------------------------------------------------------------------------
# Recurrent rollouts (ConvLSTM, PredRNN-V2, E3D-LSTM): one frame in, one frame out per step
# ---------------------------------------------------------------------------------------------


def recurrent_rollout(
    step: Callable[[torch.Tensor], torch.Tensor],
    readout: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    out_frames: int,
    *,
    targets: torch.Tensor | None = None,
    true_frame_mask: torch.Tensor | None = None,
    patch_size: int = 1,
    upsampler: nn.Module | None = None,
) -> torch.Tensor:
    """Run a frame-by-frame recurrent forecaster; ``(B, T_in, C, H, W) -> (B, T_out, C, H', W')``.

    The model supplies two callables working on patch-reshaped frames ``(B, C*p*p, H/p, W/p)``
    (see :func:`reshape_patch`): ``step(frame)`` advances its recurrent state by one step and
    returns features, ``readout(features)`` turns those into the prediction of the next frame.

    There are ``T_in + T_out - 1`` steps.  Step 0 is fed ``inputs[:, 0]``; step ``s >= 1`` is fed
    the true frame ``s`` (``inputs[:, s]`` while ``s < T_in``, then ``targets[:, s - T_in]``) for
    the samples where ``true_frame_mask[:, s - 1]`` is 1, else the prediction made at step
    ``s - 1`` (the mask layout of :mod:`nuwa.methods`, shape ``(B, T_in + T_out - 2)``).  Without
    a mask -- evaluation -- the inputs are fed and then the model's own predictions: ``targets``
    is ignored, so nothing from the future can leak in.  ``readout`` runs only where its
    prediction is used: at the ``T_out`` forecast steps ``s >= T_in - 1`` and at input steps whose
    successor is fed a prediction under the mask.

    ``targets`` may be at the input resolution or at ``scale`` times it (the backbone's output
    resolution); the latter are area-averaged down to the grid the model predicts on before they
    are fed.  The ``T_out`` forecast predictions are reshaped back to frames and, when given,
    ``upsampler`` (e.g. :class:`TransposedConvUpsampler`) maps each of them to the output
    resolution.
    """
    if inputs.dim() != 5:
        raise ValueError(f"expected inputs of shape (B, T_in, C, H, W), got {tuple(inputs.shape)}")
    batch, t_in = inputs.shape[:2]
    steps = t_in + out_frames - 1
    feed_true = None
    true_forecast: torch.Tensor | None = None
    if true_frame_mask is not None:
        if tuple(true_frame_mask.shape) != (batch, steps - 1):
            raise ValueError(
                f"true_frame_mask must have shape (B, T_in + T_out - 2) = {(batch, steps - 1)}, "
                f"got {tuple(true_frame_mask.shape)}"
            )
        feed_true = true_frame_mask.to(inputs.device) > 0.5  # (B, steps - 1) bool
        all_true, any_true = feed_true.all(dim=0).tolist(), feed_true.any(dim=0).tolist()
        if any(any_true[t_in - 1 :]):
            if targets is None:
                raise ValueError("true_frame_mask feeds true forecast frames, so targets are required")
            true_forecast = reshape_patch(_native_targets(targets, inputs, out_frames), patch_size)
    patches = reshape_patch(inputs, patch_size)

    def true_frame(s: int) -> torch.Tensor:
        return patches[:, s] if s < t_in else true_forecast[:, s - t_in]

    predictions: list[torch.Tensor] = []
    previous: torch.Tensor | None = None  # the prediction made at step s - 1, where it is used
    for s in range(steps):
        if s == 0:
            frame = patches[:, 0]
        elif feed_true is None:
            frame = patches[:, s] if s < t_in else previous
        elif all_true[s - 1]:
            frame = true_frame(s)
        elif not any_true[s - 1]:
            frame = previous
        else:
            frame = torch.where(feed_true[:, s - 1].view(batch, 1, 1, 1), true_frame(s), previous)
        features = step(frame)
        forecast = s >= t_in - 1
        fed_next = feed_true is not None and s < steps - 1 and not all_true[s]
        previous = readout(features) if forecast or fed_next else None
        if forecast:
            predictions.append(previous)

    frames = reshape_patch_back(torch.stack(predictions, dim=1), patch_size)  # (B, T_out, C, H, W)
    if upsampler is not None:
        frames = unfold_time(upsampler(fold_time(frames)), batch)
    return frames


def _native_targets(targets: torch.Tensor, inputs: torch.Tensor, out_frames: int) -> torch.Tensor:
    """``targets`` at the inputs' resolution (area-averaged when they are ``scale`` times larger)."""
    batch, _, channels, height, width = inputs.shape
    if targets.dim() != 5 or tuple(targets.shape[:3]) != (batch, out_frames, channels):
        raise ValueError(f"targets must have shape (B, T_out, C, H', W') = ({batch}, {out_frames}, {channels}, ...), "
                         f"got {tuple(targets.shape)}")
    t_height, t_width = targets.shape[-2:]
    if (t_height, t_width) == (height, width):
        return targets.to(inputs.dtype)
    factor = t_height // height
    if factor < 1 or (t_height, t_width) != (height * factor, width * factor):
        raise ValueError(f"targets of size {t_height}x{t_width} are not an integer upscaling of {height}x{width} inputs")
    pooled = F.avg_pool2d(fold_time(targets.to(inputs.dtype)), factor)
    return unfold_time(pooled, batch)
