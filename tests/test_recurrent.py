"""Recurrent backbones and their training methods: causality of rollouts, teacher forcing through
``true_frame_mask``, PredRNN-V2's decoupling loss, the mask schedules and reference sizes.

Backbones are discovered from the registry: every one whose ``training_method`` is not
``"plain"`` takes ``forward(x, targets=None, true_frame_mask=None)`` and is covered here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from nuwa.backbones import backbone_kinds, create_backbone
from nuwa.backbones._blocks import count_parameters
from nuwa.methods import training_loss, true_frame_mask

T_IN, T_OUT, C, H, W = 3, 3, 1, 16, 16
STEPS = T_IN + T_OUT - 2  # mask columns


def _build(kind: str, t_in: int = T_IN, t_out: int = T_OUT, **hparams):
    torch.manual_seed(0)
    return create_backbone(kind, in_shape=(t_in, C, H, W), out_frames=t_out, **hparams)


# Discovered at test_backbones' first contract shape (4 -> 4 frames, 16x16, C=1), which every
# registered backbone supports.
RECURRENT = [
    kind
    for kind in backbone_kinds()
    if getattr(create_backbone(kind, in_shape=(4, 1, 16, 16), out_frames=4), "training_method", "plain") != "plain"
]


def _data(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, T_IN, C, H, W, generator=g), torch.randn(batch, T_OUT, C, H, W, generator=g)


def test_recurrent_backbones_are_discovered():
    assert {"convlstm", "predrnn_v2", "e3d_lstm"} <= set(RECURRENT)
    assert _build("predrnn_v2").training_method == "reverse_scheduled_sampling"
    assert _build("e3d_lstm").training_method == "scheduled_sampling"
    assert _build("convlstm").training_method == "scheduled_sampling"


# ---------------------------------------------------------------------------------------------
# (a) causality, (b) teacher forcing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RECURRENT)
def test_targets_without_mask_are_never_used(kind):
    model = _build(kind)
    x, t1 = _data()
    t2 = torch.randn_like(t1) * 5
    with torch.no_grad():
        model.eval()
        plain = model(x)
        assert torch.equal(plain, model(x, targets=t1))
        assert torch.equal(plain, model(x, targets=t2))
        model.train()  # no mask in training mode is the same rollout
        assert torch.equal(plain, model(x, targets=t1))


@pytest.mark.parametrize("kind", RECURRENT)
def test_teacher_forcing_is_causal_and_feeds_true_frames(kind):
    """Full teacher forcing: prediction k sees target frames < k only, and does see frame k - 1."""
    model = _build(kind).train()
    x, targets = _data()
    mask = torch.ones(2, STEPS)
    with torch.no_grad():
        base = model(x, targets=targets, true_frame_mask=mask)
        for k in range(T_OUT):
            changed = targets.clone()
            changed[:, k:] = torch.randn_like(changed[:, k:]) * 3
            out = model(x, targets=changed, true_frame_mask=mask)
            assert torch.equal(out[:, : k + 1], base[:, : k + 1]), f"prediction {k} saw target frames >= {k}"
            if k >= 1:
                changed = targets.clone()
                changed[:, k - 1] += 1.0
                out = model(x, targets=changed, true_frame_mask=mask)
                assert not torch.allclose(out[:, k], base[:, k]), f"target frame {k - 1} not fed to prediction {k}"


@pytest.mark.parametrize("kind", RECURRENT)
def test_mask_is_per_sample_and_covers_input_steps(kind):
    model = _build(kind).train()
    x, targets = _data()
    other = targets + 1.0
    later_inputs = x.clone()
    later_inputs[:, 1:] += 1.0
    # Sample 0 fully teacher-forced, sample 1 fed only its first frame and then its own predictions.
    mask = torch.stack([torch.ones(STEPS), torch.zeros(STEPS)])
    with torch.no_grad():
        base = model(x, targets=targets, true_frame_mask=mask)
        changed_targets = model(x, targets=other, true_frame_mask=mask)
        changed_inputs = model(later_inputs, targets=targets, true_frame_mask=mask)
    assert not torch.allclose(changed_targets[0, 1:], base[0, 1:])
    assert torch.equal(changed_targets[1], base[1])
    assert not torch.allclose(changed_inputs[0], base[0])
    assert torch.equal(changed_inputs[1], base[1])


@pytest.mark.parametrize("kind", RECURRENT)
def test_mask_needs_targets_and_its_shape(kind):
    model = _build(kind).train()
    x, targets = _data()
    with pytest.raises(ValueError, match="targets"):
        model(x, true_frame_mask=torch.ones(2, STEPS))
    with pytest.raises(ValueError, match="true_frame_mask"):
        model(x, targets=targets, true_frame_mask=torch.ones(2, STEPS + 1))


def test_teacher_forcing_area_averages_targets_at_output_resolution():
    scale = 2
    torch.manual_seed(0)
    model = create_backbone("convlstm", in_shape=(T_IN, C, H, W), out_frames=T_OUT, scale=scale).train()
    x, targets = _data()
    fine = targets.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    fine = fine + torch.tensor([[0.5, -0.5], [-0.5, 0.5]]).repeat(H, W)  # zero mean in each 2x2 block
    mask = torch.ones(2, STEPS)
    with torch.no_grad():
        out = model(x, targets=fine, true_frame_mask=mask)
        assert out.shape == (2, T_OUT, C, H * scale, W * scale)
        torch.testing.assert_close(out, model(x, targets=targets, true_frame_mask=mask))


# ---------------------------------------------------------------------------------------------
# (c) PredRNN-V2's memory decoupling loss
# ---------------------------------------------------------------------------------------------


def test_predrnn_v2_decoupling_loss():
    model = _build("predrnn_v2").train()
    x, targets = _data()
    deltas = []
    for cell in model.cells:
        cell.register_forward_hook(lambda module, args, out: deltas.append(out[3:]))
    prediction = model(x, targets=targets, true_frame_mask=torch.ones(2, STEPS))
    aux = model.auxiliary_loss
    assert aux is not None and aux.dim() == 0 and torch.isfinite(aux)
    assert 0 < aux.item() <= model.decouple_beta
    # Independent recomputation: beta * mean over layers/steps/samples/channels of |cos| between the
    # adapted increments, each channel's map flattened.
    assert len(deltas) == len(model.cells) * (T_IN + T_OUT - 1)
    cosines = [
        F.cosine_similarity(model.adapter(dc).flatten(2), model.adapter(dm).flatten(2), dim=2).abs().mean()
        for dc, dm in deltas
    ]
    torch.testing.assert_close(aux, model.decouple_beta * torch.stack(cosines).mean())
    # It has a gradient, and with it every parameter is trained (the adapter by this loss alone).
    loss = (prediction - targets).square().mean() + aux
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.auxiliary_loss is None


def test_training_loss_adds_the_decoupling_loss():
    model = _build("predrnn_v2", decouple_beta=0.5).train()
    x, targets = _data()
    # At progress 1 reverse scheduled sampling feeds all inputs and (this seed) no true forecast
    # frame, so the prediction is the evaluation rollout's.
    loss = training_loss(model, x, targets, progress=1.0, generator=torch.Generator().manual_seed(0))
    aux = model.auxiliary_loss
    assert aux is not None and aux.item() > 0
    with torch.no_grad():
        mse = (model.eval()(x) - targets).square().mean()
    torch.testing.assert_close(loss, mse + aux)


# ---------------------------------------------------------------------------------------------
# E3D-LSTM's recall gate
# ---------------------------------------------------------------------------------------------


def test_e3d_recall_attends_over_positions_not_channels():
    from nuwa.backbones.e3d_lstm import recall

    g = torch.Generator().manual_seed(0)
    query = torch.rand(2, 4, 2, 3, 3, generator=g)
    # Every position of every stored state holds the same channel vector, so any attention over
    # positions must return exactly that vector everywhere.
    vector = torch.tensor([1.0, -2.0, 3.0, 0.5])
    history = [vector.view(1, 4, 1, 1, 1).expand(2, 4, 2, 3, 3).clone() for _ in range(3)]
    out = recall(query, history)
    torch.testing.assert_close(out, history[0])
    # Two stored states that differ: the recall is a convex mix of them, weighted by similarity.
    a, b = torch.zeros(1, 4, 2, 3, 3), torch.zeros(1, 4, 2, 3, 3)
    a[:, 0], b[:, 1] = 10.0, 10.0
    q = torch.zeros(1, 4, 2, 3, 3)
    q[:, 0] = 1.0  # aligned with a
    torch.testing.assert_close(recall(q, [a, b]), a, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# (d) mask schedules
# ---------------------------------------------------------------------------------------------


def _mask(method, progress, batch=4000, t_in=4, t_out=6):
    return true_frame_mask(method, progress, batch, t_in, t_out, torch.Generator().manual_seed(0))


def test_plain_has_no_mask_and_unknown_methods_fail():
    assert _mask("plain", 0.3) is None
    with pytest.raises(ValueError, match="unknown training method"):
        _mask("teacher_forcing", 0.3)


@pytest.mark.parametrize("method", ["scheduled_sampling", "reverse_scheduled_sampling"])
def test_mask_shape(method):
    for t_in, t_out in [(4, 6), (1, 3), (3, 1)]:
        mask = _mask(method, 0.3, batch=5, t_in=t_in, t_out=t_out)
        assert mask.shape == (5, t_in + t_out - 2)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_scheduled_sampling_goes_from_all_true_to_all_predicted():
    t_in = 4
    start, middle, end = (_mask("scheduled_sampling", p) for p in (0.0, 0.25, 1.0))
    assert start.eq(1).all()
    assert middle[:, : t_in - 1].eq(1).all() and end[:, : t_in - 1].eq(1).all()  # inputs always true
    assert abs(middle[:, t_in - 1 :].mean().item() - 0.5) < 0.03
    assert end[:, t_in - 1 :].eq(0).all()
    assert _mask("scheduled_sampling", 0.5)[:, t_in - 1 :].eq(0).all()  # at sampling_fraction


def test_reverse_scheduled_sampling_inputs_go_from_half_to_all_true():
    t_in = 4
    start, end = _mask("reverse_scheduled_sampling", 0.0), _mask("reverse_scheduled_sampling", 1.0)
    assert abs(start[:, : t_in - 1].mean().item() - 0.5) < 0.03
    assert abs(_mask("reverse_scheduled_sampling", 0.25)[:, : t_in - 1].mean().item() - 0.75) < 0.03
    assert end[:, : t_in - 1].eq(1).all()
    # forecast part: 0.5 * exp(-5 * progress / 0.5)
    assert abs(start[:, t_in - 1 :].mean().item() - 0.5) < 0.03
    assert abs(_mask("reverse_scheduled_sampling", 0.1)[:, t_in - 1 :].mean().item() - 0.5 * math.exp(-1)) < 0.03
    assert end[:, t_in - 1 :].mean().item() < 0.01


# ---------------------------------------------------------------------------------------------
# (e) reference sizes (OpenSTL TaxiBJ: in_shape (4, 2, 32, 32), 4 -> 4 frames; build only)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,published", [("predrnn_v2", 23.67e6), ("e3d_lstm", 50.99e6)])
def test_reference_parameter_counts(kind, published):
    model = create_backbone(kind, in_shape=(4, 2, 32, 32), out_frames=4, size="reference")
    measured = count_parameters(model)
    assert abs(measured - published) <= 0.1 * published, f"{kind}: {measured:,} vs {published:,.0f}"
