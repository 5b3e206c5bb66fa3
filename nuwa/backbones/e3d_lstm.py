"""E3D-LSTM (Wang et al., "Eidetic 3D LSTM: A Model for Video Prediction and Beyond", ICLR 2019),
laid out as OpenSTL's ``E3DLSTM_Model`` (itself a port of the authors' TensorFlow release).

* Frames are space-to-depth reshaped (``patch_size``) so the recurrent state lives on an
  ``H/p x W/p`` grid with ``C*p*p`` input channels.
* 3D input windows: the cells see the last ``window_length`` fed frames stacked along a time
  axis, ``(B, C*p*p, window_length, H/p, W/p)`` (zero frames before the first one); the window is
  re-formed every ``window_length - window_stride`` steps (every step with OpenSTL's 2 / 1) and
  all states ``H, C, M`` carry the same ``window_length`` time axis.  Convolutions are 3D with
  ``temporal_filter_size x filter_size x filter_size`` kernels and "same" padding (time padded
  at the end, as TensorFlow's ``padding='SAME'`` of the release; OpenSTL instead convolves
  without time padding and repeats the result with nearest interpolation).
* Eidetic 3D LSTM cells (all ``num_hidden`` channels wide): ``conv_x(x)`` gives 7 slices
  (i, g, r, o; i', g', f'), ``conv_h(H)`` 4 (i, g, r, o).  The recall gate ``R = sigmoid(r_x + r_h)``
  attends over the layer's stored history of cell states ("eidetic memory"):
  ``RECALL = softmax(R K^T) V`` with ``K = V = [C_0, ..., C_{t-1}]``, every (time, y, x) position
  of the window a token with ``num_hidden`` features (no 1/sqrt(d) scaling, as the paper and
  release); ``C_t = LayerNorm(C_{t-1} + RECALL) + i*g``.  The spatiotemporal memory ``M`` flows
  zig-zag (up through the layers, then from the top layer to the bottom of the next step):
  ``conv_gm(M)`` gives (i', f', g', m), ``M' = f'*tanh(m) + i'*g'`` (the release's form; the
  paper writes ``f'*M``).  Output ``H = sigmoid(o_x + o_h + conv_new_cell(C) + conv_new_gm(M'))
  * tanh(conv_last([C, M']))`` with a 1x1x1 ``conv_last``.  Gate biases live in ``conv_x``
  (forget bias f' starts at 1, the release's ``_forget_bias``), or in the LayerNorms' shifts.
* A bias-free ``(window_length, 1, 1)``-strided 3D conv reads a frame out of the top ``H``.
* Training: ``training_method = "scheduled_sampling"`` as OpenSTL's E3D-LSTM config (see
  :mod:`nuwa.methods`); the rollout loop is ``_blocks.recurrent_rollout``, and ``forward(x)``
  feeds the inputs, then its own predictions.

Fixed relative to OpenSTL's port (no parameter changes): its cell returns the *incoming* ``M``
(so ``M`` never leaves the zeros it starts from; this is also in the TF release), and its recall
reshapes channels-first ``(B, C, T, H, W)`` tensors straight to ``(B, -1, C)``, which mixes
channels and positions into the tokens; here ``M'`` is passed on and tokens are positions.
The output gate is ``sigmoid(...)`` as in the paper (the release has ``sigmoid(tanh(...))``).

``scale > 1``: native-resolution frames are predicted and fed back; each output frame is then
upsampled with transposed convolutions (``C -> upsample_channels -> C``).

Parameters vs. OpenSTL's published count (TaxiBJ, 4 x 128 hidden, 2x5x5, patch 2, 50.99M): the
same live network, 50,987,008 bias-free weights (per cell ``conv_x`` 7*128*in*50, ``conv_h`` and
``conv_gm`` 4*128*128*50 each, ``conv_new_cell`` and ``conv_new_gm`` 128*128*50 each, ``conv_last``
128*256, the cell LayerNorm 2*128*2*16*16; plus the readout 128*8*2); the ``reference`` preset adds
the ``conv_x`` gate biases (4 * 896) for 50,990,592.
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
from ._specs.e3d_lstm import PRESETS
from ._specs.e3d_lstm import check as check_hparams


class SameConv3d(nn.Module):
    """3D conv with "same" output size: time padded ``(k-1)//2`` before and the rest after (TF's
    SAME), space symmetrically (odd spatial kernels); optionally LayerNorm'ed over ``norm_shape``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: tuple[int, int, int], bias: bool,
        norm_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.time_pad = ((kt - 1) // 2, kt - 1 - (kt - 1) // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=(0, kh // 2, kw // 2), bias=bias)
        self.norm = nn.LayerNorm([out_channels, *norm_shape]) if norm_shape is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.time_pad):
            x = F.pad(x, (0, 0, 0, 0, *self.time_pad))
        y = self.conv(x)
        return self.norm(y) if self.norm is not None else y


def recall(query: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
    """Eidetic recall: ``softmax(Q K^T) V`` over every (time, y, x) position of the stored states.

    ``query`` is ``(B, C, T, H, W)``, ``history`` a non-empty list of such cell states; each
    position is a token with ``C`` features.  Returns ``(B, C, T, H, W)``.
    """
    q = query.flatten(2).transpose(1, 2)  # (B, T*H*W, C)
    kv = torch.cat(history, dim=2).flatten(2).transpose(1, 2)  # (B, n*T*H*W, C)
    weights = torch.softmax(torch.bmm(q, kv.transpose(1, 2)), dim=-1)  # (B, T*H*W, n*T*H*W)
    return torch.bmm(weights, kv).transpose(1, 2).reshape(query.shape)


class Eidetic3DLSTMCell(nn.Module):
    """``(x, H, C, M, history) -> (H', C', M')``; all states ``(B, hidden, window, h, w)``."""

    def __init__(
        self, in_channels: int, hidden_channels: int, kernel: tuple[int, int, int], window_length: int,
        height: int, width: int, layer_norm: bool,
    ) -> None:
        super().__init__()
        hid = hidden_channels
        norm_shape = (window_length, height, width) if layer_norm else None
        self.conv_x = SameConv3d(in_channels, 7 * hid, kernel, bias=not layer_norm, norm_shape=norm_shape)
        self.conv_h = SameConv3d(hid, 4 * hid, kernel, bias=False, norm_shape=norm_shape)
        self.conv_gm = SameConv3d(hid, 4 * hid, kernel, bias=False, norm_shape=norm_shape)
        self.conv_new_cell = SameConv3d(hid, hid, kernel, bias=False, norm_shape=norm_shape)
        self.conv_new_gm = SameConv3d(hid, hid, kernel, bias=False, norm_shape=norm_shape)
        self.conv_last = nn.Conv3d(2 * hid, hid, 1, bias=False)
        self.norm_cell = nn.LayerNorm([hid, window_length, height, width])
        # The memory's forget gate f' starts open (bias 1), as the release's _forget_bias.
        with torch.no_grad():
            bias = self.conv_x.norm.bias if layer_norm else self.conv_x.conv.bias
            bias[6 * hid : 7 * hid].fill_(1.0)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, m: torch.Tensor, history: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i_x, g_x, r_x, o_x, i_xm, g_xm, f_xm = self.conv_x(x).chunk(7, dim=1)
        i_h, g_h, r_h, o_h = self.conv_h(h).chunk(4, dim=1)
        i_t = torch.sigmoid(i_x + i_h)
        r_t = torch.sigmoid(r_x + r_h)
        g_t = torch.tanh(g_x + g_h)
        recalled = c + recall(r_t, history) if history else c
        c = self.norm_cell(recalled) + i_t * g_t

        i_m, f_m, g_m, m_m = self.conv_gm(m).chunk(4, dim=1)
        m = torch.sigmoid(f_xm + f_m) * torch.tanh(m_m) + torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)

        o_t = torch.sigmoid(o_x + o_h + self.conv_new_cell(c) + self.conv_new_gm(m))
        h = o_t * torch.tanh(self.conv_last(torch.cat([c, m], dim=1)))
        return h, c, m


class E3DLSTM(nn.Module):
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
        temporal_filter_size: int,
        window_length: int,
        window_stride: int,
        patch_size: int,
        layer_norm: bool,
        upsample_channels: int,
    ) -> None:
        super().__init__()
        _, channels, height, width = in_shape
        self.in_shape = tuple(in_shape)
        self.out_frames = out_frames
        self.patch_size = patch_size
        self.num_hidden = list(num_hidden)
        self.window_length = window_length
        self.window_period = window_length - window_stride
        grid_h, grid_w = height // patch_size, width // patch_size
        frame_channels = channels * patch_size * patch_size
        kernel = (temporal_filter_size, filter_size, filter_size)
        self.cells = nn.ModuleList(
            Eidetic3DLSTMCell(
                frame_channels if i == 0 else num_hidden[i - 1], hidden, kernel, window_length, grid_h, grid_w,
                layer_norm,
            )
            for i, hidden in enumerate(num_hidden)
        )
        self.readout3d = nn.Conv3d(
            num_hidden[-1], frame_channels, (window_length, 1, 1), stride=(window_length, 1, 1), bias=False
        )
        self.upsampler = (
            TransposedConvUpsampler(channels, channels, scale, upsample_channels) if scale > 1 else None
        )

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.readout3d(h).squeeze(2)

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None, true_frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = x.shape[0]
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"E3DLSTM built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")
        grid = (self.in_shape[2] // self.patch_size, self.in_shape[3] // self.patch_size)
        frame_channels = self.in_shape[1] * self.patch_size**2
        state_shape = (self.window_length, *grid)
        hidden = [x.new_zeros(batch, n, *state_shape) for n in self.num_hidden]
        cells = [x.new_zeros(batch, n, *state_shape) for n in self.num_hidden]
        histories: list[list[torch.Tensor]] = [[] for _ in self.num_hidden]  # C of every past step
        memory = [x.new_zeros(batch, self.num_hidden[0], *state_shape)]  # M, passed from cell to cell
        fed = [x.new_zeros(batch, frame_channels, *grid)] * (self.window_length - 1)  # frames fed so far
        window = [None]
        count = [0]

        def step(frame: torch.Tensor) -> torch.Tensor:
            fed.append(frame)
            if count[0] % self.window_period == 0:
                window[0] = torch.stack(fed[-self.window_length :], dim=2)  # (B, C*p*p, window, h, w)
            count[0] += 1
            layer_input = window[0]
            for i, cell in enumerate(self.cells):
                hidden[i], cells[i], memory[0] = cell(layer_input, hidden[i], cells[i], memory[0], histories[i])
                histories[i].append(cells[i])
                layer_input = hidden[i]
            return layer_input

        return recurrent_rollout(
            step, self.readout, x, self.out_frames, targets=targets, true_frame_mask=true_frame_mask,
            patch_size=self.patch_size, upsampler=self.upsampler,
        )


@register_backbone("e3d_lstm")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> E3DLSTM:
    hp = resolve_hparams("e3d_lstm", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    filter_size, patch_size = check_recurrent_hparams("e3d_lstm", hp, in_shape, out_frames, scale)
    temporal_filter_size = int(hp["temporal_filter_size"])
    window_length, window_stride = int(hp["window_length"]), int(hp["window_stride"])
    num_hidden = int_list(hp["num_hidden"], "num_hidden")
    return E3DLSTM(
        in_shape,
        out_frames,
        scale,
        num_hidden=num_hidden,
        filter_size=filter_size,
        temporal_filter_size=temporal_filter_size,
        window_length=window_length,
        window_stride=window_stride,
        patch_size=patch_size,
        layer_norm=bool(hp["layer_norm"]),
        upsample_channels=int(hp["upsample_channels"]),
    )
