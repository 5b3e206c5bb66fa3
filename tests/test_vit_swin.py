"""SimVP with ViT / Swin translators (OpenSTL model_type 'vit' / 'swin') on the installed timm,
and the upstream ViT -> downstream ``vit`` parameter transfer."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block

from nuwa.backbones import create_backbone
from nuwa.backbones._blocks import count_parameters
from nuwa.io import load_checkpoint, save_checkpoint
from nuwa.pretrain import checkpoint
from nuwa.upstream import UpstreamViT

KINDS = ["vit", "swin"]
TIMM_BLOCK = {"vit": Block, "swin": SwinTransformerBlock}
# The shape each preset is sized for: the project's CPU run, and OpenSTL's TaxiBJ benchmark.
PRESET_SHAPES = {"small": ((10, 1, 32, 32), 10), "reference": ((4, 2, 32, 32), 4)}
OPENSTL_TAXIBJ_PARAMS = 9.66e6  # OpenSTL's TaxiBJ table, for both SimVP-ViT and SimVP-Swin

# The vit small preset's translator: hid_T 64, N_T 2, 4 heads, mlp_ratio 4 at 32x32, 10 -> 10.
SMALL_SHAPE = (10, 1, 32, 32)
SMALL_TRANSLATOR = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0}


@pytest.mark.parametrize("size", sorted(PRESET_SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_builds_and_runs_on_installed_timm(kind, size):
    """OpenSTL's own sub-blocks pass ``drop=`` that timm's blocks no longer take; ours must build."""
    in_shape, out_frames = PRESET_SHAPES[size]
    torch.manual_seed(0)
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size)
    with torch.no_grad():
        y = model(torch.randn(2, *in_shape))
    assert y.shape == (2, out_frames, *in_shape[1:])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("kind", KINDS)
def test_reference_parameter_count_matches_openstl(kind):
    model = create_backbone(kind, in_shape=PRESET_SHAPES["reference"][0], out_frames=4, size="reference")
    measured = count_parameters(model)
    assert abs(measured - OPENSTL_TAXIBJ_PARAMS) <= 0.1 * OPENSTL_TAXIBJ_PARAMS, f"{kind}: {measured:,} params"


@pytest.mark.parametrize("size", sorted(PRESET_SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_translator_runs_timm_blocks_on_the_latent_grid(kind, size):
    in_shape, out_frames = PRESET_SHAPES[size]
    model = create_backbone(kind, in_shape=in_shape, out_frames=out_frames, size=size)
    blocks = model.translator.blocks
    n_t = {"small": 2, "reference": 7}[size]
    width = {"small": 64, "reference": 256}[size]
    assert len(blocks) == n_t
    assert all(type(block) is TIMM_BLOCK[kind] for block in blocks)

    # Every block runs in forward, on the latent grid's positions as width-wide tokens.
    h, w = model.latent_grid
    seen = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.randn(1, *in_shape))
    token_shape = (1, h * w, width) if kind == "vit" else (1, h, w, width)
    assert seen == [token_shape] * n_t


def test_swin_shifts_every_other_block():
    model = create_backbone("swin", in_shape=SMALL_SHAPE, out_frames=10, size="small", N_T=4)
    # 8x8 grid, OpenSTL's window rule gives 4: W-MSA, SW-MSA (shift 2), W-MSA, SW-MSA.
    assert model.latent_grid == (8, 8)
    assert [block.window_size for block in model.translator.blocks] == [(4, 4)] * 4
    assert [block.shift_size for block in model.translator.blocks] == [(0, 0), (2, 2), (0, 0), (2, 2)]


def _upstream_payload(tmp_path, *, embed_dim, depth, num_heads, mlp_ratio, seed=1):
    torch.manual_seed(seed)
    upstream = UpstreamViT(frames=SMALL_SHAPE[0], channels=SMALL_SHAPE[1], height=SMALL_SHAPE[2], width=SMALL_SHAPE[3],
                           patch_size=4, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    path = tmp_path / "model.pt"  # round trip through the file the pretrain stage writes
    save_checkpoint(checkpoint(upstream, "toy", {"objective": "reconstruct"}), path)
    return load_checkpoint(path)


def _small_vit(**overrides):
    torch.manual_seed(0)
    return create_backbone("vit", in_shape=SMALL_SHAPE, out_frames=10, size="small", **overrides)


def test_load_upstream_copies_every_block_tensor(tmp_path):
    payload = _upstream_payload(tmp_path, **SMALL_TRANSLATOR)
    source = payload["state_dict"]
    model = _small_vit()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    expected = {"translator." + name for name in source if name.startswith(("blocks.", "norm."))}
    assert any(not torch.equal(before[target], source[target[len("translator."):]]) for target in expected)

    loaded = model.load_upstream(payload)

    assert sorted(loaded) == sorted(expected)
    # ... which is every tensor of the translator's blocks and final norm,
    translator_tensors = {name for name in before if name.startswith(("translator.blocks.", "translator.norm."))}
    assert set(loaded) == translator_tensors
    assert len(loaded) == 2 + 12 * SMALL_TRANSLATOR["depth"]  # norm + (2 LN, qkv, proj, fc1, fc2) x (w, b)
    after = model.state_dict()
    for target in loaded:
        assert torch.equal(after[target], source[target[len("translator."):]]), target
    # ... and nothing else moved.
    for name in set(before) - set(loaded):
        assert torch.equal(after[name], before[name]), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, *SMALL_SHAPE))).all()


def test_hid_t_and_n_t_overrides_match_another_upstream(tmp_path):
    payload = _upstream_payload(tmp_path, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0)
    model = _small_vit(hid_T=32, N_T=3, num_heads=2, mlp_ratio=2.0)
    loaded = model.load_upstream(payload)
    assert len(loaded) == 2 + 12 * 3
    assert torch.equal(model.translator.blocks[2].mlp.fc1.weight, payload["state_dict"]["blocks.2.mlp.fc1.weight"])


def _assert_rejected_untouched(model, payload, match):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.load_upstream(payload)
    after = model.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before), "a rejected load changed the model"


def test_load_upstream_rejects_another_width_naming_the_tensor(tmp_path):
    payload = _upstream_payload(tmp_path, **{**SMALL_TRANSLATOR, "embed_dim": 32})
    match = r"'blocks\.0\.norm1\.weight' \(32,\) -> 'translator\.blocks\.0\.norm1\.weight' \(64,\)"
    _assert_rejected_untouched(_small_vit(), payload, match)


def test_load_upstream_rejects_another_mlp_ratio_naming_the_tensor(tmp_path):
    payload = _upstream_payload(tmp_path, **{**SMALL_TRANSLATOR, "mlp_ratio": 2.0})
    match = r"'blocks\.0\.mlp\.fc1\.weight' \(128, 64\) -> 'translator\.blocks\.0\.mlp\.fc1\.weight' \(256, 64\)"
    _assert_rejected_untouched(_small_vit(), payload, match)


@pytest.mark.parametrize("depth,tensor", [(3, r"'blocks\.2\."), (1, r"'translator\.blocks\.1\.")])
def test_load_upstream_rejects_another_depth(tmp_path, depth, tensor):
    payload = _upstream_payload(tmp_path, **{**SMALL_TRANSLATOR, "depth": depth})
    _assert_rejected_untouched(_small_vit(), payload, rf"upstream depth {depth} != translator depth N_T=2.*{tensor}")


def test_load_upstream_rejects_another_head_count(tmp_path):
    # Same shapes (heads only split qkv), different attention: must not load silently.
    payload = _upstream_payload(tmp_path, **{**SMALL_TRANSLATOR, "num_heads": 8})
    _assert_rejected_untouched(_small_vit(), payload, "num_heads=8 != translator num_heads=4")


def test_load_upstream_rejects_other_checkpoints(tmp_path):
    payload = _upstream_payload(tmp_path, **SMALL_TRANSLATOR)
    _assert_rejected_untouched(_small_vit(), {**payload, "kind": "downstream"}, "kind='downstream'")
    _assert_rejected_untouched(_small_vit(), {"state_dict": payload["state_dict"]}, "not an upstream ViT checkpoint")


def test_swin_has_no_upstream_transfer():
    # The training loop offers the transfer only to backbones with load_upstream.
    swin = create_backbone("swin", in_shape=SMALL_SHAPE, out_frames=10, size="small")
    assert not hasattr(swin, "load_upstream")
