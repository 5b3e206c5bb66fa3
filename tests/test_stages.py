"""The stage table (nuwa/stages.py): one definition of the pipeline, and the keys a stage may read."""

from __future__ import annotations

import pytest

from nuwa import grid
from nuwa.stages import STAGES, UndeclaredParamsKey, declared_params, input_files, stage_params


def test_a_stage_reads_only_the_keys_it_declares(tiny_params):
    bank = declared_params(tiny_params, "bank", dataset="moving_glyphs", variant="nuwa", seed=0)
    assert bank["datasets"]["moving_glyphs"] == tiny_params["datasets"]["moving_glyphs"]
    assert bank["variants"]["nuwa"] == tiny_params["variants"]["nuwa"]
    assert bank["bank"]["chunk_size"] == tiny_params["bank"]["chunk_size"]  # a setting: read, no rerun
    assert bank["train"]["subset"] == "recent"  # which windows a train_percent keeps: the bank's too
    with pytest.raises(UndeclaredParamsKey, match=r"stage 'bank' read params key 'train.steps', which nuwa/stages.py "
                                                   r"does not declare for it"):
        bank["train"]["steps"]
    with pytest.raises(UndeclaredParamsKey, match="'bank.mix_fraction'"):  # the training stage's key
        bank["bank"]["mix_fraction"]
    with pytest.raises(UndeclaredParamsKey, match="'variants.random'"):  # another variant's entry
        bank["variants"].get("random")
    with pytest.raises(UndeclaredParamsKey, match="'datasets.pollutant'"):
        "pollutant" in bank["datasets"]


def test_declared_keys_are_the_rerun_keys_plus_settings(tiny_params):
    """What reruns a job (Snakemake's params JSON, DVC's params list) is what its code may read,
    less the settings that never change its bytes."""
    wildcards = {"dataset": "moving_glyphs", "task": "forecast", "train_percent": 100, "backbone": "simvp",
                 "variant": "nuwa", "seed": 0, "baseline": "optical_flow", "eval_on": "pollutant", "upstream": "masked"}
    tiny_params = dict(tiny_params, datasets=dict(tiny_params["datasets"],
                                                  pollutant=tiny_params["datasets"]["moving_glyphs"]))
    for name, stage in STAGES.items():
        if name == "validate":
            continue
        own = {axis: wildcards[axis] for axis in stage.axes}
        rerun = stage_params(tiny_params, name, **own)
        view = declared_params(tiny_params, name, **own)
        for key, value in rerun.items():
            assert grid.lookup(view, key) == value, (name, key)
        for setting in stage.settings:
            assert setting not in rerun, name


def test_an_ori_bank_depends_on_its_variant_entry_only(tiny_params):
    assert list(stage_params(tiny_params, "bank", dataset="moving_glyphs", variant="ori", seed=0)) == ["variants.ori"]


def test_every_grid_axis_reaches_the_run_folder_the_cell_and_the_train_stage(tiny_params):
    """Adding an axis is one entry in grid.AXES: the run folder, Cell, the train stage's
    wildcards and command follow from it."""
    cell = grid.train_cells(tiny_params)[0]
    for axis, spec in grid.AXES.items():
        assert spec.folder.format(**{axis: getattr(cell, axis)}) in cell.run_dir.split("/")
        assert axis in STAGES["train"].axes and f"{grid.option(axis)} {{{axis}}}" in STAGES["train"].command
    assert cell.run_dir == "results/runs/moving_glyphs/forecast/100pct/simvp/ori/seed0"
    assert grid.option("train_percent") == "--train-percent"
    assert len(grid.train_cells(dict(tiny_params, grid=dict(tiny_params["grid"], seeds=[0, 3])))) == 12
    more = dict(tiny_params["grid"], tasks=["forecast", "sr4"], train_percents=[25, 100])
    assert len(grid.train_cells(dict(tiny_params, grid=more))) == 6 * 2 * 2


def test_snakemake_inputs_follow_the_variant_and_backbone(tiny_params):
    bank = {"dataset": "moving_glyphs", "train_percent": 25, "seed": 0}
    random = input_files("bank", tiny_params, {**bank, "variant": "random"})
    nuwa = input_files("bank", tiny_params, {**bank, "variant": "nuwa"})
    assert random["saliency"] == [] and nuwa["saliency"] == "results/saliency/moving_glyphs.nc"
    train = input_files("train", tiny_params, {**bank, "task": "sr4", "backbone": "simvp", "variant": "nuwa"})
    assert train["bank"] == "results/bank/moving_glyphs/nuwa/25pct/seed0.nc" and train["upstream_model"] == []
    figures = input_files("figures", tiny_params, {"dataset": "moving_glyphs"})
    assert figures["bank"] == ["results/bank/moving_glyphs/nuwa/100pct/seed0.nc"]
    # every backbone and variant of the shown setting; every run's history (the learning curves)
    assert figures["examples"] == [f"results/runs/moving_glyphs/forecast/100pct/{b}/{v}/seed0/examples.nc"
                                   for b in ("simvp", "convlstm") for v in ("ori", "nuwa", "random")]
    assert figures["histories"] == [f"results/runs/moving_glyphs/forecast/100pct/{b}/{v}/seed0/history.csv"
                                    for b in ("simvp", "convlstm") for v in ("ori", "nuwa", "random")]
    baselines = input_files("tables", dict(tiny_params, grid=dict(tiny_params["grid"], tasks=["forecast", "sr4"])), {})
    assert "results/baselines/moving_glyphs/sr4/persistence.json" in baselines["baselines"]


def test_the_banks_that_read_the_saliency_file_are_the_bank_modules():
    from nuwa import bank, stages

    assert grid.IMPORTANCE_METHODS == stages.IMPORTANCE_METHODS == bank.IMPORTANCE_METHODS
