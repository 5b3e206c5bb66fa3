"""The test losses per window and lead (nuwa.evaluate): their means are the pooled metrics, their
targets the windows' own, and they survive a NetCDF round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from conftest import TINY_PARAMS
from nuwa.evaluate import evaluate_forecaster, persistence
from nuwa.ingest import ingest
from nuwa.io import open_netcdf, write_netcdf
from nuwa.seeding import seed_torch
from nuwa.train import build_model
from nuwa.windows import load_series, select_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    config = params["datasets"]["moving_glyphs"]
    path = tmp_path_factory.mktemp("losses") / "glyphs.nc"
    write_netcdf(ingest("moving_glyphs", config), path)
    series = load_series(path)
    return params, config, series, select_dataset(series, config, "test")


def forecasters(params, config, series):
    seed_torch(0, "test-losses")
    model = build_model(params["backbones"]["simvp"], config, series.field.shape[1]).eval()
    return {"model": model, "persistence": lambda inputs: persistence(inputs, config["output_frames"])}


@pytest.mark.parametrize("name", ["model", "persistence"])
def test_the_losses_average_to_the_pooled_metrics(tiny, name):
    params, config, series, test = tiny
    forecast = forecasters(params, config, series)[name]
    # batches of 5 over 13 windows: the per-window losses are gathered across uneven batches
    metrics, _, losses = evaluate_forecaster(forecast, test, config["csi_thresholds"], batch_size=5,
                                             attrs={"window_stride": config["window_stride"]})
    assert len(test) == 13 and metrics["test_windows"] == 13
    assert losses.sizes == {"window": 13, "lead": config["output_frames"], "threshold": len(config["csi_thresholds"])}
    for metric in ("mse", "mae"):
        assert losses[metric].dims == ("window", "lead") and losses[metric].dtype == np.float64
        assert float(losses[metric].mean()) == pytest.approx(metrics[metric], rel=1e-12, abs=0)
    assert losses["source_index"].dtype == np.int64
    np.testing.assert_array_equal(losses["source_index"].values, test.starts)
    np.testing.assert_array_equal(losses["lead"].values, np.arange(1, config["output_frames"] + 1))
    units = series.attrs["units"]
    assert losses.attrs["units"] == units and losses["mae"].attrs["units"] == units
    assert losses["mse"].attrs["units"] == f"({units})^2"
    assert (losses.attrs["input_frames"], losses.attrs["output_frames"], losses.attrs["window_stride"]) == \
        (config["input_frames"], config["output_frames"], config["window_stride"])
    if name == "persistence":  # a different forecast gives different losses
        assert float(losses["mse"].mean()) > 0


def test_each_window_and_lead_is_its_own_frame(tiny):
    params, config, series, test = tiny
    forecast = forecasters(params, config, series)["persistence"]
    _, _, losses = evaluate_forecaster(forecast, test, config["csi_thresholds"], batch_size=4)
    first = test.input_frames
    for window, start in enumerate(test.starts.tolist()):
        truth = series.field[start + first:start + first + test.output_frames].astype(np.float64)
        # persistence in physical units: the last input frame (normalise, repeat, denormalise)
        last = series.denormalise(series.normalise(series.field[start + first - 1])).astype(np.float64)
        error = last[None] - truth
        np.testing.assert_allclose(losses["mse"].values[window], np.mean(error ** 2, axis=(1, 2, 3)),
                                   rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(losses["target_max"].values[window], truth.max(), rtol=1e-6)
        np.testing.assert_allclose(losses["target_mean"].values[window], truth.mean(), rtol=1e-5)
    # the lead-1 error of persistence is smaller than the last lead's on moving glyphs
    assert float(losses["mse"].sel(lead=1).mean()) < float(losses["mse"].isel(lead=-1).mean())


def test_the_losses_survive_a_netcdf_round_trip(tiny, tmp_path):
    params, config, series, test = tiny
    forecast = forecasters(params, config, series)["model"]
    with torch.no_grad():
        _, _, losses = evaluate_forecaster(forecast, test, config["csi_thresholds"],
                                           attrs={"dataset": "moving_glyphs", "seed": 0,
                                                  "window_stride": config["window_stride"]})
    write_netcdf(losses, tmp_path / "test_losses.nc")
    read = open_netcdf(tmp_path / "test_losses.nc", variables=("mse", "mae", "target_mean", "target_max"))
    xr.testing.assert_identical(read, losses)


def test_per_lead_csi_and_fss_are_pooled_counts_per_lead(tiny, tmp_path):
    """csi(lead, threshold) is hits / (hits + misses + false alarms) of that lead over every test
    window (pooled counts, worked out here by hand); fss(lead, threshold, scale) is the metric
    module's per-lead FSS; both reach lead_time.csv's columns."""
    from nuwa.compare import lead_time_table

    params, config, series, test = tiny
    forecast = forecasters(params, config, series)["persistence"]
    thresholds = config["csi_thresholds"]
    assert thresholds
    _, _, losses = evaluate_forecaster(forecast, test, thresholds, batch_size=4, fss_scales=(1, 3))
    assert losses["csi"].dims == ("lead", "threshold") and losses["fss"].dims == ("lead", "threshold", "scale")
    first, out = test.input_frames, test.output_frames
    # as scored: both in physical units after the normalise / denormalise round trip
    truth = np.stack([series.denormalise(series.normalise(series.field[s + first:s + first + out]))
                      for s in test.starts.tolist()])
    last = np.stack([series.denormalise(series.normalise(series.field[s + first - 1])) for s in test.starts.tolist()])
    for k, thr in enumerate(thresholds):
        observed, forecast_event = truth >= thr, (last[:, None] >= thr)
        for lead in range(out):
            o, f = observed[:, lead], np.broadcast_to(forecast_event[:, 0], observed[:, lead].shape)
            hits, misses, false = (o & f).sum(), (o & ~f).sum(), (~o & f).sum()
            assert float(losses["csi"].values[lead, k]) == pytest.approx(hits / (hits + misses + false), rel=1e-6)  # CSI_EPS
    assert np.isfinite(losses["fss"].values).any()
    # a NetCDF round trip keeps them; the lead-time table names them as metrics.json does
    write_netcdf(losses, tmp_path / "losses.nc")
    table = lead_time_table({("run",): open_netcdf(tmp_path / "losses.nc")})
    thr = thresholds[0]
    assert f"csi_{thr:g}" in table.columns and f"fss_{thr:g}_3" in table.columns
    np.testing.assert_allclose(table[f"csi_{thr:g}"].to_numpy(), losses["csi"].values[:, 0])
    np.testing.assert_allclose(table[f"fss_{thr:g}_3"].to_numpy(), losses["fss"].values[:, 0, 1])
