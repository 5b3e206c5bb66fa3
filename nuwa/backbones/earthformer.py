"""Earthformer (Gao et al., "Earthformer: Exploring Space-Time Transformers for Earth System
Forecasting", NeurIPS 2022): a hierarchical encoder-decoder of Cuboid Attention blocks.

Layout follows the official ``CuboidTransformerModel`` (amazon-science/earth-forecasting-transformer,
``src/earthformer/cuboid_transformer/cuboid_transformer.py``); tensors are channels-last
``(B, T, H, W, C)`` inside the network, as there.

* **Cuboid attention** -- the ``(T, H, W)`` token grid is zero-padded to a multiple of the cuboid
  size ``(b_t, b_h, b_w)``, optionally rolled by ``-shift`` (shifted windows, with a mask so that
  tokens only attend to tokens from the same un-shifted region), and decomposed into
  non-overlapping cuboids (:func:`cuboid_reorder`): per axis, ``'l'`` (local) takes ``b``
  consecutive positions, ``'d'`` (dilated) takes ``b`` positions strided by ``L / b``.
  Self-attention runs inside every cuboid in parallel (with a learned relative-position bias),
  then :func:`cuboid_reorder_reverse`, the reverse roll and a crop restore the grid.
* **Global vectors** -- ``num_global_vectors`` learned vectors.  Every token's softmax runs over
  its cuboid *and* the global vectors (local-to-global), and the global vectors are updated by
  attending to *all* tokens (global-to-local, plus global-to-global with
  ``use_global_self_attn``).  ``separate_global_qkv`` gives these paths their own projections,
  as in the SEVIR configuration.  A layer's tokens read the incoming global vectors and its
  update sees every token, so information crosses cuboids from one layer to the next.
* **Patterns** -- a block stacks several cuboid attentions, each followed by a pre-norm FFN
  (``use_inter_ffn=True``).  Patterns are named as in ``cuboid_transformer_patterns.py``
  (``axial`` = cuboids ``(T,1,1), (1,H,1), (1,1,W)``, ``video_swin_PxM``, ``divided_st``,
  ``spatial_lg_M``, ``axial_space_dilate_K``, ``full``; cross: ``cross_KxK[_lg|_heter]``) or
  given explicitly as ``[(cuboid_size, strategy, shift_size), ...]``, e.g.
  ``[((2, 4, 4), "lll", (0, 0, 0)), ((2, 4, 4), "lll", (1, 2, 2)), ((1, 4, 4), "ddd", (0, 0, 0))]``
  (cross: ``[(cuboid_hw, shift_hw, strategy, n_temporal), ...]``).
* **Hierarchy** -- a stack-conv stem (``[3x3 conv, GroupNorm, LeakyReLU] x n`` then 2D patch
  merging, per stage) embeds frames onto a coarse grid; the encoder has ``len(enc_depth)`` levels
  joined by patch merging (LayerNorm + linear over 2x2 neighbourhoods; the global vectors get a
  linear map to the next width).  Level widths are ``base_units * downsample**(scale_alpha*i)``.
* **Decoder** -- non-autoregressive: the ``T_out`` initial queries are a learned positional
  embedding through a linear layer (``z_init_method='zeros'``).  From the top level down it
  alternates cuboid self-attention blocks and cuboid *cross*-attention blocks to the encoder
  memory of the same level (the top level starts with cross-attention), with nearest-upsample +
  3x3 conv between levels.  A stack of [nearest upsample + conv, convs] stages mirrors the stem,
  and a linear layer reads out ``C`` channels.  Cross-attention cuboids split ``(h, w)`` as in
  self-attention and split time into ``n_temporal`` groups (memory padded on the left, queries
  on the right).

``scale > 1``: the final linear readout is replaced by transposed-conv upsampling stages (one per
prime factor of ``scale``) ending in a 1x1 conv, applied frame-wise.

Differences from the official code:

* Shapes are known at build time, so cuboid sizes are clamped to each level's grid (the official
  ``update_cuboid_size_shift_size``) once, and relative-position tables have exactly the entries
  that occur.  Decoder self-attention patterns are derived from the decoder's own
  ``(T_out, h, w)`` grid (the official code uses the encoder memory's ``T_in``, which with
  ``T_out > T_in`` would split the "axial" time cuboid in two).  The cross-attention table has
  ``T_x + T_mem - 1`` temporal offsets instead of ``2 (T_in + T_out) - 1``, and cross-attention,
  like self-attention, drops the shift along an axis that holds a single cuboid.
* Global-vector update projections whose output nothing reads are not built (in the SEVIR
  configuration the decoder ignores the global vectors, so the official model carries 459,008
  parameters that never receive a gradient: the last encoder attention layer's global update).
* ``padding_type='ignore'`` masks padded keys; a row with nothing left to attend to (only a
  padded query, cropped afterwards) attends to everything instead of returning zeros.  The
  ``'nearest'`` padding, ``use_inter_ffn=False``, ``global_dim_ratio != 1``,
  ``dec_use_first_self_attn`` and gradient checkpointing are not implemented.
* The attention arithmetic is ``F.scaled_dot_product_attention``.  Where two different queries
  meet in one softmax (``separate_global_qkv``: token queries ``q`` against token keys and
  ``q_l2g`` against global keys), queries are concatenated ``[q, q_l2g]`` and keys zero-padded
  ``[k, 0]`` / ``[0, k_g]`` so one SDPA call computes ``q.k`` and ``q_l2g.k_g`` jointly.
* Initialisation follows the official mode "0" (Kaiming-normal linear/conv weights, zero biases,
  truncated-normal embeddings), except that the final readout's weight is scaled by 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import register_backbone
from ._blocks import TransposedConvUpsampler, int_list, resolve_hparams
from ._specs.earthformer import (  # noqa: F401  (the patterns are this module's API too)
    PRESETS,
    CrossSpec,
    SelfSpec,
    Triple,
    check as check_hparams,
    cross_attention_pattern,
    out_hw,
    self_attention_pattern,
)

_ACTIVATIONS = {"gelu": nn.GELU, "leaky": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, "silu": nn.SiLU}


# ---------------------------------------------------------------------------------------------
# Cuboid decomposition
# ---------------------------------------------------------------------------------------------



def cuboid_reorder(x: torch.Tensor, cuboid_size: Sequence[int], strategy: Sequence[str]) -> torch.Tensor:
    """``(B, T, H, W, C) -> (B, num_cuboids, volume, C)``; the grid must divide by ``cuboid_size``.

    Along an axis of length ``L`` with block ``b``: ``'l'`` (local) puts positions
    ``[j*b, (j+1)*b)`` in cuboid ``j``; ``'d'`` (dilated) puts ``j, j + L/b, j + 2L/b, ...``.
    Cuboids are numbered and their tokens flattened in ``(t, h, w)`` order.
    """
    batch, *grid, channels = x.shape
    shape, outer, inner = [batch], [], []
    for axis, (length, block, how) in enumerate(zip(grid, cuboid_size, strategy)):
        if length % block:
            raise ValueError(f"axis {axis}: length {length} is not divisible by cuboid size {block}")
        if how == "l":
            shape += [length // block, block]
            outer.append(1 + 2 * axis)
            inner.append(2 + 2 * axis)
        elif how == "d":
            shape += [block, length // block]
            outer.append(2 + 2 * axis)
            inner.append(1 + 2 * axis)
        else:
            raise ValueError(f"strategy must be 'l' or 'd' per axis, got {how!r}")
    x = x.reshape(*shape, channels).permute(0, *outer, *inner, 7)
    return x.reshape(batch, -1, math.prod(cuboid_size), channels)


def cuboid_reorder_reverse(
    x: torch.Tensor, cuboid_size: Sequence[int], strategy: Sequence[str], grid: Sequence[int]
) -> torch.Tensor:
    """Inverse of :func:`cuboid_reorder`: ``(B, num_cuboids, volume, C) -> (B, T, H, W, C)``."""
    batch, _, _, channels = x.shape
    x = x.reshape(batch, *(n // b for n, b in zip(grid, cuboid_size)), *cuboid_size, channels)
    perm = [0]
    for axis, how in enumerate(strategy):
        perm += [1 + axis, 4 + axis] if how == "l" else [4 + axis, 1 + axis]
    return x.permute(*perm, 7).reshape(batch, *grid, channels)


def _pad_grid(x: torch.Tensor, pad_t: int, pad_h: int, pad_w: int, t_left: bool = False) -> torch.Tensor:
    if not (pad_t or pad_h or pad_w):
        return x
    return F.pad(x, (0, 0, 0, pad_w, 0, pad_h) + ((pad_t, 0) if t_left else (0, pad_t)))


def _shift_regions(length: int, block: int, shift: int) -> torch.Tensor:
    """Region labels along one rolled axis (Swin's three slices; one region when unshifted)."""
    labels = torch.zeros(length, dtype=torch.long)
    if shift:
        labels[length - block : length - shift] = 1
        labels[length - shift :] = 2
    return labels


def _relative_position_index(q_size: Sequence[int], k_size: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Index into a bias table for every (query, key) pair of a cuboid; returns (index, rows)."""

    def coords(size: Sequence[int]) -> torch.Tensor:
        return torch.stack(torch.meshgrid(*(torch.arange(s) for s in size), indexing="ij")).flatten(1)

    relative = coords(q_size)[:, :, None] - coords(k_size)[:, None, :]
    spans = [q + k - 1 for q, k in zip(q_size, k_size)]
    index = torch.zeros_like(relative[0])
    for axis in range(3):
        index = index * spans[axis] + relative[axis] + k_size[axis] - 1
    return index, math.prod(spans)


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Bool ``(..., L_q, L_k)`` -> 0 / -inf.  Rows with nothing allowed (padded queries whose
    output is cropped anyway) attend to everything so softmax never sees an all--inf row."""
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


# Attention patterns: self_attention_pattern and cross_attention_pattern live in
# nuwa.backbones._specs.earthformer (torch-free, so that `nuwa validate` checks them on every grid).


# ---------------------------------------------------------------------------------------------
# Cuboid attention layers
# ---------------------------------------------------------------------------------------------


def _split_heads(t: torch.Tensor, count: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``(B, n, v, count*C) -> count x (B, n, heads, v, C/heads)``."""
    b, n, v, _ = t.shape
    return t.reshape(b, n, v, count, heads, -1).permute(3, 0, 1, 4, 2, 5).unbind(0)


def _split_global_heads(t: torch.Tensor, count: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``(B, N, count*C) -> count x (B, heads, N, C/heads)``."""
    b, n, _ = t.shape
    return t.reshape(b, n, count, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _two_query_keys(k_a: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    """Keys ``[k_a, 0]`` then ``[0, k_b]`` (along the sequence) for queries ``[q_a, q_b]``."""
    return torch.cat([F.pad(k_a, (0, k_b.shape[-1])), F.pad(k_b, (k_a.shape[-1], 0))], dim=-2)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, dropout_p: float, scale: float
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``.  On CPU, key sequences shorter than 16 get masked dummy
    keys: PyTorch's CPU softmax over rows shorter than its vector width is ~10x slower, and
    cuboids (axial ones especially) are short."""
    short = 16 - k.shape[-2]
    if q.device.type == "cpu" and short > 0:
        k, v = F.pad(k, (0, 0, 0, short)), F.pad(v, (0, 0, 0, short))
        if bias is None:
            bias = q.new_zeros(q.shape[-2], k.shape[-2] - short)
        bias = F.pad(bias, (0, short), value=float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


class CuboidSelfAttention(nn.Module):
    """Cuboid self-attention over a fixed ``(T, H, W)`` grid, optionally with global vectors.

    ``forward(x, g) -> (dx, dg)``: pre-norm, residual added by the caller; ``dg`` is ``None``
    unless this layer updates the global vectors.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Triple,
        cuboid_size: Triple,
        strategy: Sequence[str] = ("l", "l", "l"),
        shift_size: Triple = (0, 0, 0),
        *,
        num_global: int = 0,
        update_global: bool = True,
        global_self_attn: bool = False,
        separate_global_qkv: bool = False,
        padding_type: str = "ignore",
        use_relative_pos: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if padding_type not in ("ignore", "zeros"):
            raise ValueError(f"padding_type must be 'ignore' or 'zeros', got {padding_type!r}")
        self.dim, self.num_heads = dim, num_heads
        self.grid, self.cuboid_size = tuple(grid), tuple(cuboid_size)
        self.strategy, self.shift_size = tuple(strategy), tuple(shift_size)
        self.pads = tuple(-n % b for n, b in zip(self.grid, self.cuboid_size))
        self.padded = tuple(n + p for n, p in zip(self.grid, self.pads))
        self.use_global = num_global > 0
        self.update_global = self.use_global and update_global
        self.global_self_attn = global_self_attn and self.update_global
        self.separate_global_qkv = separate_global_qkv
        self.attn_drop = attn_drop

        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if use_relative_pos:
            index, rows = _relative_position_index(self.cuboid_size, self.cuboid_size)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", index, persistent=False)
        else:
            self.relative_position_bias_table = None

        # Static masks: shifted-window regions and (padding_type='ignore') padded keys.
        shifted, ignore = any(self.shift_size), padding_type == "ignore" and any(self.pads)
        attn_mask = g2l_mask = None
        if shifted or ignore:
            regions = [_shift_regions(n, b, s) for n, b, s in zip(self.padded, self.cuboid_size, self.shift_size)]
            labels = (regions[0][:, None, None] * 3 + regions[1][None, :, None]) * 3 + regions[2][None, None, :]
            labels = self._reorder(labels[None, ..., None])[0, ..., 0]
            allowed = labels[:, :, None] == labels[:, None, :]
            if ignore:
                real = torch.zeros(self.padded, dtype=torch.bool)
                real[: self.grid[0], : self.grid[1], : self.grid[2]] = True
                real = self._reorder(torch.roll(real, [-s for s in self.shift_size], (0, 1, 2))[None, ..., None])
                real = real[0, ..., 0]
                allowed = allowed & real[:, None, :]
                g2l_mask = _additive_mask(real.reshape(1, -1))
            attn_mask = _additive_mask(allowed).unsqueeze(1)  # (num_cuboids, 1, volume, volume)
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.register_buffer("g2l_mask", g2l_mask, persistent=False)

        if self.use_global:
            self.global_norm = nn.LayerNorm(dim)
            if separate_global_qkv:
                self.l2g_q = nn.Linear(dim, dim, bias=False)
                self.l2g_global_kv = nn.Linear(dim, 2 * dim, bias=False)
                if self.update_global:
                    self.g2l_global_q = nn.Linear(dim, dim, bias=False)
                    self.g2l_k = nn.Linear(dim, dim, bias=False)
                    self.g2l_v = nn.Linear(dim, dim, bias=False)
                    if self.global_self_attn:
                        self.g2g_global_qkv = nn.Linear(dim, 3 * dim, bias=False)
            else:  # shared projections; the global query only exists when the vectors are updated
                self.global_qkv = nn.Linear(dim, (3 if self.update_global else 2) * dim, bias=False)
            if self.update_global:
                self.global_proj = nn.Linear(dim, dim)

    def _reorder(self, x: torch.Tensor) -> torch.Tensor:
        return cuboid_reorder(x, self.cuboid_size, self.strategy)

    def _bias(self) -> torch.Tensor | None:
        """Relative-position bias + static mask, broadcastable to ``(B, n, heads, v, v)``."""
        bias = None
        if self.relative_position_bias_table is not None:
            bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        if self.attn_mask is not None:
            bias = self.attn_mask if bias is None else bias + self.attn_mask
        return bias

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, heads, scale = x.shape[0], self.num_heads, (self.dim // self.num_heads) ** -0.5
        drop = self.attn_drop if self.training else 0.0
        x = _pad_grid(self.norm(x), *self.pads)
        if any(self.shift_size):
            x = torch.roll(x, [-s for s in self.shift_size], (1, 2, 3))
        tokens = self._reorder(x)  # (B, n, v, C)
        n, v = tokens.shape[1:3]
        q, k, val = _split_heads(self.qkv(tokens), 3, heads)  # (B, n, heads, v, hc)
        bias = self._bias()
        new_g = None
        if not self.use_global:
            out = _attention(q, k, val, bias, drop, scale)
        else:
            if g is None:
                raise ValueError("this layer was built with global vectors; pass them")
            g = self.global_norm(g)
            num_global = g.shape[1]
            if self.separate_global_qkv:
                gk, gv = _split_global_heads(self.l2g_global_kv(g), 2, heads)
            else:
                g_parts = _split_global_heads(self.global_qkv(g), 3 if self.update_global else 2, heads)
                gk, gv = g_parts[-2:]
            expand = (batch, n, heads, num_global, gk.shape[-1])
            gk_all, gv_all = gk[:, None].expand(expand), gv[:, None].expand(expand)
            # Local-to-local and local-to-global share one softmax per token.
            if self.separate_global_qkv:
                (q_l2g,) = _split_heads(self.l2g_q(tokens), 1, heads)
                query, keys = torch.cat([q, q_l2g], -1), _two_query_keys(k, gk_all)
            else:
                query, keys = q, torch.cat([k, gk_all], -2)
            bias = F.pad(bias, (0, num_global)) if bias is not None else None
            out = _attention(query, keys, torch.cat([val, gv_all], -2), bias, drop, scale)
            if self.update_global:
                # Global-to-local (every token of every cuboid) [+ global-to-global].
                def flat(t: torch.Tensor) -> torch.Tensor:  # (B, n, heads, v, hc) -> (B, heads, n*v, hc)
                    return t.transpose(1, 2).reshape(batch, heads, n * v, -1)

                if self.separate_global_qkv:
                    (g_query,) = _split_global_heads(self.g2l_global_q(g), 1, heads)
                    (k_l,) = _split_heads(self.g2l_k(tokens), 1, heads)
                    (v_l,) = _split_heads(self.g2l_v(tokens), 1, heads)
                    keys, values = flat(k_l), flat(v_l)
                    if self.global_self_attn:
                        gq2, gk2, gv2 = _split_global_heads(self.g2g_global_qkv(g), 3, heads)
                        g_query, keys = torch.cat([g_query, gq2], -1), _two_query_keys(keys, gk2)
                        values = torch.cat([values, gv2], -2)
                else:
                    g_query, keys, values = g_parts[0], flat(k), flat(val)
                    if self.global_self_attn:
                        keys, values = torch.cat([keys, gk], -2), torch.cat([values, gv], -2)
                mask = self.g2l_mask
                if mask is not None and self.global_self_attn:
                    mask = F.pad(mask, (0, num_global))
                new_g = _attention(g_query, keys, values, mask, drop, scale)
                new_g = self.proj_drop(self.global_proj(new_g.transpose(1, 2).reshape(batch, num_global, self.dim)))
        out = self.proj_drop(self.proj(out.permute(0, 1, 3, 2, 4).reshape(batch, n, v, self.dim)))
        x = cuboid_reorder_reverse(out, self.cuboid_size, self.strategy, self.padded)
        if any(self.shift_size):
            x = torch.roll(x, list(self.shift_size), (1, 2, 3))
        t, h, w = self.grid
        return x[:, :t, :h, :w], new_g


class CuboidCrossAttention(nn.Module):
    """Cuboid cross-attention from decoder queries ``(T_x, H, W)`` to memory ``(T_mem, H, W)``.

    Both are split into the same cuboids: ``(h, w)`` as in self-attention, time into
    ``n_temporal`` groups (memory padded on the left, queries on the right, so the latest memory
    frames align).  With ``num_global > 0`` tokens also attend to the memory's global vectors.
    ``forward(x, mem, g) -> dx`` (pre-norm on ``x`` only, residual added by the caller).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        x_grid: Triple,
        mem_frames: int,
        cuboid_hw: tuple[int, int] = (1, 1),
        shift_hw: tuple[int, int] = (0, 0),
        strategy: Sequence[str] = ("l", "l", "l"),
        n_temporal: int = 1,
        *,
        num_global: int = 0,
        separate_global_qkv: bool = False,
        padding_type: str = "ignore",
        use_relative_pos: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if padding_type not in ("ignore", "zeros"):
            raise ValueError(f"padding_type must be 'ignore' or 'zeros', got {padding_type!r}")
        t_x, h, w = x_grid
        if n_temporal > min(t_x, mem_frames):
            raise ValueError(f"n_temporal={n_temporal} exceeds the number of frames ({t_x} / {mem_frames})")
        self.dim, self.num_heads, self.attn_drop = dim, num_heads, attn_drop
        self.x_grid, self.mem_frames = tuple(x_grid), mem_frames
        self.shift_hw, self.strategy = tuple(shift_hw), tuple(strategy)
        self.pads = (-t_x % n_temporal, -h % cuboid_hw[0], -w % cuboid_hw[1])
        self.mem_pad_t = -mem_frames % n_temporal
        hp, wp = h + self.pads[1], w + self.pads[2]
        self.x_padded = (t_x + self.pads[0], hp, wp)
        self.mem_padded = (mem_frames + self.mem_pad_t, hp, wp)
        self.x_cuboid = (self.x_padded[0] // n_temporal, *cuboid_hw)
        self.mem_cuboid = (self.mem_padded[0] // n_temporal, *cuboid_hw)
        self.use_global, self.separate_global_qkv = num_global > 0, separate_global_qkv

        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if self.use_global and separate_global_qkv:
            self.l2g_q = nn.Linear(dim, dim, bias=False)
            self.l2g_global_kv = nn.Linear(dim, 2 * dim, bias=False)
        if use_relative_pos:
            index, rows = _relative_position_index(self.x_cuboid, self.mem_cuboid)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", index, persistent=False)
        else:
            self.relative_position_bias_table = None

        shifted = any(self.shift_hw)
        ignore = padding_type == "ignore" and (self.mem_pad_t or self.pads[1] or self.pads[2])
        attn_mask = None
        if shifted or ignore:
            regions = [_shift_regions(n, b, s) for n, b, s in zip((hp, wp), cuboid_hw, self.shift_hw)]
            labels = regions[0][:, None] * 3 + regions[1][None, :]

            def reorder_labels(frames: int, cuboid: Triple) -> torch.Tensor:
                grid = labels.expand(frames, hp, wp)[None, ..., None]
                return cuboid_reorder(grid, cuboid, self.strategy)[0, ..., 0]

            allowed = (
                reorder_labels(self.x_padded[0], self.x_cuboid)[:, :, None]
                == reorder_labels(self.mem_padded[0], self.mem_cuboid)[:, None, :]
            )
            if ignore:
                real = torch.zeros(self.mem_padded, dtype=torch.bool)
                real[self.mem_pad_t :, :h, :w] = True
                real = torch.roll(real, [-s for s in self.shift_hw], (1, 2))[None, ..., None]
                allowed = allowed & cuboid_reorder(real, self.mem_cuboid, self.strategy)[0, :, None, :, 0]
            attn_mask = _additive_mask(allowed).unsqueeze(1)
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        batch, heads, scale = x.shape[0], self.num_heads, (self.dim // self.num_heads) ** -0.5
        x = _pad_grid(self.norm(x), *self.pads)
        mem = _pad_grid(mem, self.mem_pad_t, *self.pads[1:], t_left=True)
        if any(self.shift_hw):
            shifts = [-s for s in self.shift_hw]
            x, mem = torch.roll(x, shifts, (2, 3)), torch.roll(mem, shifts, (2, 3))
        x_tokens = cuboid_reorder(x, self.x_cuboid, self.strategy)
        mem_tokens = cuboid_reorder(mem, self.mem_cuboid, self.strategy)
        n, v = x_tokens.shape[1:3]
        (q,) = _split_heads(self.q_proj(x_tokens), 1, heads)
        k, val = _split_heads(self.kv_proj(mem_tokens), 2, heads)
        bias = None
        if self.relative_position_bias_table is not None:
            bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)
        if self.attn_mask is not None:
            bias = self.attn_mask if bias is None else bias + self.attn_mask
        if self.use_global:
            if g is None:
                raise ValueError("this layer was built with global vectors; pass them")
            num_global = g.shape[1]
            proj = self.l2g_global_kv if self.separate_global_qkv else self.kv_proj
            gk, gv = _split_global_heads(proj(g), 2, heads)
            expand = (batch, n, heads, num_global, gk.shape[-1])
            gk, gv = gk[:, None].expand(expand), gv[:, None].expand(expand)
            if self.separate_global_qkv:
                (q_l2g,) = _split_heads(self.l2g_q(x_tokens), 1, heads)
                q, k = torch.cat([q, q_l2g], -1), _two_query_keys(k, gk)
            else:
                k = torch.cat([k, gk], -2)
            val = torch.cat([val, gv], -2)
            bias = F.pad(bias, (0, num_global)) if bias is not None else None
        drop = self.attn_drop if self.training else 0.0
        out = _attention(q, k, val, bias, drop, scale)
        out = self.proj_drop(self.proj(out.permute(0, 1, 3, 2, 4).reshape(batch, n, v, self.dim)))
        x = cuboid_reorder_reverse(out, self.x_cuboid, self.strategy, self.x_padded)
        if any(self.shift_hw):
            x = torch.roll(x, list(self.shift_hw), (2, 3))
        t, h, w = self.x_grid
        return x[:, :t, :h, :w]


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class PositionwiseFFN(nn.Module):
    """Pre-norm ``x + drop(fc2(drop(act(fc1(LN(x))))))`` with a 4x hidden width."""

    def __init__(self, dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.act, self.drop = _ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(self.act(self.fc1(self.norm(x))))))


class StackCuboidSelfAttentionBlock(nn.Module):
    """``x -> [x + attn_i(x); ffn_i]`` for each cuboid spec of a pattern; global vectors ride along.

    ``update_global_last=False`` skips the last layer's global update (nothing reads it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: Triple,
        specs: list[SelfSpec],
        *,
        num_global: int,
        update_global_last: bool,
        global_ffn: bool,
        ffn_activation: str,
        ffn_drop: float,
        **attn_kwargs: Any,
    ) -> None:
        super().__init__()
        updates = [num_global > 0 and (i < len(specs) - 1 or update_global_last) for i in range(len(specs))]
        self.attn = nn.ModuleList(
            CuboidSelfAttention(dim, num_heads, grid, c, s, sh, num_global=num_global, update_global=u, **attn_kwargs)
            for (c, s, sh), u in zip(specs, updates)
        )
        self.ffn = nn.ModuleList(PositionwiseFFN(dim, ffn_activation, ffn_drop) for _ in specs)
        self.global_ffn = nn.ModuleList(
            PositionwiseFFN(dim, ffn_activation, ffn_drop) if global_ffn and u else nn.Identity() for u in updates
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        for attn, ffn, global_ffn in zip(self.attn, self.ffn, self.global_ffn):
            dx, dg = attn(x, g)
            x = ffn(x + dx)
            if dg is not None:
                g = global_ffn(g + dg)
        return x, g


class StackCuboidCrossAttentionBlock(nn.Module):
    """``x -> [x + cross_i(x, mem); ffn_i]`` for each cuboid spec of a cross pattern."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        x_grid: Triple,
        mem_frames: int,
        specs: list[CrossSpec],
        *,
        ffn_activation: str,
        ffn_drop: float,
        **attn_kwargs: Any,
    ) -> None:
        super().__init__()
        self.attn = nn.ModuleList(
            CuboidCrossAttention(dim, num_heads, x_grid, mem_frames, c, sh, s, nt, **attn_kwargs)
            for c, sh, s, nt in specs
        )
        self.ffn = nn.ModuleList(PositionwiseFFN(dim, ffn_activation, ffn_drop) for _ in specs)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        for attn, ffn in zip(self.attn, self.ffn):
            x = ffn(x + attn(x, mem, g))
        return x


class PatchMerging(nn.Module):
    """Merge ``f x f`` neighbourhoods: zero-pad, concat to ``f*f*C``, LayerNorm, linear."""

    def __init__(self, dim: int, out_dim: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.norm = nn.LayerNorm(factor * factor * dim)
        self.reduction = nn.Linear(factor * factor * dim, out_dim, bias=False)

    out_hw = staticmethod(out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        b, t, h, w, c = x.shape
        x = _pad_grid(x, 0, -h % f, -w % f)
        h, w = x.shape[2] // f, x.shape[3] // f
        x = x.reshape(b, t, h, f, w, f, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h, w, f * f * c)
        return self.reduction(self.norm(x))


class Upsample2D(nn.Module):
    """Frame-wise nearest upsampling to ``size`` then a 3x3 conv (Earthformer's Upsample3DLayer)."""

    def __init__(self, dim: int, out_dim: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = x.shape
        x = F.interpolate(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), size=self.size, mode="nearest")
        x = self.conv(x)
        return x.permute(0, 2, 3, 1).reshape(b, t, *self.size, -1)


def _conv_stack(in_dim: int, out_dim: int, count: int, activation: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [
            nn.Conv2d(in_dim if i == 0 else out_dim, out_dim, 3, padding=1),
            nn.GroupNorm(max(1, out_dim // 4), out_dim),
            _ACTIVATIONS[activation](),
        ]
    return nn.Sequential(*layers), (out_dim if count else in_dim)


def _framewise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``(N, C, H, W)`` module to every frame of ``(B, T, H, W, C)``."""
    b, t, h, w, c = x.shape
    y = module(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).reshape(b, t, *y.shape[2:], y.shape[1])


class StackConvStem(nn.Module):
    """Initial encoder: per stage ``[conv3x3, GroupNorm, act] x n`` then ``s x s`` patch merging."""

    def __init__(self, in_dim: int, dims: list[int], scales: list[int], convs: list[int], activation: str) -> None:
        super().__init__()
        self.convs, self.merges = nn.ModuleList(), nn.ModuleList()
        for out_dim, scale, count in zip(dims, scales, convs):
            block, channels = _conv_stack(in_dim, out_dim, count, activation)
            self.convs.append(block)
            self.merges.append(PatchMerging(channels, out_dim, scale))
            in_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for convs, merge in zip(self.convs, self.merges):
            x = merge(_framewise(convs, x))
        return x


class StackUpsampleHead(nn.Module):
    """Final decoder mirroring the stem: per stage nearest-upsample + conv, then ``[conv, GN, act] x n``.

    Stage ``i`` restores the resolution before stem stage ``K-1-i`` with that stage's width.
    """

    def __init__(self, in_dim: int, dims: list[int], sizes: list[tuple[int, int]], convs: list[int], activation: str):
        super().__init__()
        self.ups, self.convs = nn.ModuleList(), nn.ModuleList()
        for out_dim, size, count in zip(dims, sizes, convs):
            self.ups.append(Upsample2D(in_dim, in_dim, size))
            block, in_dim = _conv_stack(in_dim, out_dim, count, activation)
            self.convs.append(block)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up, convs in zip(self.ups, self.convs):
            x = _framewise(convs, up(x))
        return x


class PosEmbed(nn.Module):
    """Learned ``t+h+w`` (separate axis tables) or ``t+hw`` (time + joint space) embedding."""

    def __init__(self, dim: int, grid: Triple, typ: str) -> None:
        super().__init__()
        t, h, w = grid
        self.typ = typ
        shapes = {"t+h+w": {"T_embed": (t, 1, 1), "H_embed": (1, h, 1), "W_embed": (1, 1, w)},
                  "t+hw": {"T_embed": (t, 1, 1), "HW_embed": (1, h, w)}}[typ]  # fmt: skip
        self.shapes = shapes
        for name, shape in shapes.items():
            param = nn.Parameter(torch.zeros(math.prod(shape), dim))
            nn.init.trunc_normal_(param, std=0.02)
            setattr(self, name, param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, shape in self.shapes.items():
            x = x + getattr(self, name).reshape(*shape, -1)
        return x


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module) -> None:
    """Earthformer's init mode "0"."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear")
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        nn.init.ones_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Earthformer(nn.Module):
    """``(B, T_in, C, H, W) -> (B, T_out, C, H*scale, W*scale)``; see the module docstring."""

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        scale: int,
        *,
        base_units: int,
        scale_alpha: float,
        downsample: int,
        enc_depth: list[int],
        dec_depth: list[int],
        num_heads: int,
        self_pattern: Any,
        cross_self_pattern: Any,
        cross_pattern: Any,
        num_global_vectors: int,
        use_dec_self_global: bool,
        use_dec_cross_global: bool,
        use_global_vector_ffn: bool,
        use_global_self_attn: bool,
        separate_global_qkv: bool,
        attn_drop: float,
        proj_drop: float,
        ffn_drop: float,
        ffn_activation: str,
        padding_type: str,
        pos_embed_type: str,
        use_relative_pos: bool,
        z_init_method: str,
        stem_dims: list[int],
        stem_scales: list[int],
        stem_convs: list[int],
        stem_activation: str,
    ) -> None:
        super().__init__()
        t_in, channels, height, width = in_shape
        self.in_shape, self.out_frames, self.scale = tuple(in_shape), out_frames, scale
        self.z_init_method = z_init_method
        levels = len(enc_depth)
        self.num_global = num_global_vectors
        self.dec_self_global = num_global_vectors > 0 and use_dec_self_global
        self.dec_cross_global = num_global_vectors > 0 and use_dec_cross_global

        # Stem: frames -> (T_in, h0, w0, base_units) tokens.
        self.stem = StackConvStem(channels, stem_dims, stem_scales, stem_convs, stem_activation)
        stem_hw = [(height, width)]
        for s in stem_scales:
            stem_hw.append(PatchMerging.out_hw(stem_hw[-1], s))
        units = [base_units * int((downsample**scale_alpha) ** i) for i in range(levels)]
        for u in units:
            if u % num_heads:
                raise ValueError(f"earthformer: level width {u} is not divisible by num_heads={num_heads}")
        level_hw = [stem_hw[-1]]
        for _ in range(levels - 1):
            level_hw.append(PatchMerging.out_hw(level_hw[-1], downsample))
        enc_grids = [(t_in, *hw) for hw in level_hw]
        dec_grids = [(out_frames, *hw) for hw in level_hw]
        self.enc_pos_embed = PosEmbed(base_units, enc_grids[0], pos_embed_type)
        if num_global_vectors:
            self.init_global_vectors = nn.Parameter(torch.zeros(num_global_vectors, base_units))
            nn.init.trunc_normal_(self.init_global_vectors, std=0.02)

        common = {
            "ffn_activation": ffn_activation, "ffn_drop": ffn_drop, "padding_type": padding_type,
            "use_relative_pos": use_relative_pos, "attn_drop": attn_drop, "proj_drop": proj_drop,
            "separate_global_qkv": separate_global_qkv,
        }  # fmt: skip
        self_kwargs = {**common, "global_ffn": use_global_vector_ffn, "global_self_attn": use_global_self_attn}

        # Encoder.  The top level's final global vectors are only read by a decoder that uses them.
        top = levels - 1
        top_read = self.dec_cross_global or (self.dec_self_global and dec_depth[top] > 1)
        self.encoder = nn.ModuleList()
        for i in range(levels):
            specs = self_attention_pattern(self_pattern, enc_grids[i])
            self.encoder.append(nn.ModuleList(
                StackCuboidSelfAttentionBlock(
                    units[i], num_heads, enc_grids[i], specs, num_global=num_global_vectors,
                    update_global_last=i < top or j < enc_depth[i] - 1 or top_read, **self_kwargs,
                )
                for j in range(enc_depth[i])
            ))  # fmt: skip
        self.down = nn.ModuleList(PatchMerging(units[i], units[i + 1], downsample) for i in range(top))
        if num_global_vectors:
            self.global_down = nn.ModuleList(nn.Linear(units[i], units[i + 1]) for i in range(top))

        # Decoder: learned positional queries for the T_out frames on the top-level grid.
        self.z_proj = nn.Linear(units[top], units[top])
        if z_init_method == "zeros":
            self.dec_pos_embed = PosEmbed(units[top], dec_grids[top], pos_embed_type)
        self.dec_self, self.dec_cross = nn.ModuleList(), nn.ModuleList()
        for i in range(levels):
            n_self = dec_depth[i] - (1 if i == top else 0)  # the top level starts with cross-attention
            specs = self_attention_pattern(cross_self_pattern, dec_grids[i])
            self.dec_self.append(nn.ModuleList(
                StackCuboidSelfAttentionBlock(
                    units[i], num_heads, dec_grids[i], specs,
                    num_global=num_global_vectors if self.dec_self_global else 0,
                    update_global_last=j < n_self - 1 or self.dec_cross_global, **self_kwargs,
                )
                for j in range(n_self)
            ))  # fmt: skip
            specs_x = cross_attention_pattern(cross_pattern, level_hw[i])
            self.dec_cross.append(nn.ModuleList(
                StackCuboidCrossAttentionBlock(
                    units[i], num_heads, dec_grids[i], t_in, specs_x,
                    num_global=num_global_vectors if self.dec_cross_global else 0, **common,
                )
                for _ in range(dec_depth[i])
            ))  # fmt: skip
        self.dec_up = nn.ModuleList(Upsample2D(units[i + 1], units[i], level_hw[i]) for i in range(top))

        # Final decoder mirrors the stem, then the readout (or the upsampler for scale > 1).
        self.head = StackUpsampleHead(
            base_units, stem_dims[::-1], stem_hw[-2::-1], stem_convs[::-1], stem_activation
        )
        self.readout = (
            nn.Linear(self.head.out_dim, channels)
            if scale == 1
            else TransposedConvUpsampler(self.head.out_dim, channels, scale, self.head.out_dim)
        )
        for name, module in self.named_modules():
            if not name.startswith("readout") or scale == 1:
                _init_weights(module)
        # The last layer starts 10x smaller so the untrained model predicts ~0 (the normalised mean)
        # instead of unit-variance noise; with Adam at high learning rates this avoids a long
        # plateau while the network first learns to cancel its own initial output.
        with torch.no_grad():
            (self.readout if scale == 1 else self.readout.readout).weight.mul_(0.1)

    def _initial_queries(self, mem: torch.Tensor) -> torch.Tensor:
        b, _, h, w, c = mem.shape
        if self.z_init_method == "zeros":
            z = self.dec_pos_embed(mem.new_zeros(1, self.out_frames, h, w, c)).expand(b, -1, -1, -1, -1)
        elif self.z_init_method == "nearest_interp":
            z = F.interpolate(mem.permute(0, 4, 1, 2, 3), size=(self.out_frames, h, w)).permute(0, 2, 3, 4, 1)
        elif self.z_init_method == "last":
            z = mem[:, -1:].expand(-1, self.out_frames, -1, -1, -1)
        else:  # mean
            z = mem.mean(1, keepdim=True).expand(-1, self.out_frames, -1, -1, -1)
        return self.z_proj(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"Earthformer built for (B, *{self.in_shape}) inputs, got {tuple(x.shape)}")
        batch = x.shape[0]
        x = self.enc_pos_embed(self.stem(x.permute(0, 1, 3, 4, 2)))
        g = self.init_global_vectors.expand(batch, -1, -1) if self.num_global else None
        mems, globals_ = [], []
        for i, level in enumerate(self.encoder):
            for block in level:
                x, g = block(x, g)
            mems.append(x)
            globals_.append(g)
            if i < len(self.down):
                x = self.down[i](x)
                g = self.global_down[i](g) if g is not None else None

        z = self._initial_queries(mems[-1])
        for i in reversed(range(len(self.encoder))):
            g = globals_[i]
            crosses = iter(self.dec_cross[i])
            if i == len(self.encoder) - 1:
                z = next(crosses)(z, mems[i], g if self.dec_cross_global else None)
            for self_block, cross_block in zip(self.dec_self[i], crosses):
                z, g_new = self_block(z, g if self.dec_self_global else None)
                if self.dec_self_global:
                    g = g_new
                z = cross_block(z, mems[i], g if self.dec_cross_global else None)
            if i > 0:
                z = self.dec_up[i - 1](z)

        z = self.head(z)  # (B, T_out, H, W, C_head)
        if self.scale == 1:
            return self.readout(z).permute(0, 1, 4, 2, 3)
        frames = self.readout(z.permute(0, 1, 4, 2, 3).flatten(0, 1))
        return frames.reshape(batch, self.out_frames, *frames.shape[1:])


@register_backbone("earthformer")
def build(
    *, in_shape: tuple[int, int, int, int], out_frames: int, scale: int = 1, size: str = "small", **overrides: Any
) -> Earthformer:
    hp = resolve_hparams("earthformer", PRESETS, size, overrides)
    check_hparams(hp, in_shape, out_frames, scale)
    enc_depth, dec_depth = int_list(hp["enc_depth"], "enc_depth"), int_list(hp["dec_depth"], "dec_depth")
    stem_dims, stem_scales = int_list(hp["stem_dims"], "stem_dims"), int_list(hp["stem_scales"], "stem_scales")
    stem_convs = [int(c) for c in hp["stem_convs"]]
    return Earthformer(
        in_shape,
        out_frames,
        scale,
        base_units=int(hp["base_units"]),
        scale_alpha=float(hp["scale_alpha"]),
        downsample=int(hp["downsample"]),
        enc_depth=enc_depth,
        dec_depth=dec_depth,
        num_heads=int(hp["num_heads"]),
        self_pattern=hp["self_pattern"],
        cross_self_pattern=hp["cross_self_pattern"],
        cross_pattern=hp["cross_pattern"],
        num_global_vectors=int(hp["num_global_vectors"]),
        use_dec_self_global=bool(hp["use_dec_self_global"]),
        use_dec_cross_global=bool(hp["use_dec_cross_global"]),
        use_global_vector_ffn=bool(hp["use_global_vector_ffn"]),
        use_global_self_attn=bool(hp["use_global_self_attn"]),
        separate_global_qkv=bool(hp["separate_global_qkv"]),
        attn_drop=float(hp["attn_drop"]),
        proj_drop=float(hp["proj_drop"]),
        ffn_drop=float(hp["ffn_drop"]),
        ffn_activation=hp["ffn_activation"],
        padding_type=hp["padding_type"],
        pos_embed_type=hp["pos_embed_type"],
        use_relative_pos=bool(hp["use_relative_pos"]),
        z_init_method=hp["z_init_method"],
        stem_dims=stem_dims,
        stem_scales=stem_scales,
        stem_convs=stem_convs,
        stem_activation=hp["stem_activation"],
    )
