"""Mixup, the reference augmentation: paired with every other variant (the same start, the same
original windows, the same mixed positions as +Nuwa's bank positions), inputs and targets mixed
with one λ ~ Beta(α, α), resumable, and its strength in the banks' terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import killed_at_loss_call
import nuwa.loader as loader_module
import nuwa.train as train_module
from nuwa.io import load_checkpoint
from test_paired import banks, cell_arguments, recorded_run, same_weights, series, tiny_params_module  # noqa: F401

ALPHA = 0.2


def mixup_arguments(params, banks, **kwargs):
    arguments = cell_arguments(params, banks, "ori", **kwargs)
    arguments.update(variant="mixup", mix_fraction=0.5, mixup_alpha=ALPHA)
    return arguments


def test_mixed_rows_mix_inputs_and_targets_with_one_weight(banks):
    train = banks["train"]
    pool = loader_module.TrainingPool(train)
    rows = torch.tensor([0, 3, 5, 7])
    partners = torch.tensor([1, 2, 5, 0])
    weights = torch.tensor([1.0, 0.25, 0.5, 0.9], dtype=torch.float64)
    inputs, targets = pool.batch(loader_module.MixedRows(rows, partners, weights))
    plain_inputs, plain_targets = pool.batch(rows)
    other_inputs, other_targets = pool.batch(partners)
    for position, weight in enumerate(weights.tolist()):
        w = np.float32(weight)
        np.testing.assert_array_equal(inputs[position].numpy(),
                                      w * plain_inputs[position].numpy()
                                      + (np.float32(1) - w) * other_inputs[position].numpy())
        np.testing.assert_array_equal(targets[position].numpy(),
                                      w * plain_targets[position].numpy()
                                      + (np.float32(1) - w) * other_targets[position].numpy())
    assert torch.equal(inputs[0], plain_inputs[0]) and not torch.equal(inputs[1], plain_inputs[1])
    # a process's share of a batch is the same rows, partners and weights
    share = loader_module.MixedRows(rows, partners, weights)[1:3]
    assert torch.equal(share.partners, partners[1:3]) and torch.equal(share.weights, weights[1:3])
    # the compiled batch builder gives the same bytes
    compiled = pool.batch(loader_module.MixedRows(rows, partners, weights), nogil=True)
    assert torch.equal(compiled[0], inputs) and torch.equal(compiled[1], targets)


def test_mixup_weights_follow_beta_alpha_alpha_at_the_bank_positions(banks):
    train = banks["train"]
    values, sources, copy = banks["nuwa"]
    mixup = loader_module.PairedRows.seeded(loader_module.TrainingPool(train), 5, "d", "b", mix_fraction=0.5,
                                            mixup_alpha=ALPHA)
    nuwa = loader_module.PairedRows.seeded(loader_module.TrainingPool(train, values, sources), 5, "d", "b",
                                           bank_copies=copy, mix_fraction=0.5)
    drawn = [mixup.draw(32) for _ in range(300)]
    bank_rows = [nuwa.draw(32) for _ in range(300)]
    for mixed, rows in zip(drawn, bank_rows):
        # the same original windows, mixed exactly where +Nuwa takes a bank row
        np.testing.assert_array_equal(np.asarray(train.starts)[mixed.rows.numpy()],
                                      np.asarray(nuwa.pool.sources)[rows.numpy()])
        from_bank = (rows >= len(train)).numpy()
        # unmixed positions have weight 1; a few mixed ones draw λ that rounds to 1.0 (Beta(0.2, 0.2)
        # puts ~0.1 % of its mass within 1e-16 of 1)
        assert (mixed.weights.numpy()[~from_bank] == 1).all()
        assert from_bank[(mixed.weights < 1).numpy()].all()
    weights = torch.cat([m.weights for m in drawn]).numpy()
    lambdas = weights[weights < 1]
    assert 0.4 < len(lambdas) / len(weights) < 0.6
    # Beta(0.2, 0.2): U-shaped; a test of the distribution with a fixed seed (a wrong law fails it)
    assert stats.kstest(lambdas, stats.beta(ALPHA, ALPHA).cdf).pvalue > 0.01
    assert stats.kstest(lambdas, stats.uniform().cdf).pvalue < 1e-6
    partners = torch.cat([m.partners for m in drawn]).numpy()
    assert partners.min() >= 0 and partners.max() < len(train) and len(np.unique(partners)) > len(train) // 2


def test_mixup_is_paired_with_ori_and_trains(tiny_params_module, banks, series, monkeypatch):
    ori = recorded_run(monkeypatch, series, cell_arguments(tiny_params_module, banks, "ori"))
    seen = {"targets": []}
    real_loss = train_module.training_loss

    def loss(network, inputs, targets, **kwargs):
        if "weights" not in seen:
            seen["weights"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        seen["targets"].append(targets.clone())
        return real_loss(network, inputs, targets, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "training_loss", loss)
        _, history, metrics, _, _ = train_module.train_cell(series, **mixup_arguments(tiny_params_module, banks))
    assert same_weights(ori["weights"], seen["weights"])
    # targets are mixed too: some positions differ from Ori's targets, the others are Ori's bytes
    ori_targets = [np.frombuffer(t, dtype=np.float32) for t in ori["targets"]]
    differs = [not np.array_equal(o, t.numpy().ravel()) for o, t in zip(ori_targets, seen["targets"])]
    assert any(differs)
    assert metrics["mixup_alpha"] == ALPHA and metrics["mix_fraction"] == 0.5 and metrics["bank_samples"] == 0
    assert np.isfinite(history["train_loss"]).all()


def test_a_killed_mixup_run_resumes_to_the_same_bytes(tiny_params_module, banks, series, tmp_path, monkeypatch):
    arguments = mixup_arguments(tiny_params_module, banks, steps=8)
    arguments["train_config"].update(eval_every=2, checkpoint_every=3)
    _, history, metrics, _, _ = train_module.train_cell(series, **arguments)
    checkpoint = tmp_path / "checkpoint.pt"
    killed_at_loss_call(monkeypatch, 5, lambda: train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                        **arguments))
    assert set(load_checkpoint(checkpoint)["rows"]) == {"originals", "bank", "mixup"}
    _, resumed_history, resumed_metrics, _, _ = train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                         **arguments)
    assert resumed_metrics == metrics
    np.testing.assert_array_equal(resumed_history["train_loss"].to_numpy(), history["train_loss"].to_numpy())


def test_mixup_refuses_a_bank_and_a_bad_alpha(banks):
    train = banks["train"]
    values, sources, copy = banks["nuwa"]
    with pytest.raises(ValueError, match="no bank rows"):
        loader_module.PairedRows.seeded(loader_module.TrainingPool(train, values, sources), 0, "d",
                                        bank_copies=copy, mix_fraction=0.5, mixup_alpha=ALPHA)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="mixup_alpha"):
            loader_module.PairedRows.seeded(loader_module.TrainingPool(train), 0, "d", mix_fraction=0.5,
                                            mixup_alpha=alpha)


def test_mixup_strength_is_in_the_banks_terms(banks):
    train = banks["train"]
    strength = loader_module.mixup_strength(train, ALPHA, 0, "moving_glyphs", patch_size=4)
    again = loader_module.mixup_strength(train, ALPHA, 0, "moving_glyphs", patch_size=4, chunk=7)
    assert strength == pytest.approx(again, rel=1e-12)  # chunking never changes it
    assert 0 < strength["changed_cell_fraction"] <= 1 and strength["mean_abs_change_std"] > 0
    # by hand, from the same documented draws: one partner and λ per training window
    from scipy.special import betaincinv

    from nuwa.seeding import torch_generator

    starts = np.asarray(train.starts)
    partner_draw, weight_draw = torch.rand((2, len(starts)), dtype=torch.float64,
                                           generator=torch_generator(0, "mixup-strength", "moving_glyphs")).numpy()
    partners = np.minimum((partner_draw * len(starts)).astype(np.int64), len(starts) - 1)
    weight = betaincinv(ALPHA, ALPHA, weight_draw).astype(np.float32).reshape(-1, 1, 1, 1, 1)
    original = train.inputs(starts).astype(np.float32)
    change = weight * original + (np.float32(1) - weight) * original[partners] - original
    std = np.asarray(train.series.std, dtype=np.float64).reshape(1, 1, -1, 1, 1)
    assert strength["mean_abs_change_std"] == pytest.approx(float(np.mean(np.abs(change) / std)), rel=1e-6)
    n, t, c, h, w = change.shape
    cells = (change != 0).reshape(n, t, c, h // 4, 4, w // 4, 4).any(axis=(2, 4, 6))
    assert strength["changed_cell_fraction"] == pytest.approx(float(cells.mean()))


def test_the_mixup_variant_through_the_cli(tmp_path):
    """`nuwa bank` writes mixup's empty bank (method 'mixup'); `nuwa train` mixes at batch time
    and puts the mixup's strength beside its metrics."""
    import json

    import xarray as xr
    import yaml

    from conftest import TINY_PARAMS
    from nuwa import cli

    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train"].update(steps=4, eval_every=2)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    common = ["--params", str(params_file), "--dataset", "moving_glyphs", "--threads", "1"]
    data, bank, out = tmp_path / "data.nc", tmp_path / "bank.nc", tmp_path / "run"
    assert cli.main(["ingest", *common, "--out", str(data)]) == 0
    assert cli.main(["bank", *common, "--variant", "mixup", "--seed", "0", "--data", str(data), "--out", str(bank)]) == 0
    with xr.open_dataset(bank) as written:
        assert written.attrs["method"] == "mixup" and written.sizes["bank_sample"] == 0
    assert cli.main(["train", *common, "--task", "forecast", "--train-percent", "100", "--backbone", "simvp",
                     "--variant", "mixup", "--seed", "0", "--device", "cpu",
                     "--data", str(data), "--bank", str(bank), "--out-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "mixup" and metrics["mixup_alpha"] == 0.2 and metrics["mix_fraction"] == 0.5
    assert 0 < metrics["bank_changed_cell_fraction"] <= 1 and metrics["bank_mean_abs_change"] > 0
