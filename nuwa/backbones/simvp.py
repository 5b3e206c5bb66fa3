"""SimVP (Gao et al., "SimVP: Simpler yet Better Video Prediction", CVPR 2022), IncepU translator.

Layout follows OpenSTL's ``SimVP_Model`` with ``model_type='IncepU'`` (SimVP v1):

* **Encoder** -- ``N_S`` ConvSC layers (3x3 conv -> GroupNorm(2) -> SiLU) applied to every frame
  independently; layers alternate stride 1 / stride 2 starting with stride 1, so the latent grid
  is ``H / 2**(N_S//2)``.  The output of the first (full-resolution) layer is kept as a skip.
* **Translator** -- IncepU: a UNet of ``2*N_T`` Inception blocks over the time-merged latent
  ``(B, T_in*hid_S, h, w)``.  Each block is a 1x1 conv to ``hid_T/2`` channels followed by four
  parallel grouped convs (kernels ``incep_ker``, ``groups`` groups, GroupNorm + LeakyReLU(0.2))
  whose outputs are summed; decoder blocks take the matching encoder block's output concatenated.
* **Decoder** -- ``N_S`` ConvSC layers mirroring the encoder (sub-pixel ``PixelShuffle(2)``
  upsampling where the encoder strided); the last layer gets ``latent + skip`` and a 1x1 conv
  reads out ``C`` channels.

``T_out != T_in``: SimVP itself predicts exactly ``T_in`` frames (OpenSTL truncates, or feeds
predictions back in for longer horizons).  Here the translator's last Inception block emits
``T_out*hid_S`` channels instead of ``T_in*hid_S`` -- a learned mapping over the time-merged
channels -- and the encoder skip ``(B, T_in*hid_S, H, W)`` goes through a 1x1 conv to
``T_out*hid_S`` channels before the decoder.  With ``T_out == T_in`` neither changes anything and
the network is OpenSTL's, parameter for parameter.

``scale > 1``: the decoder's ``hid_S``-channel full-resolution features are upsampled with
transposed convolutions (one stage per prime factor of ``scale``) and the 1x1 readout runs at the
target resolution.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from . import register_backbone
from ._blocks import ConvNormAct, TransposedConvUpsampler, fold_time, int_list, resolve_hparams
from ._specs.simvp import PRESETS
from ._specs.simvp import check as check_hparams
from ._specs.simvp import check_frame as validate_frame_hparams  # noqa: F401  (vit and swin import it here)


def _strides(num_layers: int) -> list[bool]:
    """Which encoder layers downsample: stride 1, 2, 1, 2, ... (the first keeps full resolution)."""
    return [i % 2 == 1 for i in range(num_layers)]


class GroupConvNormAct(nn.Module):
    """Grouped conv -> GroupNorm(groups) -> LeakyReLU(0.2): one Inception branch.

    Like OpenSTL, falls back to a dense conv (and one norm group) when the channels do not split
    into ``groups``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            groups = 1
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class InceptionBlock(nn.Module):
    """SimVP's gInception_ST: 1x1 bottleneck, then summed multi-kernel grouped convs."""

    def __init__(self, in_channels: int, bottleneck: int, out_channels: int, kernels: list[int], groups: int) -> None:
        super().__init__()
        self.bottleneck = nn.Conv2d(in_channels, bottleneck, 1)
        self.branches = nn.ModuleList(GroupConvNormAct(bottleneck, out_channels, k, groups) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(x)
        return sum(branch(x) for branch in self.branches)


class IncepUTranslator(nn.Module):
    """Inception UNet over time-merged channels: ``(B, c_in, h, w) -> (B, c_out, h, w)``."""

    def __init__(
        self, in_channels: int, out_channels: int, hid_T: int, N_T: int, kernels: list[int], groups: int
    ) -> None:
        super().__init__()
        bottleneck = hid_T // 2
        self.encoder = nn.ModuleList(
            InceptionBlock(in_channels if i == 0 else hid_T, bottleneck, hid_T, kernels, groups) for i in range(N_T)
        )
        # Decoder block i > 0 sees [previous output, encoder skip] concatenated, hence 2*hid_T.
        self.decoder = nn.ModuleList(
            InceptionBlock(hid_T if i == 0 else 2 * hid_T, bottleneck, out_channels if i == N_T - 1 else hid_T, kernels, groups)
            for i in range(N_T)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            z = block(z)
            if i < len(self.encoder) - 1:
                skips.append(z)
        z = self.decoder[0](z)
        for block in self.decoder[1:]:
            z = block(torch.cat([z, skips.pop()], dim=1))
        return z


# ``(channels_in, channels_out, latent_grid) -> translator``: called once by :class:`SimVPBase`.
TranslatorFactory = Callable[[int, int, tuple[int, int]], nn.Module]


class SimVPBase(nn.Module):
    """SimVP's encoder, decoder and I/O handling around a pluggable translator.

    ``translator(T_in*hid_S, T_out*hid_S, (h, w))`` must return a module mapping the time-merged
    latent ``(B, T_in*hid_S, h, w) -> (B, T_out*hid_S, h, w)``, where ``(h, w)`` is the encoder's
    output grid ``(H, W) / 2**(N_S//2)``.  Everything else (frame-wise encoder with its
    full-resolution skip, the skip's time projection for ``T_out != T_in``, the decoder and the
    readout/upsampler) is the same for every SimVP variant: :class:`SimVP` plugs in IncepU, the
    ``vit`` and ``swin`` backbones plug in timm transformer blocks (OpenSTL's ``model_type``).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        hid_S: int,
        N_S: int,
        spatio_kernel_enc: int,
        spatio_kernel_dec: int,
        translator: TranslatorFactory,
    ) -> None:
        super().__init__()
        t_in, channels, height, width = in_shape
        self.in_shape = tuple(in_shape)
        self.out_frames = out_frames
        self.hid_S = hid_S

        strides = _strides(N_S)
        downsampling = 2 ** sum(strides)
        self.latent_grid = (height // downsampling, width // downsampling)
        self.encoder = nn.ModuleList(
            ConvNormAct(channels if i == 0 else hid_S, hid_S, spatio_kernel_enc, stride=2 if down else 1)
            for i, down in enumerate(strides)
        )
        self.translator = translator(t_in * hid_S, out_frames * hid_S, self.latent_grid)
        # Maps the full-resolution skip from T_in to T_out frames; only exists when they differ.
        self.skip_time_projection = (
            nn.Conv2d(t_in * hid_S, out_frames * hid_S, 1) if out_frames != t_in else nn.Identity()
        )
        self.decoder = nn.ModuleList(
            ConvNormAct(hid_S, hid_S, spatio_kernel_dec, upsample=up) for up in reversed(strides)
        )
        self.readout = (
            nn.Conv2d(hid_S, channels, 1) if scale == 1 else TransposedConvUpsampler(hid_S, channels, scale, hid_S)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"{type(self).__name__} built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")

        latent = fold_time(x)
        for i, layer in enumerate(self.encoder):
            latent = layer(latent)
            if i == 0:
                skip = latent
        _, _, h, w = latent.shape

        # Translator mixes time and channels: (B, T_in*hid_S, h, w) -> (B, T_out*hid_S, h, w).
        hidden = self.translator(latent.reshape(batch, -1, h, w))
        hidden = hidden.reshape(batch * self.out_frames, self.hid_S, h, w)
        skip = self.skip_time_projection(skip.reshape(batch, -1, *skip.shape[2:]))
        skip = skip.reshape(batch * self.out_frames, self.hid_S, *skip.shape[2:])

        for layer in self.decoder[:-1]:
            hidden = layer(hidden)
        frames = self.readout(self.decoder[-1](hidden + skip))
        return frames.reshape(batch, self.out_frames, *frames.shape[1:])


class SimVP(SimVPBase):
    """``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``; see the module docstring."""

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        hid_S: int,
        hid_T: int,
        N_S: int,
        N_T: int,
        incep_ker: list[int],
        groups: int,
        spatio_kernel_enc: int,
        spatio_kernel_dec: int,
    ) -> None:
        super().__init__(
            in_shape,
            out_frames,
            scale,
            hid_S=hid_S,
            N_S=N_S,
            spatio_kernel_enc=spatio_kernel_enc,
            spatio_kernel_dec=spatio_kernel_dec,
            translator=lambda c_in, c_out, grid: IncepUTranslator(c_in, c_out, hid_T, N_T, incep_ker, groups),
        )


@register_backbone("simvp")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> SimVP:
    hp = resolve_hparams("simvp", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    return SimVP(
        in_shape,
        out_frames,
        scale,
        hid_S=int(hp["hid_S"]),
        hid_T=int(hp["hid_T"]),
        N_S=int(hp["N_S"]),
        N_T=int(hp["N_T"]),
        incep_ker=int_list(hp["incep_ker"], "incep_ker"),
        groups=int(hp["groups"]),
        spatio_kernel_enc=int(hp["spatio_kernel_enc"]),
        spatio_kernel_dec=int(hp["spatio_kernel_dec"]),
    )
