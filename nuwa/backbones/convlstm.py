"""ConvLSTM (Shi et al., "Convolutional LSTM Network: A Machine Learning Approach for
Precipitation Nowcasting", NeurIPS 2015), laid out as OpenSTL's ``ConvLSTM_Model``.

* Frames are space-to-depth reshaped (``patch_size``, as PredRNN/OpenSTL do) so the recurrent
  state lives on an ``H/p x W/p`` grid with ``C*p*p`` input channels.
* A stack of ConvLSTM cells (``num_hidden[i]`` channels, ``filter_size`` kernels, stride 1); gate
  pre-activations are ``conv_x(x) + conv_h(h)`` (each optionally LayerNorm'ed over
  ``(4*hidden, h, w)`` as OpenSTL's ``layer_norm``).  No peephole terms (OpenSTL has none either).
* A bias-free 1x1 conv reads a frame out of the top hidden state.
* The ``T_in`` inputs are consumed one per step; the prediction made after the last input is the
  first output frame and is fed back as the next input, ``T_out`` times in all
  (``T_in + T_out - 1`` cell steps; the loop is ``_blocks.recurrent_rollout``).
* Training: ``training_method = "scheduled_sampling"`` as OpenSTL trains ConvLSTM (see
  :mod:`nuwa.methods`).  ``forward(x, targets, true_frame_mask)`` feeds step ``s`` the true
  frame ``s`` (an input, or a target frame once past the inputs) where ``true_frame_mask[:, s-1]``
  is 1, else the previous step's prediction.  ``forward(x)`` (evaluation) never sees targets:
  inputs, then its own predictions, exactly as before the training methods existed.

``scale > 1``: the model predicts (and feeds back) native-resolution frames; each output frame is
then upsampled with transposed convolutions (``C -> upsample_channels -> C``).  Teacher-forced
targets at the output resolution are area-averaged down to the input grid before being fed.

Parameters vs. OpenSTL's published count: OpenSTL's ``ConvLSTMCell`` additionally constructs a
``conv_o`` (5x5, 2*hidden -> hidden) and a ``conv_last`` (1x1, 2*hidden -> hidden) per cell that
its ``forward`` never calls.  Those account for 3,407,872 of the 14.98M reported for TaxiBJ
(4 x 128 hidden, 5x5, patch 2); the live network is 11.57M, which is what the ``reference``
preset builds.  They are not reproduced: dead weights would only confuse optimisers and tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_backbone
from ._blocks import (
    TransposedConvUpsampler,
    check_recurrent_hparams,
    int_list,
    recurrent_rollout,
    resolve_hparams,
)
from ._specs.convlstm import PRESETS
from ._specs.convlstm import check as check_hparams


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer: ``(x, (h, c)) -> (h', c')`` on a fixed ``height x width`` grid."""

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int, height: int, width: int, layer_norm: bool
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        gates = 4 * hidden_channels
        padding = kernel_size // 2
        # Gate biases (Shi et al.'s b_i, b_f, b_c, b_o) live in conv_x, or in the LayerNorm's shift
        # when layer norm is on (a conv bias in front of it would be redundant).
        self.conv_x = nn.Conv2d(in_channels, gates, kernel_size, padding=padding, bias=not layer_norm)
        self.conv_h = nn.Conv2d(hidden_channels, gates, kernel_size, padding=padding, bias=False)
        self.norm_x = nn.LayerNorm([gates, height, width]) if layer_norm else nn.Identity()
        self.norm_h = nn.LayerNorm([gates, height, width]) if layer_norm else nn.Identity()
        # Forget-gate bias starts at 1 so the cell initially remembers (OpenSTL's _forget_bias).
        with torch.no_grad():
            forget = slice(hidden_channels, 2 * hidden_channels)
            if layer_norm:
                self.norm_x.bias[forget].fill_(1.0)
            else:
                self.conv_x.bias[forget].fill_(1.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = self.norm_x(self.conv_x(x)) + self.norm_h(self.conv_h(h))
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``; see the module docstring."""

    training_method = "scheduled_sampling"

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        num_hidden: list[int],
        filter_size: int,
        patch_size: int,
        layer_norm: bool,
        upsample_channels: int,
    ) -> None:
        super().__init__()
        t_in, channels, height, width = in_shape
        self.in_shape = tuple(in_shape)
        self.out_frames = out_frames
        self.patch_size = patch_size
        self.num_hidden = list(num_hidden)
        grid_h, grid_w = height // patch_size, width // patch_size
        frame_channels = channels * patch_size * patch_size
        self.cells = nn.ModuleList(
            ConvLSTMCell(frame_channels if i == 0 else num_hidden[i - 1], hidden, filter_size, grid_h, grid_w, layer_norm)
            for i, hidden in enumerate(num_hidden)
        )
        self.readout = nn.Conv2d(num_hidden[-1], frame_channels, 1, bias=False)
        self.upsampler = (
            TransposedConvUpsampler(channels, channels, scale, upsample_channels) if scale > 1 else nn.Identity()
        )

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, true_frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"ConvLSTM built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")
        grid = (self.in_shape[2] // self.patch_size, self.in_shape[3] // self.patch_size)
        states = [
            (x.new_zeros(batch, hidden, *grid), x.new_zeros(batch, hidden, *grid)) for hidden in self.num_hidden
        ]

        def step(frame: torch.Tensor) -> torch.Tensor:
            layer_input = frame
            for i, cell in enumerate(self.cells):
                states[i] = cell(layer_input, states[i])
                layer_input = states[i][0]
            return layer_input

        return recurrent_rollout(
            step, self.readout, x, self.out_frames, targets=targets, true_frame_mask=true_frame_mask,
            patch_size=self.patch_size, upsampler=self.upsampler,
        )


@register_backbone("convlstm")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> ConvLSTM:
    hp = resolve_hparams("convlstm", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    filter_size, patch_size = check_recurrent_hparams("convlstm", hp, in_shape, out_frames, scale)
    return ConvLSTM(
        in_shape,
        out_frames,
        scale,
        num_hidden=int_list(hp["num_hidden"], "num_hidden"),
        filter_size=filter_size,
        patch_size=patch_size,
        layer_norm=bool(hp["layer_norm"]),
        upsample_channels=int(hp["upsample_channels"]),
    )
