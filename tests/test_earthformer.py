"""Earthformer-specific tests: cuboid decomposition, attention locality, global vectors, wiring.

The generic contract (shapes, gradients, overfitting, presets) lives in ``test_backbones.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nuwa.backbones import create_backbone
from nuwa.backbones._blocks import count_parameters
from nuwa.backbones.earthformer import (
    CuboidCrossAttention,
    CuboidSelfAttention,
    StackCuboidSelfAttentionBlock,
    cross_attention_pattern,
    cuboid_reorder,
    cuboid_reorder_reverse,
    self_attention_pattern,
)

STRATEGIES = ["lll", "ddd", "ldl", "dll"]


# ---------------------------------------------------------------------------------------------
# Decomposition
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 2, 1)], ids=["unshifted", "shifted"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuboid_reorder_round_trips(strategy, shift):
    grid, cuboid = (4, 6, 8), (2, 3, 4)
    x = torch.randn(2, *grid, 5)
    rolled = torch.roll(x, [-s for s in shift], (1, 2, 3))
    cuboids = cuboid_reorder(rolled, cuboid, strategy)
    assert cuboids.shape == (2, 2 * 2 * 2, 2 * 3 * 4, 5)
    back = torch.roll(cuboid_reorder_reverse(cuboids, cuboid, strategy, grid), list(shift), (1, 2, 3))
    assert torch.equal(back, x)
    # Every token lands in exactly one cuboid.
    assert torch.equal(cuboids.reshape(2, -1, 5).sort(1).values, x.reshape(2, -1, 5).sort(1).values)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuboids_hold_local_blocks_or_dilated_lattices(strategy):
    grid, cuboid = (4, 6, 8), (2, 3, 4)
    index = torch.arange(4 * 6 * 8).reshape(1, *grid, 1)
    cuboids = cuboid_reorder(index, cuboid, strategy)[0, :, :, 0]
    # Cuboid (1, 1, 1) -- the last one -- in (t, h, w) order.
    axes = []
    for length, block, how in zip(grid, cuboid, strategy):
        count = length // block
        axes.append(range(block, 2 * block) if how == "l" else range(1, length, count))
    expected = [(t * 6 + h) * 8 + w for t, h, w in itertools.product(*axes)]
    assert cuboids[-1].tolist() == expected


def test_patterns_clamp_to_the_grid_and_drop_dilated_shifts():
    axial = self_attention_pattern("axial", (5, 4, 6))
    assert [c for c, _, _ in axial] == [(5, 1, 1), (1, 4, 1), (1, 1, 6)]
    swin = self_attention_pattern("video_swin_2x8", (3, 4, 16))
    assert swin[1] == ((2, 4, 4), ("l", "l", "l"), (1, 0, 2))  # H == cuboid height: no shift
    explicit = self_attention_pattern([((2, 8, 2), "ldl", (1, 1, 1))], (4, 4, 8))
    assert explicit == [((2, 4, 2), ("l", "d", "l"), (1, 0, 1))]
    assert cross_attention_pattern("cross_4x4_heter", (6, 8))[2] == ((4, 4), (2, 2), ("l", "l", "l"), 1)
    assert cross_attention_pattern("cross_4x4_heter", (2, 8))[2] == ((2, 2), (0, 1), ("l", "l", "l"), 1)
    with pytest.raises(ValueError, match="unknown self-attention pattern"):
        self_attention_pattern("diagonal", (4, 4, 4))
    with pytest.raises(ValueError, match="smaller than cuboid_size"):
        self_attention_pattern([((2, 2, 2), "lll", (0, 2, 0))], (4, 4, 4))


# ---------------------------------------------------------------------------------------------
# Cuboid self-attention
# ---------------------------------------------------------------------------------------------


def _layer(grid, cuboid, strategy="lll", shift=(0, 0, 0), **kwargs):
    torch.manual_seed(0)
    return CuboidSelfAttention(8, 2, grid, cuboid, tuple(strategy), shift, **kwargs).eval()


def _perturbed(x, *positions):
    """Add a random vector at each position (a constant shift would vanish in the LayerNorm)."""
    y = x.clone()
    noise = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(1))
    for t, h, w in positions:
        y[:, t, h, w] += 3.0 * noise
    return y


def _changed(layer_out, x, perturbed, token):
    t, h, w = token
    with torch.no_grad():
        a, b = layer_out(x)[:, t, h, w], layer_out(perturbed)[:, t, h, w]
    return not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "strategy,same,other",
    [("lll", (1, 1, 0), (2, 0, 0)), ("ddd", (2, 2, 2), (1, 1, 1))],
    ids=["local", "dilated"],
)
def test_attention_stays_inside_cuboids_without_global_vectors(strategy, same, other):
    layer = _layer((4, 4, 4), (2, 2, 2), strategy)
    x = torch.randn(2, 4, 4, 4, 8)
    out = lambda inp: layer(inp)[0]
    assert _changed(out, x, _perturbed(x, same), (0, 0, 0))
    assert not _changed(out, x, _perturbed(x, other), (0, 0, 0))


def test_shifted_cuboids_follow_the_shift_and_mask_wrapped_tokens():
    layer = _layer((4, 4, 4), (2, 2, 2), shift=(1, 1, 1))
    x = torch.randn(2, 4, 4, 4, 8)
    out = lambda inp: layer(inp)[0]
    # Shifted by one, token (1,1,1) shares a cuboid with (2,2,2) and no longer with (0,0,0).
    assert _changed(out, x, _perturbed(x, (2, 2, 2)), (1, 1, 1))
    assert not _changed(out, x, _perturbed(x, (0, 0, 0)), (1, 1, 1))
    # (0,0,0) is rolled next to (3,3,3) but they come from opposite borders: the mask separates them.
    assert not _changed(out, x, _perturbed(x, (3, 3, 3), (0, 3, 3), (3, 0, 0)), (0, 0, 0))


def test_global_vectors_carry_information_across_cuboids():
    x = torch.randn(2, 4, 4, 4, 8)
    far = _perturbed(x, (3, 3, 3))
    torch.manual_seed(0)
    g = torch.randn(2, 3, 8)
    # One layer: tokens read the incoming global vectors; the update sees every token.
    layer = _layer((4, 4, 4), (2, 2, 2), num_global=3, global_self_attn=True)
    assert not _changed(lambda inp: layer(inp, g)[0], x, far, (0, 0, 0))
    with torch.no_grad():
        assert not torch.allclose(layer(x, g)[1], layer(far, g)[1], atol=1e-6)
    # Two layers: the second reads the updated vectors, so a far token reaches (0,0,0).
    spec = [((2, 2, 2), ("l", "l", "l"), (0, 0, 0))] * 2
    kwargs = {
        "update_global_last": True, "global_ffn": False, "ffn_activation": "gelu", "ffn_drop": 0.0,
        "padding_type": "ignore", "use_relative_pos": True, "attn_drop": 0.0, "proj_drop": 0.0,
        "separate_global_qkv": False, "global_self_attn": True,
    }  # fmt: skip
    for num_global, crosses in [(3, True), (0, False)]:
        torch.manual_seed(0)
        block = StackCuboidSelfAttentionBlock(8, 2, (4, 4, 4), spec, num_global=num_global, **kwargs).eval()
        gv = g if num_global else None
        assert _changed(lambda inp, block=block, gv=gv: block(inp, gv)[0], x, far, (0, 0, 0)) == crosses


def _naive_cuboid_attention(layer, x):
    """Per-token softmax over the real tokens of its cuboid (no shift, no relative bias)."""
    b, *grid, c = x.shape
    heads, hc = layer.num_heads, c // layer.num_heads
    q, k, v = layer.qkv(layer.norm(x)).chunk(3, -1)

    def cuboid_id(pos):
        return tuple(
            p // blk if how == "l" else p % (padded // blk)
            for p, blk, how, padded in zip(pos, layer.cuboid_size, layer.strategy, layer.padded)
        )

    tokens = list(itertools.product(*map(range, grid)))
    out = torch.zeros_like(x)
    for pos in tokens:
        members = [m for m in tokens if cuboid_id(m) == cuboid_id(pos)]
        keys = torch.stack([k[:, m[0], m[1], m[2]] for m in members], 1).reshape(b, -1, heads, hc)
        vals = torch.stack([v[:, m[0], m[1], m[2]] for m in members], 1).reshape(b, -1, heads, hc)
        query = q[:, pos[0], pos[1], pos[2]].reshape(b, heads, hc)
        weights = (torch.einsum("bhc,bmhc->bhm", query, keys) * hc**-0.5).softmax(-1)
        out[:, pos[0], pos[1], pos[2]] = torch.einsum("bhm,bmhc->bhc", weights, vals).reshape(b, c)
    return layer.proj(out)


@pytest.mark.parametrize("strategy", ["lll", "ddd", "dld"])
def test_padded_cuboid_attention_matches_a_per_token_reference(strategy):
    # 3x5x6 does not divide into 2x2x4 cuboids: padded to 4x6x8, padded keys ignored, cropped back.
    layer = _layer((3, 5, 6), (2, 2, 4), strategy, padding_type="ignore", use_relative_pos=False)
    x = torch.randn(2, 3, 5, 6, 8)
    with torch.no_grad():
        out, _ = layer(x)
        expected = _naive_cuboid_attention(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("global_self_attn", [False, True])
def test_separate_global_projections_match_explicit_attention(global_self_attn):
    """One cuboid covering the grid: check the concatenated-query SDPA trick against plain math."""
    layer = _layer((2, 2, 2), (2, 2, 2), num_global=3, separate_global_qkv=True,
                   global_self_attn=global_self_attn, use_relative_pos=False)  # fmt: skip
    x, g = torch.randn(2, 2, 2, 2, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        dx, dg = layer(x, g)
        xn, gn = layer.norm(x).reshape(2, 8, 8), layer.global_norm(g)

        def heads(t):
            return t.reshape(2, t.shape[1], 2, 4).transpose(1, 2)

        def attend(queries, keys, values):
            scores = torch.cat([heads(q) @ heads(k).transpose(-1, -2) for q, k in zip(queries, keys)], -1)
            out = (scores * 0.5).softmax(-1) @ torch.cat([heads(v) for v in values], -2)
            return out.transpose(1, 2).reshape(2, -1, 8)

        q, k, v = layer.qkv(xn).chunk(3, -1)
        gk, gv = layer.l2g_global_kv(gn).chunk(2, -1)
        tokens = attend([q, layer.l2g_q(xn)], [k, gk], [v, gv])
        g_q, g_keys, g_vals = [layer.g2l_global_q(gn)], [layer.g2l_k(xn)], [layer.g2l_v(xn)]
        if global_self_attn:
            q2, k2, v2 = layer.g2g_global_qkv(gn).chunk(3, -1)
            g_q, g_keys, g_vals = g_q + [q2], g_keys + [k2], g_vals + [v2]
        globals_ = attend(g_q, g_keys, g_vals)
    torch.testing.assert_close(dx, layer.proj(tokens).reshape(2, 2, 2, 2, 8), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dg, layer.global_proj(globals_), rtol=1e-4, atol=1e-5)


def test_cross_attention_1x1_reads_only_the_same_location():
    torch.manual_seed(0)
    layer = CuboidCrossAttention(8, 2, (3, 4, 4), 5, (1, 1), (0, 0), ("l", "l", "l"), 1).eval()
    x, mem = torch.randn(2, 3, 4, 4, 8), torch.randn(2, 5, 4, 4, 8)
    with torch.no_grad():
        base = layer(x, mem)[:, :, 1, 2]
        same = mem.clone()
        same[:, 0, 1, 2] += 3.0 * torch.randn(8)  # the oldest memory frame at the query's location
        other = mem.clone()
        other[:, :, 1, 3] += 3.0 * torch.randn(8)
        assert not torch.allclose(layer(x, same)[:, :, 1, 2], base, atol=1e-6)
        torch.testing.assert_close(layer(x, other)[:, :, 1, 2], base)


def test_shifted_cross_attention_windows():
    torch.manual_seed(0)
    layer = CuboidCrossAttention(8, 2, (3, 4, 4), 5, (2, 2), (1, 1), ("l", "l", "l"), 1).eval()
    x, mem = torch.randn(2, 3, 4, 4, 8), torch.randn(2, 5, 4, 4, 8)

    def reads(query, *memory):
        changed = mem.clone()
        for h, w in memory:
            changed[:, :, h, w] += 3.0 * torch.randn(8)
        with torch.no_grad():
            before, after = layer(x, mem), layer(x, changed)
        return not torch.allclose(after[:, :, query[0], query[1]], before[:, :, query[0], query[1]])

    # Shifted by one, the window of (1, 1) is rows/cols {1, 2}.
    assert reads((1, 1), (2, 2)) and not reads((1, 1), (0, 0), (3, 3))
    # (0, 0) is rolled next to row/col 3 but from the opposite border: only itself.
    assert reads((0, 0), (0, 0)) and not reads((0, 0), (3, 3), (0, 3), (3, 0), (1, 1))


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def test_every_output_frame_depends_on_every_input_frame():
    torch.manual_seed(0)
    model = create_backbone("earthformer", in_shape=(3, 1, 16, 16), out_frames=4)
    x = torch.randn(1, 3, 1, 16, 16, requires_grad=True)
    y = model(x)
    for t in range(4):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert (grad.abs().sum(dim=(2, 3, 4)) > 0).all(), f"output frame {t} ignores some input frame"


VARIANTS = {
    "no_globals": {"num_global_vectors": 0},
    "separate_qkv_global_ffn": {"separate_global_qkv": True, "use_global_vector_ffn": True},
    "encoder_only_globals": {"use_dec_self_global": False, "use_dec_cross_global": False},
    "dec_self_globals_only": {"use_dec_cross_global": False, "dec_depth": [2, 2]},
    "swin_dilated_heter": {
        "self_pattern": "video_swin_2x2",
        "cross_self_pattern": "axial_space_dilate_2",
        "cross_pattern": "cross_2x2_heter",
    },
    "three_levels_zeros_thw": {
        "enc_depth": [1, 1, 1],
        "dec_depth": [1, 1, 1],
        "padding_type": "zeros",
        "pos_embed_type": "t+hw",
        "z_init_method": "mean",
    },
    "odd_stem": {"stem_dims": [8, 16], "stem_scales": [3, 1], "stem_convs": [0, 2]},
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_variants_run_and_train_every_parameter(overrides):
    torch.manual_seed(0)
    model = create_backbone("earthformer", in_shape=(3, 2, 16, 20), out_frames=4, **overrides)
    y = model(torch.randn(2, 3, 2, 16, 20))
    assert y.shape == (2, 4, 2, 16, 20)
    (y - torch.randn_like(y)).square().mean().backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_reference_matches_the_official_sevir_model():
    # Official CuboidTransformerModel with earthformer_sevir_v1.yaml (13 -> 12, 384x384x1): 8,659,677
    # parameters.  Not built here: the last encoder layer's global-vector update, which nothing
    # reads (7 * 256**2 + 256 = 459,008), and relative-position rows for offsets that never occur
    # (decoder time axis 13 -> 12 frames: 2 * 4 heads; cross-attention 2*25-1 -> 12+13-1 rows:
    # 25 * 4 heads, at each of 2 levels).
    model = create_backbone("earthformer", in_shape=(13, 1, 384, 384), out_frames=12, size="reference")
    assert count_parameters(model) == 8_659_677 - 459_008 - 2 * 4 - 2 * 25 * 4


@pytest.mark.parametrize(
    "bad",
    [
        {"stem_dims": [8, 32]},  # last stem width must be base_units
        {"enc_depth": [1, 1, 1]},  # one decoder depth per encoder level
        {"self_pattern": "no_such_pattern"},
        {"cross_pattern": "cross_2x3"},
        {"num_heads": 3},
        {"padding_type": "nearest"},
    ],
)
def test_invalid_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError):
        create_backbone("earthformer", in_shape=(4, 1, 16, 16), out_frames=4, **bad)
