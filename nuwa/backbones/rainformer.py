"""Rainformer (Bai, Sun, Zhang, Song, Chen, "Rainformer: Features Extraction Balanced Network for
Radar-Based Precipitation Nowcasting", IEEE GRSL 19, 2022, doi:10.1109/LGRS.2022.3162882).

Layout follows the authors' code (github.com/Zjut-MultimediaPlus/Rainformer, ``Rainformer.py`` /
``SwinTransformer.py`` / ``Attention.py``):

* **Time as channels** -- ``(B, T_in, C, H, W)`` is read as one image with ``T_in*C`` channels.
* **Encoder** -- ``n`` stages; stage ``i`` starts with *patch merging* (space-to-depth by
  ``downscaling_factors[i]`` then a linear map to ``hidden_dim * 2**i`` channels) followed by
  ``layers[i] // 2`` Rainformer blocks.
* **Rainformer block** -- two parallel branches on the same input, fused by a gate:

  - *global feature extraction unit*: a Swin W-MSA block followed by an SW-MSA block (pre-norm
    window self-attention with a relative-position bias, cyclic shift by half a window plus the
    Swin attention mask in the second block, then a GELU MLP; both residual).  As in the
    authors' code, the attention output passes through a channel attention (avg- and max-pooled
    descriptors, one MLP each) before the residual add.
  - *local feature extraction unit*: ``3x3 conv -> BN -> ReLU`` twice, then CBAM-style channel
    attention (shared MLP over avg/max pooled descriptors) and spatial attention (3x3 conv over
    the channel-wise mean/max maps -> BN -> sigmoid).
  - *gate fusion module* (the code's ``GRU`` class): ``[Z, R] = sigmoid(LN(conv3x3([G, L])))``
    and ``out = Z * G + R * L`` -- two independent per-element gates in ``(0, 1)``, so the fusion
    is a per-element *conic* (not convex) combination: ``Z + R`` ranges over ``(0, 2)``.  ``LN`` is
    a LayerNorm over ``(2C, H, W)`` with element-wise affine parameters, as in the code.
* **Decoder** -- ``n - 1`` stages mirroring the encoder: *patch expanding* (depth-to-space by the
  deeper stage's factor, then a linear map to ``hidden_dim * 2**i``), concatenation with the
  encoder output of the same level (skip connection), and Rainformer blocks on the doubled width.
  A final stage expands by ``downscaling_factors[0]`` back to full resolution at ``final_dim``
  channels and runs Rainformer blocks there.
* **Head** -- ``final_dim`` channels -> ``T_out*C`` channels: nothing when they already match and
  ``scale == 1`` (the authors' network ends on the last gate fusion with ``final_dim = T_out*C``),
  else a 1x1 conv, or for ``scale > 1`` transposed-conv upsampling plus a 1x1 readout.

Differences from the authors' code (at the paper's setting only the first changes the parameter
count):

* The code's ``GRU`` gate also builds ``conv_2`` and ``conv_3`` (each with its own LayerNorm) that
  ``forward`` never uses; they are omitted (55.7M of the code's 187.6M parameters at the paper's
  setting).
* A stage with ``layers > 2`` chains its blocks (the code recomputes every block from the stage
  input and keeps only the last one -- moot in the published ``layers = (2, 2, 2, 2)``).
* Resolutions need not divide the window: each attention pads to a multiple of the window and
  crops back, with padded keys masked out.  A window no smaller than a stage's grid is clamped to
  the grid and that block does not shift, as in Swin (the code shifts and masks there too).  The
  input is zero-padded to a multiple of ``prod(downscaling_factors)`` and the output cropped.
* The relative-position bias table (one per attention, shared by the heads as in the code) is
  initialised with std 0.02 instead of ``randn``; masks use -1e4 instead of ``-inf``.
* ``T_out != T_in``, ``C > 1`` and ``scale > 1`` are the head's business (the code is 9 -> 9
  single-channel frames at 288x288).
* The channel attentions' MLP reduction is a hyperparameter, ``ca_reduction`` (16 in the code and
  the ``reference`` preset; the narrow ``small`` preset uses 1, see there).

The relative-position tables, LayerNorms of the gates and window sizes are fixed by the build-time
resolution ``in_shape``, so the network only accepts inputs of that shape.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import register_backbone
from ._blocks import TransposedConvUpsampler, int_list, resolve_hparams
from ._specs.rainformer import PRESETS
from ._specs.rainformer import check as check_hparams


_MASK = -1e4  # additive attention mask; finite so fully masked rows (padding queries) stay NaN-free


# ---------------------------------------------------------------------------------------------
# Global feature extraction unit: Swin window attention
# ---------------------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    """Per-channel gain ``sigmoid(MLP(avgpool) + MLP'(maxpool))`` over the spatial dims.

    ``shared_mlp=True`` is CBAM's channel attention (one MLP for both descriptors, the code's
    ``Attention.CA``, used in the local unit); ``False`` gives each descriptor its own MLP (the
    code's ``SwinTransformer.CA``, used after window attention).  ``channels_last`` selects the
    layout, ``(B, H, W, C)`` or ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, hidden: int, *, shared_mlp: bool, channels_last: bool) -> None:
        super().__init__()
        self.channels_last = channels_last

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

        self.mlp_avg = mlp()
        self.mlp_max = self.mlp_avg if shared_mlp else mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (1, 2) if self.channels_last else (2, 3)
        gain = torch.sigmoid(self.mlp_avg(x.mean(dims)) + self.mlp_max(x.amax(dims)))
        return x * (gain[:, None, None, :] if self.channels_last else gain[:, :, None, None])


def _relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """``(N, N)`` index into a flattened ``(2*wh - 1) x (2*ww - 1)`` bias table, N = wh*ww."""
    wh, ww = window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


class WindowAttention(nn.Module):
    """(Shifted) window multi-head self-attention on channels-last maps ``(B, H, W, dim)``.

    The map is zero-padded to a multiple of ``window``, cyclically rolled by ``-shift`` when
    shifting, split into windows, attended within each window (with a learned relative-position
    bias, Swin's mask between regions that the roll made adjacent, and padded keys masked), then
    reassembled, rolled back and cropped.  ``heads * head_dim`` need not equal ``dim``.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, window: tuple[int, int], shift: tuple[int, int]) -> None:
        super().__init__()
        if not all(0 <= s < w for s, w in zip(shift, window)):
            raise ValueError(f"shift {shift} must lie in [0, window) for window {window}")
        self.heads, self.head_dim = heads, head_dim
        self.window, self.shift = tuple(window), tuple(shift)
        inner = heads * head_dim
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1)))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", _relative_position_index(self.window), persistent=False)
        self._mask_cache: dict[tuple, torch.Tensor | None] = {}

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hp, Wp, ...) -> (B, nW, wh*ww, ...)``."""
        b, hp, wp = x.shape[:3]
        (wh, ww), rest = self.window, x.shape[3:]
        x = x.reshape(b, hp // wh, wh, wp // ww, ww, *rest).transpose(2, 3)
        return x.reshape(b, (hp // wh) * (wp // ww), wh * ww, *rest)

    def _mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """Additive ``(nW, N, N)`` mask for a ``height x width`` input, or None if nothing is masked."""
        key = (height, width, device)
        if key not in self._mask_cache:
            (wh, ww), (sh, sw) = self.window, self.shift
            hp, wp = math.ceil(height / wh) * wh, math.ceil(width / ww) * ww
            if (sh, sw) == (0, 0) and (hp, wp) == (height, width):
                self._mask_cache[key] = None
            else:
                # Regions of the rolled map (Swin): pixels the roll brought together from opposite
                # borders get different labels and may not attend to each other.
                region = torch.zeros(hp, wp, dtype=torch.long, device=device)
                label = 0
                for hs in ((slice(0, hp - wh), slice(hp - wh, hp - sh), slice(hp - sh, hp)) if sh else (slice(None),)):
                    for ws in ((slice(0, wp - ww), slice(wp - ww, wp - sw), slice(wp - sw, wp)) if sw else (slice(None),)):
                        region[hs, ws] = label
                        label += 1
                padded = torch.ones(hp, wp, dtype=torch.bool, device=device)
                padded[:height, :width] = False
                padded = torch.roll(padded, (-sh, -sw), (0, 1))
                region = self._windows(region[None])[0]  # (nW, N)
                padded = self._windows(padded[None])[0]
                blocked = (region[:, :, None] != region[:, None, :]) | padded[:, None, :]
                self._mask_cache[key] = torch.zeros(blocked.shape, device=device).masked_fill(blocked, _MASK)
        return self._mask_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, _ = x.shape
        (wh, ww), (sh, sw) = self.window, self.shift
        x = F.pad(x, (0, 0, 0, (-width) % ww, 0, (-height) % wh))
        hp, wp = x.shape[1:3]
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        n = wh * ww
        qkv = self._windows(self.to_qkv(x).reshape(b, hp, wp, 3, self.heads, self.head_dim))
        # (B, nW, N, 3, heads, d) -> 3 x (B, nW*heads, N, d): windows x heads as attention batch
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, -1, n, self.head_dim).unbind(0)
        bias = self.bias_table[self.bias_index]  # (N, N), shared by heads as in the authors' code
        mask = self._mask(height, width, x.device)
        if mask is not None:
            bias = (bias + mask)[:, None].expand(-1, self.heads, n, n).reshape(-1, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.reshape(b, hp // wh, wp // ww, self.heads, wh, ww, self.head_dim)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, self.heads * self.head_dim)
        out = self.to_out(out)
        if sh or sw:
            out = torch.roll(out, (sh, sw), (1, 2))
        return out[:, :height, :width]


class SwinBlock(nn.Module):
    """``x + CA(WMSA(LN(x)))`` then ``x + MLP(LN(x))`` on ``(B, H, W, dim)``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
        window: tuple[int, int],
        shift: tuple[int, int],
        ca_reduction: int,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, head_dim, window, shift)
        # The code's SwinTransformer.CA: width dim // 16, or the full width when that is below 10.
        hidden = dim // ca_reduction if dim // ca_reduction >= 10 else dim
        self.channel_attention = ChannelAttention(dim, hidden, shared_mlp=False, channels_last=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.channel_attention(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class GlobalUnit(nn.Module):
    """Global feature extraction unit: a W-MSA block then an SW-MSA block, on ``(B, C, H, W)``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
        window: tuple[int, int],
        shift: tuple[int, int],
        ca_reduction: int = 16,
    ) -> None:
        super().__init__()
        self.regular = SwinBlock(dim, heads, head_dim, mlp_dim, window, (0, 0), ca_reduction)
        self.shifted = SwinBlock(dim, heads, head_dim, mlp_dim, window, shift, ca_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return self.shifted(self.regular(x)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Local feature extraction unit and gate fusion
# ---------------------------------------------------------------------------------------------


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``x * sigmoid(BN(conv3x3([mean_c(x), max_c(x)])))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.norm(self.conv(stats)))


class LocalUnit(nn.Module):
    """Local feature extraction unit: ``(3x3 conv -> BN -> ReLU) x 2 -> channel att. -> spatial att.``

    The convs and the spatial attention see a 7x7 neighbourhood; the channel attention adds one
    global gain per channel (its pooled descriptors), nothing position-specific.
    """

    def __init__(self, dim: int, ca_reduction: int = 16) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
        )
        # The code's Attention.CA: width dim // 16, the full width when that rounds to zero.
        self.channel_attention = ChannelAttention(dim, dim // ca_reduction or dim, shared_mlp=True, channels_last=False)
        self.spatial_attention = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(self.convs(x)))


class GateFusion(nn.Module):
    """Gate fusion module: ``[Z, R] = sigmoid(LN(conv3x3([G, L])))``, ``out = Z*G + R*L``.

    ``LN`` normalises each sample over ``(2*dim, H, W)`` with element-wise affine parameters, which
    is why the module is built for one resolution.
    """

    def __init__(self, dim: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1)
        self.norm = nn.LayerNorm([2 * dim, *resolution])

    def gates(self, g: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, r = torch.sigmoid(self.norm(self.conv(torch.cat([g, l], dim=1)))).chunk(2, dim=1)
        return z, r

    def forward(self, g: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        z, r = self.gates(g, l)
        return z * g + r * l


class RainformerBlock(nn.Module):
    """``GateFusion(GlobalUnit(x), LocalUnit(x))`` on ``(B, dim, H, W)``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
        window_size: int,
        resolution: tuple[int, int],
        ca_reduction: int = 16,
    ) -> None:
        super().__init__()
        # Swin: a window no smaller than the grid becomes the grid, and then there is nothing to shift.
        window = tuple(min(window_size, side) for side in resolution)
        shift = tuple(w // 2 if side > w else 0 for w, side in zip(window, resolution))
        self.global_unit = GlobalUnit(dim, heads, head_dim, mlp_dim, window, shift, ca_reduction)
        self.local_unit = LocalUnit(dim, ca_reduction)
        self.fusion = GateFusion(dim, resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.global_unit(x), self.local_unit(x))


# ---------------------------------------------------------------------------------------------
# Stages and network
# ---------------------------------------------------------------------------------------------


class PatchMerging(nn.Module):
    """Space-to-depth by ``factor`` (channel ``c*f*f + i*f + j``, as the code), then a linear map."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv2d(in_channels * factor**2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.pixel_unshuffle(x, self.factor))


class PatchExpanding(nn.Module):
    """Depth-to-space by ``factor`` (inverse of :class:`PatchMerging`'s order), then a linear map."""

    def __init__(self, in_channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv2d(in_channels // factor**2, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.pixel_shuffle(x, self.factor))


class Stage(nn.Module):
    """Resampling (merge or expand), optional skip concatenation, then ``layers // 2`` blocks."""

    def __init__(
        self,
        resample: nn.Module,
        dim: int,
        layers: int,
        heads: int,
        *,
        head_dim: int,
        mlp_dim: int,
        window_size: int,
        resolution: tuple[int, int],
        ca_reduction: int,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.blocks = nn.ModuleList(
            RainformerBlock(dim, heads, head_dim, mlp_dim, window_size, resolution, ca_reduction) for _ in range(layers // 2)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.resample(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


class Rainformer(nn.Module):
    """``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``; see the module docstring."""

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        hidden_dim: int,
        downscaling_factors: list[int],
        layers: list[int],
        heads: list[int],
        head_dim: int,
        window_size: int,
        final_dim: int | None,
        ca_reduction: int,
    ) -> None:
        super().__init__()
        t_in, channels, height, width = in_shape
        self.in_shape = tuple(in_shape)
        self.out_frames = out_frames
        out_channels = out_frames * channels
        final_dim = final_dim or out_channels
        factors = downscaling_factors
        n = len(factors)
        total = math.prod(factors)
        self.padded = (math.ceil(height / total) * total, math.ceil(width / total) * total)

        dims = [hidden_dim * 2**i for i in range(n)]
        resolutions, (h, w) = [], self.padded
        for f in factors:
            h, w = h // f, w // f
            resolutions.append((h, w))

        common = {"head_dim": head_dim, "window_size": window_size, "ca_reduction": ca_reduction}
        self.encoder = nn.ModuleList()
        for i in range(n):
            c_in = t_in * channels if i == 0 else dims[i - 1]
            merge = PatchMerging(c_in, dims[i], factors[i])
            self.encoder.append(
                Stage(merge, dims[i], layers[i], heads[i], mlp_dim=4 * dims[i], resolution=resolutions[i], **common)
            )
        # Decoder level i upsamples level i+1 by factors[i+1], concatenates the encoder's level-i
        # output and runs blocks on 2*dims[i] channels with level i+1's depth and heads (the code's
        # stage5..7); its MLPs are 2x wide (the code's mlp_dim = 4 * hidden_dimension).
        self.decoder = nn.ModuleList()
        c_in = dims[-1]
        for i in reversed(range(n - 1)):
            expand = PatchExpanding(c_in, dims[i], factors[i + 1])
            stage = Stage(
                expand, 2 * dims[i], layers[i + 1], heads[i + 1], mlp_dim=4 * dims[i], resolution=resolutions[i], **common
            )
            self.decoder.append(stage)
            c_in = 2 * dims[i]
        expand = PatchExpanding(c_in, final_dim, factors[0])
        self.final = Stage(expand, final_dim, layers[0], heads[0], mlp_dim=4 * final_dim, resolution=self.padded, **common)

        if scale == 1:
            self.head = nn.Identity() if final_dim == out_channels else nn.Conv2d(final_dim, out_channels, 1)
        else:
            self.head = TransposedConvUpsampler(final_dim, out_channels, scale, final_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"Rainformer built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")
        batch, _, channels, height, width = x.shape
        x = x.reshape(batch, -1, height, width)
        x = F.pad(x, (0, self.padded[1] - width, 0, self.padded[0] - height))
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the deepest level is the decoder's input, not a skip
        for stage in self.decoder:
            x = stage(x, skips.pop())
        x = self.head(self.final(x)[:, :, :height, :width])
        return x.reshape(batch, self.out_frames, channels, *x.shape[2:])


@register_backbone("rainformer")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> Rainformer:
    hp = resolve_hparams("rainformer", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    final_dim = hp["final_dim"]
    factors = int_list(hp["downscaling_factors"], "downscaling_factors")
    layers = int_list(hp["layers"], "layers")
    heads = int_list(hp["heads"], "heads")
    return Rainformer(
        in_shape,
        out_frames,
        scale,
        hidden_dim=hp["hidden_dim"],
        downscaling_factors=factors,
        layers=layers,
        heads=heads,
        head_dim=hp["head_dim"],
        window_size=hp["window_size"],
        final_dim=final_dim,
        ca_reduction=hp["ca_reduction"],
    )
