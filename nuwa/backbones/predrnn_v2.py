"""PredRNN-V2 (Wang et al., "PredRNN: A Recurrent Neural Network for Spatiotemporal Predictive
Learning", TPAMI 2022), laid out as OpenSTL's ``PredRNNv2_Model``.

* Frames are space-to-depth reshaped (``patch_size``) so the recurrent state lives on an
  ``H/p x W/p`` grid with ``C*p*p`` input channels.
* A stack of spatiotemporal LSTM (ST-LSTM) cells, all ``num_hidden`` channels wide with
  ``filter_size`` kernels.  Each keeps a temporal memory ``C`` (per layer, carried along time) and
  updates the spatiotemporal memory ``M``, which flows zig-zag: up through the layers within a
  step, then from the top layer to the bottom layer of the next step.  Gates (OpenSTL's split):
  ``conv_x(x)`` gives 7 slices (i, f, g for C; i', f', g' for M; o), ``conv_h(h)`` 4 (i, f, g, o),
  ``conv_m(M)`` 3 (i', f', g');  ``C' = f*C + i*g``, ``M' = f'*M + i'*g'``,
  ``h' = sigmoid(o_x + o_h + conv_o([C', M'])) * tanh(conv_last([C', M']))`` (1x1 ``conv_last``).
  Gate biases live in ``conv_x`` (forget biases start at 1, OpenSTL's ``_forget_bias``), or in
  the LayerNorms' shifts with ``layer_norm``.
* Memory decoupling: the increments ``delta_c = i*g`` and ``delta_m = i'*g'`` of every layer and
  step go through one shared bias-free 1x1 ``adapter`` conv, are flattened per channel and
  L2-normalised; the loss is ``decouple_beta`` times the mean over layers, steps, samples and
  channels of ``|cos(adapter(delta_c), adapter(delta_m))|`` (the paper's Eq. 6 and OpenSTL take the
  absolute cosine).  It is computed in every training forward (``model.training`` or a
  ``targets``/``true_frame_mask`` given) and exposed as ``self.auxiliary_loss``, which
  :func:`nuwa.methods.training_loss` adds to the MSE; in evaluation it is ``None``.  The adapter
  is trained by this loss alone -- the forecast never passes through it.
* A bias-free 1x1 conv reads a frame out of the top hidden state at each step.
* Training: ``training_method = "reverse_scheduled_sampling"`` (see :mod:`nuwa.methods`): input
  steps too may be fed the model's own previous prediction.  The rollout loop is
  ``_blocks.recurrent_rollout``; ``forward(x)`` feeds the inputs, then its own predictions.
  (OpenSTL's loss also covers the predictions of input frames 1..T_in-1; here the loss is the
  forecast's MSE, as for every backbone.)

``scale > 1``: native-resolution frames are predicted and fed back; each output frame is then
upsampled with transposed convolutions (``C -> upsample_channels -> C``).

Parameters vs. OpenSTL's published count (TaxiBJ, 4 x 128 hidden, 5x5, patch 2, 23.67M): the
live network is the same, 23,674,880 bias-free weights (per cell ``conv_x`` 7*128*in*25,
``conv_h`` 4*128*128*25, ``conv_m`` 3*128*128*25, ``conv_o`` 128*256*25, ``conv_last``
128*256; plus the readout 128*8 and the adapter 128*128), and the ``reference`` preset adds the
``conv_x`` gate biases (4 * 896) for 23,678,464.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import register_backbone
from ._blocks import (
    TransposedConvUpsampler,
    check_recurrent_hparams,
    int_list,
    recurrent_rollout,
    resolve_hparams,
)
from ._specs.predrnn_v2 import PRESETS
from ._specs.predrnn_v2 import check as check_hparams


def _conv(in_channels: int, out_channels: int, kernel_size: int, height: int, width: int, layer_norm: bool,
          bias: bool = False) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias and not layer_norm)
    return nn.Sequential(conv, nn.LayerNorm([out_channels, height, width])) if layer_norm else conv


class SpatioTemporalLSTMCell(nn.Module):
    """``(x, h, C, M) -> (h', C', M', delta_c, delta_m)`` on a fixed ``height x width`` grid."""

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel_size: int, height: int, width: int, layer_norm: bool
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        hid = hidden_channels
        self.conv_x = _conv(in_channels, 7 * hid, kernel_size, height, width, layer_norm, bias=True)
        self.conv_h = _conv(hid, 4 * hid, kernel_size, height, width, layer_norm)
        self.conv_m = _conv(hid, 3 * hid, kernel_size, height, width, layer_norm)
        self.conv_o = _conv(2 * hid, hid, kernel_size, height, width, layer_norm)
        self.conv_last = nn.Conv2d(2 * hid, hid, 1, bias=False)
        # Forget biases (f for C, f' for M) start at 1 so both memories initially remember.
        with torch.no_grad():
            bias = self.conv_x[1].bias if layer_norm else self.conv_x.bias
            bias[hid : 2 * hid].fill_(1.0)
            bias[4 * hid : 5 * hid].fill_(1.0)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, m: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = self.conv_x(x).chunk(7, dim=1)
        i_h, f_h, g_h, o_h = self.conv_h(h).chunk(4, dim=1)
        i_m, f_m, g_m = self.conv_m(m).chunk(3, dim=1)

        delta_c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        c = torch.sigmoid(f_x + f_h) * c + delta_c
        delta_m = torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)
        m = torch.sigmoid(f_xm + f_m) * m + delta_m

        memory = torch.cat([c, m], dim=1)
        h = torch.sigmoid(o_x + o_h + self.conv_o(memory)) * torch.tanh(self.conv_last(memory))
        return h, c, m, delta_c, delta_m


class PredRNNv2(nn.Module):
    """``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``; see the module docstring."""

    training_method = "reverse_scheduled_sampling"

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
        decouple_beta: float,
        upsample_channels: int,
    ) -> None:
        super().__init__()
        _, channels, height, width = in_shape
        self.in_shape = tuple(in_shape)
        self.out_frames = out_frames
        self.patch_size = patch_size
        self.num_hidden = list(num_hidden)
        self.decouple_beta = decouple_beta
        grid_h, grid_w = height // patch_size, width // patch_size
        frame_channels = channels * patch_size * patch_size
        self.cells = nn.ModuleList(
            SpatioTemporalLSTMCell(
                frame_channels if i == 0 else num_hidden[i - 1], hidden, filter_size, grid_h, grid_w, layer_norm
            )
            for i, hidden in enumerate(num_hidden)
        )
        self.readout = nn.Conv2d(num_hidden[-1], frame_channels, 1, bias=False)
        # Shared by all layers (OpenSTL's ``adapter``); only the decoupling loss uses it.
        self.adapter = nn.Conv2d(num_hidden[0], num_hidden[0], 1, bias=False)
        self.upsampler = (
            TransposedConvUpsampler(channels, channels, scale, upsample_channels) if scale > 1 else None
        )
        self.auxiliary_loss: torch.Tensor | None = None

    def _decoupling(self, delta_c: torch.Tensor, delta_m: torch.Tensor) -> torch.Tensor:
        """Mean |cosine| between the adapted increments, per sample and channel over the grid."""
        c = F.normalize(self.adapter(delta_c).flatten(2), dim=2)
        m = F.normalize(self.adapter(delta_m).flatten(2), dim=2)
        return (c * m).sum(dim=2).abs().mean()

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, true_frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"PredRNNv2 built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")
        training = self.training or targets is not None or true_frame_mask is not None
        grid = (self.in_shape[2] // self.patch_size, self.in_shape[3] // self.patch_size)
        hidden = [x.new_zeros(batch, n, *grid) for n in self.num_hidden]
        cells = [x.new_zeros(batch, n, *grid) for n in self.num_hidden]
        memory = [x.new_zeros(batch, self.num_hidden[0], *grid)]  # M, passed from cell to cell
        decoupling: list[torch.Tensor] = []

        def step(frame: torch.Tensor) -> torch.Tensor:
            layer_input = frame
            for i, cell in enumerate(self.cells):
                hidden[i], cells[i], memory[0], delta_c, delta_m = cell(layer_input, hidden[i], cells[i], memory[0])
                if training:
                    decoupling.append(self._decoupling(delta_c, delta_m))
                layer_input = hidden[i]
            return layer_input

        frames = recurrent_rollout(
            step, self.readout, x, self.out_frames, targets=targets, true_frame_mask=true_frame_mask,
            patch_size=self.patch_size, upsampler=self.upsampler,
        )
        self.auxiliary_loss = self.decouple_beta * torch.stack(decoupling).mean() if training else None
        return frames


@register_backbone("predrnn_v2")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> PredRNNv2:
    hp = resolve_hparams("predrnn_v2", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    filter_size, patch_size = check_recurrent_hparams("predrnn_v2", hp, in_shape, out_frames, scale)
    num_hidden = int_list(hp["num_hidden"], "num_hidden")
    decouple_beta = float(hp["decouple_beta"])
    return PredRNNv2(
        in_shape,
        out_frames,
        scale,
        num_hidden=num_hidden,
        filter_size=filter_size,
        patch_size=patch_size,
        layer_norm=bool(hp["layer_norm"]),
        decouple_beta=decouple_beta,
        upsample_channels=int(hp["upsample_channels"]),
    )
