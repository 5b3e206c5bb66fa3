"""Contract tests for every registered backbone, plus the shared blocks and reference sizes.

Generic tests iterate over ``backbone_kinds()`` so a newly registered backbone is covered
without editing this file; they use the ``small`` preset and tiny inputs to stay fast on CPU.
"""

from __future__ import annotations

import pytest
import torch

from nuwa.backbones import backbone_kinds, create_backbone
from nuwa.methods import training_loss
from nuwa.backbones._blocks import (
    TransposedConvUpsampler,
    count_parameters,
    reshape_patch,
    reshape_patch_back,
)

KINDS = backbone_kinds()


def test_each_backbone_file_registers_the_backbone_it_is_named_after():
    """backbone_kinds() lists the modules' names without importing them (params validation
    stays light); importing them all registers exactly those names."""
    from nuwa.backbones import _REGISTRY, _load_all, _module_names

    _load_all()
    assert sorted(_REGISTRY) == sorted(_module_names()) == KINDS

# (T_in, T_out, C, H, W, scale). Sides are multiples of 16 so patch/stride-based backbones fit.
SHAPE_CASES = [
    (4, 4, 1, 16, 16, 1),
    (4, 2, 2, 16, 32, 1),  # fewer outputs than inputs, non-square, 2 channels
    (3, 5, 1, 16, 16, 2),  # more outputs than inputs, upsampled
    (2, 3, 3, 16, 16, 4),
]

# OpenSTL TaxiBJ benchmark parameter counts at in_shape (4, 2, 32, 32), 4 -> 4 frames.
# ConvLSTM: OpenSTL reports 14.98M, but its ConvLSTMCell builds a conv_o (5x5, 256 -> 128) and a
# conv_last (1x1, 256 -> 128) per cell that forward never uses: 4 * (819,200 + 32,768) =
# 3,407,872 dead parameters.  Our cell omits them, so we compare with the live remainder.
# PredRNN-V2 (23.67M) and E3D-LSTM (50.99M): every OpenSTL weight is live (PredRNN-V2's adapter
# only in the decoupling loss); ours add the conv_x gate biases (4 * 896 each).
OPENSTL_UNUSED_CONVLSTM_PARAMS = 4 * (256 * 128 * 5 * 5 + 256 * 128)
REFERENCE_PARAMS = {
    "simvp": 13.79e6,
    "convlstm": 14.98e6 - OPENSTL_UNUSED_CONVLSTM_PARAMS,
    "predrnn_v2": 23.67e6,
    "e3d_lstm": 50.99e6,
}
TAXIBJ_SHAPE = (4, 2, 32, 32)


def _build(kind: str, t_in: int, t_out: int, c: int, h: int, w: int, scale: int = 1, **hparams):
    return create_backbone(kind, in_shape=(t_in, c, h, w), out_frames=t_out, scale=scale, **hparams)


def test_known_backbones_are_registered():
    assert {"simvp", "convlstm"} <= set(KINDS)


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: "T{}-{}_C{}_{}x{}_s{}".format(*c))
@pytest.mark.parametrize("kind", KINDS)
def test_output_shape(kind, case):
    t_in, t_out, c, h, w, scale = case
    torch.manual_seed(0)
    model = _build(kind, *case)
    y = model(torch.randn(2, t_in, c, h, w))
    assert y.shape == (2, t_out, c, h * scale, w * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("case", [(4, 4, 1, 16, 16, 1), (3, 5, 2, 16, 16, 2)], ids=["same_T", "longer_T_scale2"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind, case):
    t_in, t_out, c, h, w, scale = case
    torch.manual_seed(0)
    model = _build(kind, *case)
    target = torch.randn(2, t_out, c, h * scale, w * scale)
    # The real training loss (MSE against a random target, plus any auxiliary term such as
    # PredRNN-V2's decoupling loss, which alone trains its adapter): sum(y) would leave params
    # before a norm layer gradient-free.
    model.train()
    loss = training_loss(model, torch.randn(2, t_in, c, h, w), target, progress=0.5,
                         generator=torch.Generator().manual_seed(0))
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{kind}: parameters without gradient: {dead}"


@pytest.mark.parametrize("kind", KINDS)
def test_overfits_a_tiny_batch(kind):
    torch.manual_seed(0)
    model = _build(kind, 4, 4, 1, 16, 16)
    x, y = torch.randn(2, 4, 1, 16, 16), torch.randn(2, 4, 1, 16, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    # 90% below both the initial loss and the target's variance, so fitting the mean/scale alone
    # (which a freshly initialised network is often far from) does not pass.
    initial = (model(x) - y).square().mean().item()
    threshold = 0.1 * min(initial, y.var().item())
    losses = []
    for _ in range(500):
        loss = (model(x) - y).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] <= threshold:
            break
    assert losses[-1] <= threshold, f"{kind}: loss {initial:.4f} -> {losses[-1]:.4f} after {len(losses)} steps"


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_independent(kind):
    """Eval-mode output for one sample must not depend on the rest of the batch."""
    torch.manual_seed(0)
    model = _build(kind, 4, 3, 1, 16, 16).eval()
    x = torch.randn(3, 4, 1, 16, 16)
    with torch.no_grad():
        together, alone = model(x)[1], model(x[1:2])[0]
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_override_is_rejected(kind):
    with pytest.raises(ValueError, match="not_a_hyperparameter"):
        _build(kind, 4, 4, 1, 16, 16, not_a_hyperparameter=3)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_size_is_rejected(kind):
    with pytest.raises(ValueError, match="gigantic"):
        _build(kind, 4, 4, 1, 16, 16, size="gigantic")


@pytest.mark.parametrize("kind", KINDS)
def test_reference_preset_builds_at_taxibj_shape(kind):
    model = create_backbone(kind, in_shape=TAXIBJ_SHAPE, out_frames=4, size="reference")
    assert count_parameters(model) > count_parameters(
        create_backbone(kind, in_shape=TAXIBJ_SHAPE, out_frames=4, size="small")
    )


@pytest.mark.parametrize("kind", sorted(REFERENCE_PARAMS))
def test_reference_parameter_count(kind):
    # Construction only, no forward pass.
    model = create_backbone(kind, in_shape=TAXIBJ_SHAPE, out_frames=4, size="reference")
    expected = REFERENCE_PARAMS[kind]
    measured = count_parameters(model)
    assert abs(measured - expected) <= 0.1 * expected, f"{kind}: {measured:,} params vs {expected:,.0f}"


def test_simvp_overrides_change_the_network():
    small = _build("simvp", 4, 4, 1, 16, 16)
    wider = _build("simvp", 4, 4, 1, 16, 16, hid_T=128)
    assert count_parameters(wider) > count_parameters(small)


def test_convlstm_output_frames_depend_on_every_input_frame():
    torch.manual_seed(0)
    model = _build("convlstm", 3, 4, 1, 16, 16, num_hidden=[8], filter_size=3, patch_size=4)
    x = torch.randn(1, 3, 1, 16, 16, requires_grad=True)
    y = model(x)
    for t in range(4):
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert (grad.abs().sum(dim=(2, 3, 4)) > 0).all(), f"output frame {t} ignores some input frame"


def test_convlstm_feeds_its_predictions_back():
    """After the T_in observed frames, the first cell's input is the previous step's prediction."""
    torch.manual_seed(0)
    t_in, t_out = 3, 4
    model = _build("convlstm", t_in, t_out, 1, 16, 16, num_hidden=[8, 8], filter_size=3, patch_size=4)
    cell_inputs, predictions = [], []
    model.cells[0].register_forward_pre_hook(lambda module, args: cell_inputs.append(args[0].detach()))
    model.readout.register_forward_hook(lambda module, args, out: predictions.append(out.detach()))
    with torch.no_grad():
        model(torch.randn(2, t_in, 1, 16, 16))
    assert len(cell_inputs) == t_in + t_out - 1 and len(predictions) == t_out
    for step in range(t_in, t_in + t_out - 1):
        assert torch.equal(cell_inputs[step], predictions[step - t_in])


@pytest.mark.parametrize("kind,bad", [("simvp", {"N_T": 1}), ("convlstm", {"patch_size": 3}), ("convlstm", {"filter_size": 4})])
def test_invalid_hyperparameters_are_rejected(kind, bad):
    with pytest.raises(ValueError):
        _build(kind, 4, 4, 1, 16, 16, **bad)


@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_reshape_patch_round_trip(patch_size):
    x = torch.randn(2, 3, 5, 16, 8)
    patches = reshape_patch(x, patch_size)
    assert patches.shape == (2, 3, 5 * patch_size**2, 16 // patch_size, 8 // patch_size)
    assert torch.equal(reshape_patch_back(patches, patch_size), x)


def test_reshape_patch_groups_neighbouring_pixels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = reshape_patch(x, 2)
    # The top-left 2x2 patch {0, 1, 4, 5} lands in the channels of grid cell (0, 0).
    assert patches[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


@pytest.mark.parametrize("scale", [2, 3, 4, 6])
def test_transposed_conv_upsampler_sizes(scale):
    up = TransposedConvUpsampler(3, 2, scale, hidden_channels=4)
    assert up(torch.randn(2, 3, 5, 7)).shape == (2, 2, 5 * scale, 7 * scale)
