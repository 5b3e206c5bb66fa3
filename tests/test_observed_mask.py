"""Never-observed pixels (issue 19): a gridded field's pixels that are NaN in every frame (the sea
of a land-only product such as WFDE5) are recorded as ``observed(y, x)``, filled, and left out of
every loss and metric; without a mask every number is as before."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from nuwa import metrics as M
from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.errors import DataFileError
from nuwa.evaluate import evaluate_forecaster, examples_dataset, masked_window_losses
from nuwa.ingest import SPLIT_CODES, ingest
from nuwa.io import write_netcdf
from nuwa.methods import squared_error_mean, training_loss
from nuwa.windows import SeriesData, WindowDataset, load_series, select_dataset

WFDE5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "weather" / "wfde5" / "precipitation_flux.nc"
TIMES = pd.date_range("2017-01-01", periods=48, freq="h")
LAT = np.arange(57.75, 49.9, -0.5)  # 16 rows, descending
LON = np.arange(-10.75, -1.0, 0.5)  # 20 columns
TIME_ENCODING = {"units": "hours since 1900-01-01 00:00:00.0", "calendar": "gregorian", "dtype": "int32"}


def sea_mask() -> np.ndarray:
    """True where never observed: a 'sea' corner block and one isolated pixel."""
    never = np.zeros((len(LAT), len(LON)), dtype=bool)
    never[:5, 12:] = True
    never[10, 2] = True
    return never


def rain(seed: int = 0) -> np.ndarray:
    """Rain-like flux (kg m-2 s-1): a moving blob plus sparse showers, many zeros; NaN over the sea."""
    rng = np.random.default_rng(seed)
    t, y, x = np.meshgrid(np.arange(len(TIMES)), np.arange(len(LAT)), np.arange(len(LON)), indexing="ij")
    blob = 4.0 * np.exp(-((y - 8 - 3 * np.sin(t / 7)) ** 2 + (x - 2 - 0.3 * t % 20) ** 2) / 8.0)
    showers = rng.gamma(0.4, 1.0, size=blob.shape) * (rng.random(blob.shape) < 0.3)
    values = ((blob + showers) / 3600.0).astype(np.float32)
    values[:, sea_mask()] = np.nan
    return values


def write_source(path: Path, values: np.ndarray, extra: dict | None = None) -> Path:
    dataset = xr.Dataset(
        {"pr": (("time", "lat", "lon"), values, {"units": "kg m-2 s-1", "standard_name": "precipitation_flux",
                                                  "long_name": "precipitation flux"}),
         **(extra or {})},
        coords={"time": ("time", TIMES), "lat": ("lat", LAT, {"units": "degrees_north"}),
                "lon": ("lon", LON, {"units": "degrees_east"})},
        attrs={"Conventions": "CF-1.8", "title": "synthetic land-only precipitation"})
    dataset.to_netcdf(path, encoding={"time": TIME_ENCODING})
    return path


def entry(source, **overrides) -> dict:
    config = {
        "kind": "gridded", "height": len(LAT), "width": len(LON), "input_frames": 4, "output_frames": 4,
        "window_stride": 1, "patch_size": 4, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "csi_thresholds": [0.1, 1.0], "seed": 0, "source": str(source), "variables": ["pr"],
        "dims": {"time": "time", "y": "lat", "x": "lon"}, "time_step": "1h",
        "never_observed": "mask", "convert": {"pr": {"factor": 3600, "units": "mm h-1"}},
    }
    return config | overrides


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_source(tmp_path_factory.mktemp("land") / "pr.nc", rain())


@pytest.fixture(scope="module")
def processed(source, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("processed") / "land.nc"
    write_netcdf(ingest("land", entry(source)), path)
    return path


# -- the reader -----------------------------------------------------------------------------

def test_ingest_records_the_mask_and_fills_never_observed_pixels(source, processed):
    never = sea_mask()
    dataset = xr.open_dataset(processed)
    flags = dataset["observed"]
    assert flags.dims == ("y", "x") and flags.dtype == np.int8
    np.testing.assert_array_equal(flags.values, (~never).astype(np.int8))
    assert list(flags.attrs["flag_values"]) == [0, 1] and flags.attrs["flag_meanings"] == "never_observed observed"
    field = dataset["pr"]
    assert field.attrs["units"] == "mm h-1" and field.attrs["source_units"] == "pr: kg m-2 s-1"
    assert field.attrs["never_observed"] == "mask"
    assert field.attrs["never_observed_pixels"] == int(never.sum())
    assert field.attrs["observed_pixels"] == int((~never).sum())
    raw = rain().astype(np.float64) * 3600.0  # convert: value * 3600 in float64
    values = field.values[:, 0]
    np.testing.assert_array_equal(values[:, ~never], raw[:, ~never].astype(np.float32))
    fill = np.float32(np.nanmean(raw))  # the channel's mean over observed values
    assert field.attrs["never_observed_fill"] == f"pr: {float(fill):.7g}"
    assert (values[:, never] == fill).all()
    # the fill moves neither the data's min nor its max (the metrics' data_range)
    train = values[dataset["split"].values == SPLIT_CODES["train"]]
    assert dataset.attrs["data_min"] == float(train[:, ~never].min())
    assert dataset.attrs["data_max"] == float(train[:, ~never].max())
    series = load_series(processed)
    np.testing.assert_array_equal(series.observed, ~never)
    assert series.observed.dtype == np.bool_


def test_default_keeps_nan_an_error_and_writes_no_new_variable(source, tmp_path):
    with pytest.raises(DataFileError, match="non-finite"):
        ingest("land", entry(source, never_observed="missing"))
    clean = write_source(tmp_path / "clean.nc", np.nan_to_num(rain()))
    base = {k: v for k, v in entry(clean).items() if k not in ("never_observed", "convert")}
    default = get_dataset("gridded")(base, 0)
    explicit = get_dataset("gridded")(base | {"never_observed": "missing"}, 0)
    xr.testing.assert_identical(default, explicit)
    assert "observed" not in default.coords
    assert not [key for key in default.attrs if key.startswith(("never_observed", "convert", "source_units"))]
    # a processed file without the variable: no mask
    path = tmp_path / "clean_processed.nc"
    write_netcdf(ingest("clean", base), path)
    assert load_series(path).observed is None


def test_a_partially_nan_pixel_is_an_error_naming_it(tmp_path):
    values = rain()
    values[7, 5, 4] = np.nan
    values[9, 5, 4] = np.nan
    path = write_source(tmp_path / "holes.nc", values)
    with pytest.raises(DataFileError, match=r"variable 'pr' is NaN in 2 of 48 frames at lat=55.25, lon=-8.75 "
                                            r"\(row 5, column 4\), observed in the others .*set fill_missing"):
        get_dataset("gridded")(entry(path), 0)
    field = get_dataset("gridded")(entry(path, fill_missing=0.0), 0)
    assert field["observed"].values[5, 4] == 1
    assert field.values[7, 0, 5, 4] == 0.0 and np.isfinite(field.values).all()


def test_the_variables_must_share_their_never_observed_pixels(tmp_path):
    other = np.nan_to_num(rain(1))
    path = write_source(tmp_path / "two.nc", rain(), {"tas": (("time", "lat", "lon"), other + 270, {"units": "K"})})
    with pytest.raises(DataFileError, match=r"variable 'pr' is NaN in every frame but 'tas' is not"):
        get_dataset("gridded")(entry(path, variables=["pr", "tas"]), 0)


def test_coarsen_averages_the_observed_cells_of_each_block(source):
    field = get_dataset("gridded")(entry(source, coarsen=4, height=4, width=5), 0)
    never = sea_mask()
    raw = rain().astype(np.float64) * 3600.0
    fill = np.float32(np.nanmean(raw))
    observed = field["observed"].values
    expected_flags = (~never).reshape(4, 4, 5, 4).any(axis=(1, 3))
    np.testing.assert_array_equal(observed, expected_flags.astype(np.int8))
    # block (2, 0) holds the isolated never-observed pixel (10, 2): the mean of its 15 others
    block = raw[:, 8:12, 0:4].reshape(48, -1)
    np.testing.assert_allclose(field.values[:, 0, 2, 0], np.nanmean(block, axis=1), rtol=1e-6)
    assert (field.values[:, 0, :1, 3:] == fill).all()  # all-sea blocks: never observed, filled
    assert not observed[:1, 3:].any()


def test_settings_are_checked():
    schema = dataset_config_schema("gridded")
    assert {"never_observed", "convert"} <= set(schema["properties"])
    import jsonschema

    jsonschema.validate(entry("x.nc"), schema)
    for bad in ({"never_observed": "drop"}, {"convert": {"pr": {"factor": 2}}},
                {"convert": {"pr": {"scale": 2, "units": "x"}}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(entry("x.nc") | bad, schema)
    read = get_dataset("gridded")
    with pytest.raises(ValueError, match="convert.tas: not one of the variables"):
        read(entry("x.nc", convert={"tas": {"units": "K"}}), 0)
    with pytest.raises(ValueError, match="factor must not be 0"):
        read(entry("x.nc", convert={"pr": {"factor": 0, "units": "K"}}), 0)


# -- the training and validation losses -----------------------------------------------------

class Fixed(torch.nn.Module):
    """A 'model' that returns a learnable constant forecast."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = torch.nn.Parameter(out.clone())

    def forward(self, inputs):
        return self.out


def fields(seed=0, shape=(3, 2, 1, 16, 20)):
    rng = np.random.default_rng(seed)
    return rng.gamma(0.5, 1.0, size=shape), rng.gamma(0.5, 1.0, size=shape)


def test_the_masked_loss_is_the_mse_over_observed_pixels():
    pred, truth = (torch.from_numpy(a).float() for a in fields())
    observed = torch.from_numpy(~sea_mask())
    n = int(observed.sum())
    hand = float(((pred - truth) ** 2 * observed).sum()) / (3 * 2 * 1 * n)
    assert float(squared_error_mean(pred, truth, observed)) == pytest.approx(hand, rel=1e-6)
    # no mask: exactly torch.mean, as before
    assert torch.equal(squared_error_mean(pred, truth), torch.mean((pred - truth) ** 2))
    # huge values at never-observed pixels change nothing
    spoiled = pred.clone()
    spoiled[..., ~observed] = 1e18
    assert torch.equal(squared_error_mean(spoiled, truth, observed), squared_error_mean(pred, truth, observed))
    model = Fixed(pred)
    loss = training_loss(model, truth, truth, progress=0.0, generator=torch.Generator(), observed=observed)
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    loss.backward()
    assert (model.out.grad[..., ~observed] == 0).all() and (model.out.grad[..., observed] != 0).any()
    unmasked = training_loss(Fixed(pred), truth, truth, progress=0.0, generator=torch.Generator())
    assert torch.equal(unmasked, torch.mean((pred - truth) ** 2))


def synthetic_series(observed=None, length=40, seed=0) -> SeriesData:
    rng = np.random.default_rng(seed)
    field = rng.gamma(0.5, 1.0, size=(length, 1, 16, 20)).astype(np.float32)
    split = np.repeat(np.array([0, 1, 2], np.int8), [20, 10, 10])
    return SeriesData(field=field, split=split, mean=np.array([0.5], np.float32), std=np.array([0.7], np.float32),
                      data_range=float(field.max() - field.min()), name="pr", attrs={"units": "mm h-1"},
                      observed=observed)


def test_the_validation_loss_is_over_observed_pixels():
    from nuwa.train import validation_loss, validation_windows

    observed = ~sea_mask()
    series = synthetic_series(observed)
    val = WindowDataset(series, "val", 2, 2, 1)
    out = torch.from_numpy(np.random.default_rng(3).normal(size=(4, 2, 1, 16, 20))).float()
    model = Fixed(out)
    got = validation_loss(model, val, batch_size=4, max_batches=1)
    targets = torch.stack([val[int(i)][2] for i in validation_windows(len(val), 4)])
    hand = float(((out - targets) ** 2)[..., torch.from_numpy(observed)].double().sum()) / (4 * 2 * observed.sum())
    assert got == pytest.approx(hand, rel=1e-6)
    plain = validation_loss(model, WindowDataset(synthetic_series(), "val", 2, 2, 1), batch_size=4, max_batches=1)
    assert plain == pytest.approx(float(((out - targets) ** 2).double().mean()), rel=1e-6)


# -- metrics --------------------------------------------------------------------------------

def spoil(a: np.ndarray, observed: np.ndarray, value: float) -> np.ndarray:
    out = a.copy()
    out[..., ~observed] = value
    return out


def test_metrics_equal_hand_computations_over_observed_pixels():
    pred, truth = fields(1)
    observed = ~sea_mask()
    n = int(observed.sum())
    d = (pred - truth)[..., observed]  # (B, T, C, n)
    assert M.mse(pred, truth, observed=observed) == pytest.approx(np.mean(d ** 2), rel=1e-12)
    assert M.mae(pred, truth, observed=observed) == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
    assert M.mse_frame(pred, truth, observed=observed) == pytest.approx(np.sum(d ** 2) / 6, rel=1e-12)
    psnr = 10 * np.log10(25.0 / np.mean(d ** 2, axis=(2, 3)))
    np.testing.assert_allclose(M.psnr_per_frame(pred, truth, 5.0, observed=observed), psnr, rtol=1e-12)
    p, t = pred[..., observed], truth[..., observed]
    for k, thr in enumerate((0.1, 1.0)):
        hits = np.sum((p >= thr) & (t >= thr))
        misses = np.sum((p < thr) & (t >= thr))
        fas = np.sum((p >= thr) & (t < thr))
        np.testing.assert_array_equal(M.contingency_counts(pred, truth, [0.1, 1.0], observed=observed)[k],
                                      [hits, misses, fas])
    acc = M.MetricAccumulator(5.0, [0.1, 1.0], fss_scales=(1, 3), observed=observed)
    acc.update(pred[:2], truth[:2])
    acc.update(pred[2:], truth[2:])
    result = acc.compute()
    assert result["mse"] == pytest.approx(np.mean(d ** 2), rel=1e-12)
    assert result["mae_frame"] == pytest.approx(np.sum(np.abs(d)) / 6, rel=1e-12)
    assert result["psnr"] == pytest.approx(psnr.mean(), rel=1e-12)
    per_step = acc.compute_per_step()
    np.testing.assert_allclose(per_step["mse"], np.mean(d ** 2, axis=(0, 2, 3)), rtol=1e-12)
    assert n * 6 == d.size


def test_fss_matches_pysteps_with_nan_at_never_observed_pixels():
    with contextlib.redirect_stdout(io.StringIO()):
        spatial = pytest.importorskip("pysteps.verification.spatialscores")
    pred, truth = fields(2)
    observed = ~sea_mask()
    for thr, scale in ((0.5, 1), (0.5, 5), (1.5, 3)):
        state = spatial.fss_init(thr, scale)
        for b in range(pred.shape[0]):
            for lead in range(pred.shape[1]):
                spatial.fss_accum(state, spoil(pred[b, lead, 0], observed, np.nan),
                                  spoil(truth[b, lead, 0], observed, np.nan))
        assert M.fss(pred, truth, thr, scale, observed=observed) == pytest.approx(spatial.fss_compute(state),
                                                                                 rel=1e-12)


def test_masked_ssim_is_the_map_over_observed_centres_of_flattened_images():
    from skimage.metrics import structural_similarity  # noqa: PLC0415 (tests only)

    pred, truth = fields(3, shape=(1, 2, 1, 16, 20))
    observed = ~sea_mask()
    expected = []
    for lead in range(2):
        p, t = pred[0, lead, 0], truth[0, lead, 0]
        flat = t[observed].mean()
        _, full = structural_similarity(np.where(observed, t, flat), np.where(observed, p, flat), data_range=6.0,
                                        full=True)
        expected.append(full[3:-3, 3:-3][observed[3:-3, 3:-3]].mean())
    got = M.ssim_per_image(pred, truth, 6.0, observed=observed)[0, :, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_values_at_never_observed_pixels_change_no_metric():
    pred, truth = fields(4)
    observed = ~sea_mask()

    def scores(p, t):
        acc = M.MetricAccumulator(5.0, [0.1, 1.0], fss_scales=(1, 3, 5), observed=observed)
        acc.update(p, t)
        return acc.compute(), acc.compute_per_step()

    reference = scores(pred, truth)
    assert scores(spoil(pred, observed, 1e30), truth) == reference
    assert scores(spoil(pred, observed, np.nan), spoil(truth, observed, -1e30)) == reference
    assert scores(spoil(pred, observed, 3.0), spoil(truth, observed, 3.0)) == reference  # events there too


def test_no_mask_and_an_all_true_mask_give_exactly_the_unmasked_numbers():
    pred, truth = fields(5)

    def scores(**mask):
        acc = M.MetricAccumulator(5.0, [0.1, 1.0], fss_scales=(1, 3), **mask)
        acc.update(pred, truth)
        return acc.compute(), acc.compute_per_step()

    assert scores() == scores(observed=None) == scores(observed=np.ones((16, 20), dtype=bool))
    assert M.mse(pred, truth) == M.mse(pred, truth, observed=np.ones((16, 20), np.int8))
    with pytest.raises(ValueError, match="observed has shape"):
        M.mse(pred, truth, observed=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="no pixel observed"):
        M.MetricAccumulator(1.0, observed=np.zeros((16, 20), bool))
    with pytest.raises(ValueError, match="non-finite"):  # NaN at an observed pixel is still an error
        M.mse(spoil(pred, sea_mask(), np.nan), truth, observed=~sea_mask())


# -- evaluation and baselines ---------------------------------------------------------------

def persistence_forecast(series: SeriesData, spoiled: bool = False):
    def forecast(inputs: torch.Tensor) -> torch.Tensor:
        out = inputs[:, -1:].expand(-1, 2, -1, -1, -1).clone()
        if spoiled:
            out[..., torch.from_numpy(~series.observed)] = 1e6
        return out
    return forecast


def test_per_window_losses_and_metrics_are_over_observed_pixels():
    observed = ~sea_mask()
    series = synthetic_series(observed)
    test = WindowDataset(series, "test", 2, 2, 1)
    metrics, examples, losses = evaluate_forecaster(persistence_forecast(series), test, [0.5], batch_size=3,
                                                    example_count=2, fss_scales=(1, 3))
    starts = test.starts
    truth = np.stack([series.field[s + 2:s + 4] for s in starts]).astype(np.float64)
    pred = np.stack([np.repeat(series.field[s + 1:s + 2], 2, axis=0) for s in starts]).astype(np.float64)
    d = (pred - truth)[..., observed]
    np.testing.assert_allclose(losses["mse"].values, np.mean(d ** 2, axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(losses["mae"].values, np.mean(np.abs(d), axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(losses["target_mean"].values, truth[..., observed].mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(losses["target_max"].values, truth[..., observed].max(axis=(1, 2, 3)), rtol=1e-6)
    assert metrics["mse"] == pytest.approx(float(losses["mse"].mean()), rel=1e-9)
    assert metrics["mse"] == pytest.approx(np.mean(d ** 2), rel=1e-5)
    assert metrics["observed_pixels"] == observed.sum() and metrics["grid_pixels"] == observed.size
    assert losses.attrs["observed_pixels"] == observed.sum()
    assert "observed" in examples_dataset(examples, series, {}).coords

    # a forecast with huge values at never-observed pixels, and a truth with them there: the same scores
    spoiled = synthetic_series(observed)
    spoiled.field[:, :, ~observed] = 1e6
    again, _, again_losses = evaluate_forecaster(persistence_forecast(spoiled, spoiled=True),
                                                 WindowDataset(spoiled, "test", 2, 2, 1), [0.5], batch_size=3,
                                                 fss_scales=(1, 3))
    assert again == metrics
    for name in ("mse", "mae", "target_mean", "target_max", "csi", "fss"):
        np.testing.assert_array_equal(again_losses[name].values, losses[name].values)


def test_without_a_mask_the_per_window_losses_are_as_before():
    series = synthetic_series()
    test = WindowDataset(series, "test", 2, 2, 1)
    metrics, _, losses = evaluate_forecaster(persistence_forecast(series), test, [0.5], batch_size=3)
    assert "observed_pixels" not in metrics and "observed_pixels" not in losses.attrs
    # what evaluate_forecaster scores: the denormalised forecast and targets
    normalised = series.normalised
    truth = np.stack([series.denormalise(normalised[s + 2:s + 4]).numpy() for s in test.starts])
    pred = np.stack([series.denormalise(normalised[s + 1:s + 2].expand(2, -1, -1, -1)).numpy() for s in test.starts])
    error = pred.astype(np.float64) - truth.astype(np.float64)
    np.testing.assert_array_equal(losses["mse"].values, np.mean(error * error, axis=(2, 3, 4)))
    np.testing.assert_array_equal(losses["target_max"].values, np.max(truth, axis=(1, 2, 3, 4)).astype(np.float64))
    # the masked formula, with every pixel observed, agrees to rounding
    masked = masked_window_losses(pred, truth, np.ones((16, 20), bool))
    np.testing.assert_allclose(masked["mse"], losses["mse"].values, rtol=1e-12)


def test_optical_flow_ignores_never_observed_inputs_and_baselines_are_scored_masked():
    from nuwa.baselines import evaluate_baseline, normalised_forecaster, optical_flow

    observed = ~sea_mask()
    series = synthetic_series(observed)
    test = WindowDataset(series, "test", 3, 2, 1)
    inputs = test.inputs(test.starts[:3]).astype(np.float64)
    forecast = optical_flow(inputs, 2, observed=observed)
    spoiled = optical_flow(spoil(inputs, observed, 1e6), 2, observed=observed)
    np.testing.assert_array_equal(forecast[..., observed], spoiled[..., observed])
    np.testing.assert_array_equal(spoiled[..., ~observed], np.repeat(spoil(inputs, observed, 1e6)[:, -1:], 2,
                                                                     axis=1)[..., ~observed])
    for name in ("persistence", "optical_flow"):
        direct, _ = evaluate_baseline(name, test, [0.5], fss_scales=(1, 3))
        through, _, _ = evaluate_forecaster(normalised_forecaster(name, series, 2), test, [0.5], fss_scales=(1, 3))
        assert direct["observed_pixels"] == through["observed_pixels"] == observed.sum()
        for key in ("mse", "mae", "csi_0.5", "ssim", "fss_0.5_3"):
            assert direct[key] == pytest.approx(through[key], rel=1e-4, abs=1e-6), (name, key)


# -- end to end -----------------------------------------------------------------------------

def test_a_tiny_training_run_on_a_masked_field(processed, monkeypatch):
    import yaml

    from conftest import TINY_PARAMS
    import nuwa.train as train_module

    tiny = yaml.safe_load(TINY_PARAMS.read_text())
    series = load_series(processed)
    seen = []
    real_loss = train_module.training_loss

    def loss(*args, **kwargs):
        seen.append(kwargs.get("observed"))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", loss)
    _, history, metrics, _, losses = train_module.train_cell(
        series, dataset_name="land", dataset_config=entry("unused"), backbone_name="simvp",
        backbone_config=tiny["backbones"]["simvp"], variant="ori",
        train_config=dict(tiny["train"], steps=3, eval_every=3), seed=0)
    assert all(torch.equal(mask.cpu(), torch.from_numpy(series.observed)) for mask in seen) and len(seen) == 3
    assert np.isfinite(history["train_loss"]).all()
    for key in ("mse", "mae", "ssim", "psnr", "csi_0.1", "csi_1"):
        assert np.isfinite(metrics[key]), key
    assert metrics["observed_pixels"] == int((~sea_mask()).sum())
    assert np.isfinite(losses["mse"].values).all()


@pytest.mark.skipif(not WFDE5.exists(), reason=f"{WFDE5} not present")
def test_real_wfde5_precipitation_ingests_with_its_sea_masked(tmp_path):
    config = entry(WFDE5, height=20, width=28, input_frames=6, output_frames=6,
                   split={"train": 0.7, "val": 0.1, "test": 0.2})
    path = tmp_path / "wfde5_precip.nc"
    write_netcdf(ingest("wfde5_precip", config), path)
    series = load_series(path)
    assert series.field.shape == (744, 1, 20, 28)
    assert series.observed.sum() == 250 and (~series.observed).sum() == 310  # 55 % sea
    assert (~series.observed).mean() == pytest.approx(0.5536, abs=1e-4)
    counts = {split: len(select_dataset(series, config, split)) for split in ("train", "val", "test")}
    assert counts == {"train": 509, "val": 63, "test": 139}
    land = series.field[:, 0, series.observed]
    assert land.min() == 0.0 and 5.9 < land.max() < 6.0  # mm/h
    assert series.attrs["units"] == "mm h-1"
