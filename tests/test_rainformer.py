"""Mechanism tests for the Rainformer backbone (nuwa/backbones/rainformer.py).

The registry-wide contract (shapes, gradients, overfitting, presets) lives in test_backbones.py;
these check the parts that make it Rainformer: the gate fusion formula, (shifted) window attention
and its padding, the locality of the local unit, and the published configuration's size.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nuwa.backbones._blocks import count_parameters
from nuwa.backbones.rainformer import ChannelAttention, GateFusion, LocalUnit, WindowAttention, build


def _build(t_in=4, t_out=4, c=1, h=16, w=16, scale=1, **hparams):
    # The builder itself rather than create_backbone, which imports every registered backbone.
    return build(in_shape=(t_in, c, h, w), out_frames=t_out, scale=scale, **hparams)


# ---------------------------------------------------------------------------------------------
# Gate fusion: out = Z * G + R * L with [Z, R] = sigmoid(LN(conv3x3([G, L])))
# ---------------------------------------------------------------------------------------------


def test_gate_fusion_applies_hand_built_gates_elementwise():
    """Zero conv => LN sees a constant map => the gate logits are exactly LN's bias, set by hand.

    Z and R are chosen independently per element (including Z = R ~ 1), so a convex fusion
    ``Z*G + (1-Z)*L``, a shared gate, or swapped gates all fail.
    """
    torch.manual_seed(0)
    dim, h, w = 2, 3, 4
    fusion = GateFusion(dim, (h, w))
    with torch.no_grad():
        fusion.conv.weight.zero_()
        fusion.conv.bias.zero_()
        z_logits = torch.randn(dim, h, w) * 3
        r_logits = torch.randn(dim, h, w) * 3
        z_logits[0, 0, 0] = r_logits[0, 0, 0] = 20.0  # both gates open: out = G + L
        z_logits[1, 2, 3] = r_logits[1, 2, 3] = -20.0  # both closed: out = 0
        fusion.norm.bias.copy_(torch.cat([z_logits, r_logits]))
    g, l = torch.randn(2, dim, h, w), torch.randn(2, dim, h, w)
    out = fusion(g, l)
    torch.testing.assert_close(out, torch.sigmoid(z_logits) * g + torch.sigmoid(r_logits) * l)
    torch.testing.assert_close(out[:, 0, 0, 0], g[:, 0, 0, 0] + l[:, 0, 0, 0])
    torch.testing.assert_close(out[:, 1, 2, 3], torch.zeros(2), atol=1e-7, rtol=0)


def test_gate_fusion_gates_are_computed_from_both_inputs():
    """Recompute the gates from the parameters: sigmoid of a LayerNorm over (2C, H, W) of a 3x3
    conv of [G, L]; each gate lies in (0, 1), varies per element and responds to both inputs."""
    torch.manual_seed(0)
    dim, h, w = 3, 5, 6
    fusion = GateFusion(dim, (h, w))
    with torch.no_grad():  # non-trivial element-wise affine, as after training
        fusion.norm.weight.normal_(1.0, 0.5)
        fusion.norm.bias.normal_(0.0, 0.5)
    g, l = torch.randn(2, dim, h, w), torch.randn(2, dim, h, w)
    logits = F.layer_norm(
        F.conv2d(torch.cat([g, l], 1), fusion.conv.weight, fusion.conv.bias, padding=1),
        (2 * dim, h, w),
        fusion.norm.weight,
        fusion.norm.bias,
    )
    z, r = torch.sigmoid(logits[:, :dim]), torch.sigmoid(logits[:, dim:])
    torch.testing.assert_close(fusion(g, l), z * g + r * l)
    assert ((z > 0) & (z < 1) & (r > 0) & (r < 1)).all()
    assert z.std(dim=(2, 3)).min() > 1e-3 and r.std(dim=(2, 3)).min() > 1e-3  # per element, not per channel
    assert not torch.allclose(z + r, torch.ones_like(z), atol=0.05)  # two gates, not one convex weight
    for z_new, r_new in (fusion.gates(g + torch.randn_like(g), l), fusion.gates(g, l + torch.randn_like(l))):
        assert not torch.allclose(z_new, z) and not torch.allclose(r_new, r)


# ---------------------------------------------------------------------------------------------
# Window attention
# ---------------------------------------------------------------------------------------------


def _attention(window=(4, 4), shift=(0, 0), dim=8, heads=2, head_dim=4, seed=0):
    torch.manual_seed(seed)
    attn = WindowAttention(dim, heads, head_dim, window, shift)
    with torch.no_grad():
        attn.bias_table.normal_(0.0, 1.0)  # make the relative-position bias matter
    return attn


def _changed_by_perturbing(attn, height, width, pixel):
    torch.manual_seed(1)
    x = torch.randn(1, height, width, attn.to_qkv.in_features)
    x2 = x.clone()
    x2[0, pixel[0], pixel[1]] += 3.0
    with torch.no_grad():
        return (attn(x2) - attn(x)).abs().amax(-1)[0] > 0


def _block(height, width, rows, cols):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


def test_window_attention_without_shift_stays_inside_the_window():
    changed = _changed_by_perturbing(_attention(), 8, 8, (1, 2))
    assert torch.equal(changed, _block(8, 8, slice(0, 4), slice(0, 4)))


def test_shifted_window_attention_crosses_window_borders():
    # Shift 2: the windows cover rows/cols 2..5, so (3, 3) reaches (4, 4) across the unshifted border.
    changed = _changed_by_perturbing(_attention(shift=(2, 2)), 8, 8, (3, 3))
    assert changed[4, 4]
    assert torch.equal(changed, _block(8, 8, slice(2, 6), slice(2, 6)))


def test_shifted_window_attention_masks_the_wrapped_around_border():
    # The cyclic roll puts rows/cols {6, 7} and {0, 1} in one window; the mask keeps them apart.
    changed = _changed_by_perturbing(_attention(shift=(2, 2)), 8, 8, (0, 0))
    assert not changed[7, 7]
    assert torch.equal(changed, _block(8, 8, slice(0, 2), slice(0, 2)))


def _dense_reference(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Window attention written as full attention over all pixels with an explicit 'allowed' mask.

    Pixel k may be attended from pixel p iff, in the frame rolled by -shift (over the grid padded
    to whole windows), both fall in the same window and their offset did not wrap around; the
    relative-position bias is indexed by that offset.  Padded pixels never exist here.
    """
    _, height, width, _ = x.shape
    (wh, ww), (sh, sw) = attn.window, attn.shift
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    ii, jj = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ii, jj = ii.flatten(), jj.flatten()
    ri, rj = (ii - sh) % hp, (jj - sw) % wp  # rolled-frame coordinates
    di, dj = ii[None, :] - ii[:, None], jj[None, :] - jj[:, None]  # key minus query
    allowed = (
        (ri[:, None] // wh == ri[None, :] // wh)
        & (rj[:, None] // ww == rj[None, :] // ww)
        & (ri[None, :] - ri[:, None] == di)
        & (rj[None, :] - rj[:, None] == dj)
    )
    # WindowAttention's table is indexed by query minus key (offsets of disallowed pairs may not fit).
    index = torch.where(allowed, (-di + wh - 1) * (2 * ww - 1) + (-dj + ww - 1), 0)
    bias = attn.bias_table[index]
    bias = bias.masked_fill(~allowed, float("-inf"))
    q, k, v = attn.to_qkv(x.reshape(1, height * width, -1)).chunk(3, dim=-1)
    q, k, v = (t.reshape(height * width, attn.heads, attn.head_dim).transpose(0, 1) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / attn.head_dim**0.5 + bias, dim=-1)
    out = (weights @ v).transpose(0, 1).reshape(1, height, width, -1)
    return attn.to_out(out)


@pytest.mark.parametrize("size", [(8, 9), (6, 7), (3, 9)], ids=["divisible", "padded", "padded_thin"])
@pytest.mark.parametrize("shift", [(0, 0), (2, 2), (2, 1)], ids=["W-MSA", "SW-MSA", "SW-MSA_uneven"])
def test_window_attention_matches_dense_masked_attention(size, shift):
    """Padding to whole windows and cropping back, the roll, the region mask, masking of padded
    keys and the relative-position bias, against a from-scratch dense formulation."""
    attn = _attention(window=(4, 3), shift=shift)
    x = torch.randn(1, *size, 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _dense_reference(attn, x), rtol=1e-4, atol=1e-5)


def test_blocks_alternate_regular_and_shifted_windows():
    model = _build(10, 10, 1, 32, 32)  # small: 16x16, 8x8, 4x4 grids, 4x4 windows
    encoder_block = model.encoder[0].blocks[0].global_unit
    assert encoder_block.regular.attn.shift == (0, 0)
    assert encoder_block.shifted.attn.shift == (2, 2)
    # A window covering the whole grid has nothing to shift (Swin's rule).
    deepest = model.encoder[-1].blocks[0].global_unit
    assert deepest.shifted.attn.window == (4, 4) and deepest.shifted.attn.shift == (0, 0)


# ---------------------------------------------------------------------------------------------
# Local feature extraction unit
# ---------------------------------------------------------------------------------------------


def _local_response(unit: nn.Module, pixel: tuple[int, int], size: int = 15) -> torch.Tensor:
    """How much the centre pixel's output changes when ``pixel`` of the input is perturbed."""
    torch.manual_seed(1)
    x = torch.randn(1, unit.convs[0].in_channels, size, size)
    x2 = x.clone()
    x2[0, :, pixel[0], pixel[1]] += 3.0
    c = size // 2
    with torch.no_grad():
        return (unit(x2) - unit(x))[0, :, c, c].abs().max()


def test_local_unit_receptive_field_is_seven_by_seven():
    """Two 3x3 convs and the 3x3 spatial-attention conv: a radius of 3 pixels, no more.

    The channel attention only contributes one global gain per channel (checked below), so it is
    taken out here; BatchNorm in eval mode is a per-channel affine map.
    """
    torch.manual_seed(0)
    unit = LocalUnit(8).eval()
    unit.channel_attention = nn.Identity()
    c = 7
    assert _local_response(unit, (c, c + 3)) > 0
    assert _local_response(unit, (c - 3, c - 3)) > 0
    assert _local_response(unit, (c, c + 4)) == 0
    assert _local_response(unit, (c + 4, c - 4)) == 0
    assert _local_response(unit, (0, 14)) == 0


def test_channel_attention_is_one_gain_per_channel():
    torch.manual_seed(0)
    for channels_last in (False, True):
        ca = ChannelAttention(6, 3, shared_mlp=not channels_last, channels_last=channels_last)
        x = torch.rand(2, 6, 5, 7) + 0.5
        if channels_last:
            x = x.permute(0, 2, 3, 1)
        gain = ca(x) / x
        flat = gain.permute(0, 3, 1, 2) if channels_last else gain
        ref = flat[:, :, :1, :1].expand_as(flat)
        torch.testing.assert_close(flat, ref)
        assert ((flat > 0) & (flat < 1)).all()


# ---------------------------------------------------------------------------------------------
# Whole network
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", [(3, 2, 2, 20, 28, 1), (3, 4, 1, 13, 7, 3)], ids=["20x28", "13x7_scale3"]
)
def test_sizes_not_divisible_by_windows_or_patches(case):
    t_in, t_out, c, h, w, scale = case
    torch.manual_seed(0)
    model = _build(t_in, t_out, c, h, w, scale)
    x = torch.randn(2, t_in, c, h, w)
    y = model(x)
    assert y.shape == (2, t_out, c, h * scale, w * scale)
    y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_output_frame_sees_every_input_frame():
    """Time is stacked into channels, so each predicted frame depends on all observed ones."""
    torch.manual_seed(0)
    model = _build(3, 4, 1, 16, 16)
    x = torch.randn(1, 3, 1, 16, 16, requires_grad=True)
    y = model(x)
    for t in range(4):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert (grad.abs().sum(dim=(2, 3, 4)) > 0).all()


def test_input_of_another_shape_is_rejected():
    with pytest.raises(ValueError, match="built for"):
        _build()(torch.randn(1, 4, 1, 16, 32))


@pytest.mark.parametrize(
    "bad",
    [
        {"layers": [2, 3, 2]},  # odd: W-MSA/SW-MSA come in pairs
        {"heads": [1, 2]},  # one entry per stage
        {"hidden_dim": 3},  # the last expansion gets 2*3 channels: no 2x2 sub-pixel split
        {"final_dim": 0},
    ],
)
def test_invalid_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError):
        _build(**bad)


def test_reference_matches_the_authors_code_at_the_paper_setting():
    """KNMI, 9 -> 9 frames at 288x288: the authors' Net has 187,557,014 parameters, 55,746,141 of
    them in the gate's conv_2/conv_3, which forward never uses."""
    model = build(in_shape=(9, 1, 288, 288), out_frames=9, size="reference")
    assert count_parameters(model) == 187_557_014 - 55_746_141
