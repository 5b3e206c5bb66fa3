"""pretrain: a non-finite loss at any step is an error naming the stage, the dataset and the step."""

import math

import numpy as np
import pytest
import torch
import xarray as xr

from nuwa import pretrain as pretrain_module
from nuwa.errors import DivergedError
from nuwa.ingest import build_processed
from nuwa.pretrain import pretrain
from nuwa.upstream import build_upstream
from nuwa.windows import load_series

DATASET = {"input_frames": 3, "output_frames": 2, "window_stride": 1, "height": 8, "width": 8, "patch_size": 2}
CONFIG = {"objective": "reconstruct", "mask_ratio": 0.5, "embed_dim": 16, "depth": 1, "num_heads": 2,
          "mlp_ratio": 2.0, "steps": 30, "batch_size": 4, "learning_rate": 0.001}


@pytest.fixture
def series(tmp_path):
    values = np.random.default_rng(3).random((60, 1, 8, 8)).astype(np.float32)
    field = xr.DataArray(values, dims=("time", "channel", "y", "x"), name="v", attrs={"units": "1", "long_name": "v"})
    path = tmp_path / "toy.nc"
    build_processed(field, {"kind": "toy", "split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "toy").to_netcdf(path)
    return load_series(path)


def test_finite_run_returns_model_and_history(series):
    model, history = pretrain(series, "toy", DATASET, {**CONFIG, "steps": 3}, seed=0)
    assert list(history["step"]) == [1, 2, 3] and history["loss"].map(math.isfinite).all()
    assert not model.training


def test_huge_learning_rate_diverges_with_the_step_named(series):
    with pytest.raises(DivergedError, match=r"^pretrain toy: loss is (nan|inf) at step ([2-9]|[12][0-9]|30) "
                                            r"\(diverged\); nothing written$"):
        pretrain(series, "toy", DATASET, {**CONFIG, "learning_rate": 1e9}, seed=0)


@pytest.mark.parametrize("objective", ["reconstruct", "masked", "next_frame"])
def test_nan_weights_fail_at_step_one(series, monkeypatch, objective):
    def nan_model(config, dataset_config, channels):
        model = build_upstream(config, dataset_config, channels)
        with torch.no_grad():
            model.head.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(pretrain_module, "build_upstream", nan_model)
    with pytest.raises(DivergedError, match=r"^pretrain toy: loss is nan at step 1 \(diverged\); nothing written$"):
        pretrain(series, "toy", DATASET, {**CONFIG, "objective": objective}, seed=0)
    assert issubclass(DivergedError, ValueError)  # the CLI prints it as one line and exits 2
