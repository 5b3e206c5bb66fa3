"""A dataset's own training budget (train.steps_by_dataset): chosen from Ori's learning curves
(docs/measurements/2026-12-07-learning-curves.md), the same for every variant, backbone and seed
of that dataset, and a name that is not a dataset is refused by `nuwa validate`."""

import copy

import pandas as pd
import pytest
import yaml

from nuwa import cli, grid
from nuwa.config import ParamsError, validate_params


def test_a_dataset_budget_replaces_train_steps_for_that_dataset_only(tiny_params):
    params = copy.deepcopy(tiny_params)
    params["datasets"]["faster_glyphs"] = {**params["datasets"]["moving_glyphs"], "max_speed": 3.0}
    params["train"]["steps_by_dataset"] = {"moving_glyphs": 7}
    validate_params(params)
    assert grid.train_steps(params, "moving_glyphs") == 7
    assert grid.train_steps(params, "faster_glyphs") == params["train"]["steps"] != 7
    del params["train"]["steps_by_dataset"]
    assert grid.train_steps(params, "moving_glyphs") == params["train"]["steps"]  # optional key


def test_a_budget_for_no_dataset_is_refused_naming_it(tiny_params):
    params = copy.deepcopy(tiny_params)
    params["train"]["steps_by_dataset"] = {"movingglyphs": 7}
    with pytest.raises(ParamsError, match=r"train\.steps_by_dataset: 'movingglyphs' has no entry under datasets"):
        validate_params(params)
    params["train"]["steps_by_dataset"] = {"moving_glyphs": 0}
    with pytest.raises(ParamsError, match=r"train\.steps_by_dataset"):
        validate_params(params)


def test_a_training_run_takes_its_datasets_budget(tiny_params, tmp_path):
    params = copy.deepcopy(tiny_params)
    params["train"].update(steps=4, eval_every=2, steps_by_dataset={"moving_glyphs": 6})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    common = ["--params", str(params_file), "--dataset", "moving_glyphs", "--threads", "1"]
    data, bank, out = tmp_path / "data.nc", tmp_path / "bank.nc", tmp_path / "run"
    assert cli.main(["ingest", *common, "--out", str(data)]) == 0
    assert cli.main(["bank", *common, "--variant", "ori", "--seed", "0", "--data", str(data), "--out", str(bank)]) == 0
    assert cli.main(["train", *common, "--backbone", "simvp", "--variant", "ori", "--seed", "0", "--device", "cpu",
                     "--data", str(data), "--bank", str(bank), "--out-dir", str(out)]) == 0
    assert pd.read_csv(out / "history.csv")["step"].max() == 6
