"""The paired design: for one (dataset, backbone, seed) every variant starts from the same weights
and draws the same original windows; augmented variants replace the same batch positions by an
augmented copy of the same window (only the augmentation differs); seeds change all of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import killed_at_loss_call
import nuwa.loader as loader_module
import nuwa.train as train_module
from nuwa.ingest import ingest
from nuwa.io import DataFileError, load_checkpoint, save_checkpoint, write_netcdf
from nuwa.windows import load_series, select_dataset

COPIES = 2


@pytest.fixture(scope="module")
def tiny_params_module():
    import yaml

    from conftest import TINY_PARAMS

    return yaml.safe_load(TINY_PARAMS.read_text())


@pytest.fixture(scope="module")
def series(tiny_params_module, tmp_path_factory):
    path = tmp_path_factory.mktemp("paired") / "glyphs.nc"
    write_netcdf(ingest("moving_glyphs", tiny_params_module["datasets"]["moving_glyphs"]), path)
    return load_series(path)


def make_bank(train, copies: int, seed: int, scale: float):
    """A bank of ``copies`` augmented copies of every training window, in a shuffled row order
    (as no bank is required to be ordered): (values, source_index, copy)."""
    rng = np.random.default_rng(seed)
    starts = np.asarray(train.starts)
    sources = np.tile(starts, copies)
    copy = np.repeat(np.arange(copies, dtype=np.int32), len(starts))
    order = rng.permutation(len(sources))
    sources, copy = sources[order], copy[order]
    values = train.inputs(sources) + scale * rng.standard_normal((len(sources), *train.inputs(starts[:1]).shape[1:]))
    return values.astype(np.float32), sources, copy


@pytest.fixture(scope="module")
def banks(series, tiny_params_module):
    train = select_dataset(series, tiny_params_module["datasets"]["moving_glyphs"], "train")
    return {"train": train, "nuwa": make_bank(train, COPIES, 1, 0.1), "random": make_bank(train, COPIES, 2, 0.3)}


def cell_arguments(params, banks, variant, seed=0, mix_fraction=0.5, steps=3, backbone="simvp"):
    arguments = dict(dataset_name="moving_glyphs", dataset_config=params["datasets"]["moving_glyphs"],
                     backbone_name=backbone, backbone_config=params["backbones"][backbone], variant=variant,
                     train_config=dict(params["train"], steps=steps), seed=seed)
    if variant != "ori":
        values, sources, copy = banks[variant]
        arguments.update(bank_inputs=values, bank_sources=sources, bank_copies=copy, mix_fraction=mix_fraction)
    return arguments


def recorded_run(monkeypatch, series, arguments):
    """Train one cell, recording the weights at the first step, each step's targets, and the pool
    rows drawn (as (source window start, from the bank?, copy number or -1))."""
    record = {"weights": None, "targets": [], "draws": []}
    real_loss, real_draw = train_module.training_loss, loader_module.PairedRows.draw

    def loss(network, inputs, targets, **kwargs):
        if record["weights"] is None:
            record["weights"] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        record["targets"].append(targets.numpy().tobytes())
        return real_loss(network, inputs, targets, **kwargs)

    def draw(self, batch_size):
        rows = real_draw(self, batch_size)
        index = rows.numpy()
        from_bank = index >= self.originals
        copies = arguments.get("bank_copies")
        copy = np.where(from_bank, np.asarray(copies)[np.maximum(index - self.originals, 0)]
                        if copies is not None else -1, -1)
        record["draws"].append((np.asarray(self.pool.sources)[index], from_bank, copy))
        return rows

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "training_loss", loss)
        patch.setattr(loader_module.PairedRows, "draw", draw)
        model, history, metrics, _, _ = train_module.train_cell(series, **arguments)
    record.update(model=model, history=history, metrics=metrics)
    return record


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backbone", ["simvp", "convlstm"])
def test_every_variant_starts_from_the_same_weights_and_draws_the_same_windows(
        tiny_params_module, banks, series, monkeypatch, backbone):
    runs = {variant: recorded_run(monkeypatch, series, cell_arguments(tiny_params_module, banks, variant,
                                                                      backbone=backbone))
            for variant in ("ori", "nuwa", "random")}
    ori, nuwa, random = runs["ori"], runs["nuwa"], runs["random"]
    assert same_weights(ori["weights"], nuwa["weights"]) and same_weights(ori["weights"], random["weights"])
    assert len(ori["draws"]) == len(nuwa["draws"]) == len(random["draws"]) >= 3
    for step, ((ori_sources, ori_bank, _), (n_sources, n_bank, n_copy), (r_sources, r_bank, r_copy)) in \
            enumerate(zip(ori["draws"], nuwa["draws"], random["draws"])):
        assert not ori_bank.any()
        # the same source windows at every position: Ori's originals, or an augmented copy of them
        np.testing.assert_array_equal(n_sources, ori_sources, err_msg=f"step {step}")
        np.testing.assert_array_equal(r_sources, ori_sources, err_msg=f"step {step}")
        # +Nuwa and random replace the same positions, with the same copy numbers
        np.testing.assert_array_equal(n_bank, r_bank, err_msg=f"step {step}")
        np.testing.assert_array_equal(n_copy, r_copy, err_msg=f"step {step}")
    mixed = np.concatenate([draw[1] for draw in nuwa["draws"]])
    assert 0 < mixed.sum() < len(mixed)
    # the targets (the source windows' futures) are the same bytes in every variant
    assert ori["targets"] == nuwa["targets"] == random["targets"]
    assert ori["metrics"]["mix_fraction"] == 0.0 and nuwa["metrics"]["mix_fraction"] == 0.5
    assert ori["metrics"]["seed"] == nuwa["metrics"]["seed"] == 0
    assert nuwa["metrics"]["bank_samples"] == COPIES * len(banks["train"])


def test_a_different_seed_changes_the_weights_and_the_windows(tiny_params_module, banks, series, monkeypatch):
    zero = recorded_run(monkeypatch, series, cell_arguments(tiny_params_module, banks, "nuwa", seed=0))
    one = recorded_run(monkeypatch, series, cell_arguments(tiny_params_module, banks, "nuwa", seed=1))
    assert not same_weights(zero["weights"], one["weights"])
    assert not np.array_equal(zero["draws"][0][0], one["draws"][0][0])
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(zero["draws"], one["draws"]))
    assert one["metrics"]["seed"] == 1


def test_the_same_seed_gives_the_same_bytes(tiny_params_module, banks, series):
    arguments = cell_arguments(tiny_params_module, banks, "random", seed=3)
    first_model, first_history, first_metrics, _, _ = train_module.train_cell(series, **arguments)
    torch.manual_seed(99)  # global RNG state does not leak into a cell
    second_model, second_history, second_metrics, _, _ = train_module.train_cell(series, **arguments)
    assert first_metrics == second_metrics
    columns = ["train_loss", "val_loss", "learning_rate"]
    assert first_history[columns].to_numpy().tobytes() == second_history[columns].to_numpy().tobytes()
    assert same_weights(first_model.state_dict(), second_model.state_dict())


def test_mix_fraction_is_the_share_of_positions_from_the_bank(banks):
    values, sources, copy = banks["nuwa"]
    train = banks["train"]
    pool = loader_module.TrainingPool(train, values, sources)
    ori_rows = loader_module.PairedRows.seeded(loader_module.TrainingPool(train), 5, "d", "b", mix_fraction=0.5)
    expected = [ori_rows.draw(16) for _ in range(200)]
    for fraction in (0.0, 0.25, 0.5, 0.8, 1.0):
        rows = loader_module.PairedRows.seeded(pool, 5, "d", "b", bank_copies=copy, mix_fraction=fraction)
        drawn = [rows.draw(16) for _ in range(200)]
        index = torch.cat(drawn).numpy()
        share = float(np.mean(index >= len(train)))
        if fraction in (0.0, 1.0):
            assert share == fraction
        else:
            assert abs(share - fraction) < 0.04, (fraction, share)
        # every position's window is the original draw's, whatever the mix
        np.testing.assert_array_equal(pool.sources[index], pool.sources[torch.cat(expected).numpy()])
        bank = index[index >= len(train)] - len(train)
        if len(bank):
            assert set(copy[bank].tolist()) == set(range(COPIES))  # every copy is drawn
    # an empty bank (Ori's) is Ori's batches, whatever the mix
    empty = loader_module.PairedRows.seeded(loader_module.TrainingPool(train, values[:0], sources[:0]), 5, "d", "b",
                                            bank_copies=copy[:0], mix_fraction=0.5)
    assert all(torch.equal(empty.draw(16), want) for want in expected)


def test_the_bank_row_is_found_by_source_and_copy_not_by_row_order(banks):
    values, sources, copy = banks["nuwa"]
    train = banks["train"]
    starts = np.asarray(train.starts)
    table = loader_module.copy_row_table(starts, sources, copy)
    assert table.shape == (len(starts), COPIES)
    for window in range(len(starts)):
        for c in range(COPIES):
            row = table[window, c] - len(starts)
            assert sources[row] == starts[window] and copy[row] == c


def test_a_bank_missing_or_repeating_a_window_copy_pair_is_an_error(banks):
    values, sources, copy = banks["nuwa"]
    train = banks["train"]

    def rows(values, sources, copy, mix_fraction=0.5):
        pool = loader_module.TrainingPool(train, values, sources)
        return loader_module.PairedRows.seeded(pool, 0, "d", "b", bank_copies=copy, mix_fraction=mix_fraction)

    with pytest.raises(DataFileError, match=r"bank lacks 1 \(window, copy\) pair.*rerun the bank stage"):
        rows(values[1:], sources[1:], copy[1:])
    repeated = copy.copy()
    repeated[np.flatnonzero(sources == sources[0])] = copy[0]
    with pytest.raises(DataFileError, match="more than once"):
        rows(values, sources, repeated)
    with pytest.raises(DataFileError, match="copy number"):
        rows(values, sources, copy[:-1])
    with pytest.raises(ValueError, match="'copy' variable"):
        rows(values, sources, None)
    with pytest.raises(ValueError, match=r"mix_fraction 1.5: expected a number in \[0, 1\]"):
        rows(values, sources, copy, mix_fraction=1.5)
    rows(values, sources, None, mix_fraction=0.0)  # no copy numbers needed: the bank is never drawn


def test_a_killed_augmented_run_resumes_to_the_same_bytes(tiny_params_module, banks, series, tmp_path, monkeypatch):
    arguments = cell_arguments(tiny_params_module, banks, "nuwa", steps=8)
    arguments["train_config"].update(eval_every=2, checkpoint_every=3)
    _, history, metrics, _, _ = train_module.train_cell(series, **arguments)

    checkpoint = tmp_path / "checkpoint.pt"
    # killed after the checkpoint of step 3, before step 6's
    killed_at_loss_call(monkeypatch, 5, lambda: train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                        **arguments))
    assert set(load_checkpoint(checkpoint)["rows"]) == {"originals", "bank"}
    _, resumed_history, resumed_metrics, _, _ = train_module.train_cell(series, checkpoint_path=checkpoint,
                                                                         **arguments)
    assert resumed_metrics == metrics
    np.testing.assert_array_equal(resumed_history["train_loss"].to_numpy(), history["train_loss"].to_numpy())


def test_a_checkpoint_from_before_the_paired_design_is_refused(tiny_params_module, banks, series, tmp_path):
    arguments = cell_arguments(tiny_params_module, banks, "ori", steps=4)
    arguments["train_config"].update(checkpoint_every=2)
    checkpoint = tmp_path / "checkpoint.pt"
    train_module.train_cell(series, checkpoint_path=checkpoint, **arguments)
    saved = load_checkpoint(checkpoint)
    saved["row_generator"] = saved.pop("rows")["originals"]  # as checkpoints were written before
    save_checkpoint(saved, checkpoint)
    with pytest.raises(DataFileError, match=r"checkpoint.pt: a checkpoint written before the paired batch design.*"
                                            r"delete checkpoint.pt"):
        train_module.train_cell(series, checkpoint_path=checkpoint, **arguments)
