"""What a forecaster looks at: examples.nc with coordinates, the prediction figure (every backbone
and variant, error maps, colour bars with units, timestamps and leads), its GIF, and the learning
curves of every run."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from PIL import Image

from nuwa.config import ParamsError, validate_params
from nuwa.evaluate import evaluate_forecaster, example_positions, examples_dataset
from nuwa.figures import learning_curves_figure, lead_text, prediction_animation, prediction_figure, time_text
from nuwa.io import DataFileError, open_netcdf, save_animation, write_netcdf
from nuwa.windows import SeriesData, WindowDataset

T_IN, T_OUT, H, W = 3, 4, 8, 12
START = np.datetime64("2010-08-26T00:00", "ns")
STEP = np.timedelta64(5, "m")


def radar_series(length=60, units="mm h-1", dated=True) -> SeriesData:
    """A rain-like field, 5-min steps from 2010-08-26 00:00 UTC, on a projected grid (y northward, metres)."""
    rng = np.random.default_rng(0)
    field = rng.gamma(0.6, 2.0, size=(length, 1, H, W)).astype(np.float32)
    split = np.repeat(np.array([0, 1, 2], np.int8), [30, 10, length - 40])
    coords = {"y": (np.arange(H, dtype=np.float64)[::-1] * 8000.0, {"units": "m",
                                                                    "standard_name": "projection_y_coordinate"}),
              "x": (np.arange(W, dtype=np.float64) * 8000.0, {"units": "m"}),
              "channel": (np.array(["rain_rate"]), {})}
    if dated:
        coords["time"] = (START + STEP * np.arange(length), {"long_name": "end of the accumulation interval (UTC)",
                                                             "standard_name": "time"})
    return SeriesData(field=field, split=split, mean=np.array([1.0], np.float32), std=np.array([1.5], np.float32),
                      data_range=float(field.max()), name="rain_rate", coords=coords,
                      attrs={"units": units, "long_name": "rain rate"})


def persistence(inputs: torch.Tensor) -> torch.Tensor:
    return inputs[:, -1:].expand(-1, T_OUT, -1, -1, -1)


def scaled(factor: float):
    return lambda inputs: persistence(inputs) * factor


def examples_of(series, forecast=persistence, count=3, batch_size=4) -> xr.Dataset:
    test = WindowDataset(series, "test", T_IN, T_OUT, 1)
    _, examples, _ = evaluate_forecaster(forecast, test, [], batch_size=batch_size, example_count=count)
    return examples_dataset(examples, series, {"dataset": "toy"})


# --- examples.nc --------------------------------------------------------------------------------


def test_examples_carry_times_leads_and_the_grid(tmp_path):
    series = radar_series()
    test = WindowDataset(series, "test", T_IN, T_OUT, 1)
    write_netcdf(examples_of(series, count=3), tmp_path / "examples.nc")
    examples = open_netcdf(tmp_path / "examples.nc")
    assert examples.sizes["example"] == 3
    # spread evenly over the test split, whatever the batches
    starts = test.starts[example_positions(3, len(test))]
    np.testing.assert_array_equal(examples["source_index"].values, starts)
    assert starts[0] > test.starts[0] and starts[-1] < test.starts[-1]
    np.testing.assert_array_equal(examples_of(series, count=3, batch_size=1)["source_index"].values, starts)
    # valid time of each forecast frame, the reference time (last input), the leads as timedeltas
    times = START + STEP * np.arange(60)
    np.testing.assert_array_equal(examples["time"].values, times[starts[:, None] + T_IN + np.arange(T_OUT)])
    np.testing.assert_array_equal(examples["forecast_reference_time"].values, times[starts + T_IN - 1])
    np.testing.assert_array_equal(examples["lead"].values, STEP * np.arange(1, T_OUT + 1))
    np.testing.assert_array_equal(examples["input_step"].values, STEP * np.arange(1 - T_IN, 1))
    np.testing.assert_array_equal(examples["input_time"].values, times[starts[:, None] + np.arange(T_IN)])
    assert "UTC" in examples["time"].attrs["comment"]
    assert examples["lead"].attrs["standard_name"] == "forecast_period"
    # the processed file's grid and the data's units
    np.testing.assert_array_equal(examples["y"].values, series.coords["y"][0])
    assert examples["x"].attrs["units"] == "m" and list(examples["channel"].values) == ["rain_rate"]
    for name in ("inputs", "truth", "prediction"):
        assert examples[name].attrs["units"] == "mm h-1", name
    # the truth is the field at those times
    np.testing.assert_allclose(examples["truth"].values[1], series.field[starts[1] + T_IN:starts[1] + T_IN + T_OUT],
                               atol=1e-5)  # normalised and back


def test_the_same_windows_for_every_model_and_never_more_than_the_test_split():
    series = radar_series()
    first, second = examples_of(series, persistence), examples_of(series, scaled(0.5), batch_size=7)
    np.testing.assert_array_equal(first["source_index"].values, second["source_index"].values)
    count = len(WindowDataset(series, "test", T_IN, T_OUT, 1))
    assert examples_of(series, count=count + 5).sizes["example"] == count
    assert list(example_positions(1, 9)) == [4] and list(example_positions(3, 3)) == [0, 1, 2]


def test_frame_indices_without_a_time_coordinate_and_coarse_inputs_get_their_own_grid():
    series = radar_series(dated=False)
    examples = examples_of(series, count=2)
    assert examples["lead"].values.tolist() == list(range(1, T_OUT + 1)) and examples["lead"].attrs["units"] == "frame"
    starts = examples["source_index"].values
    np.testing.assert_array_equal(examples["time"].values, starts[:, None] + T_IN + np.arange(T_OUT))
    # super-resolution: inputs block-averaged by 2 lie on input_y / input_x, block means of y / x
    test = WindowDataset(series, "test", T_IN, T_OUT, 1)

    def upsample(inputs):
        return persistence(inputs).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

    _, raw, _ = evaluate_forecaster(upsample, test, [], example_count=2, input_factor=2)
    coarse = examples_dataset(raw, series, {})
    assert coarse["inputs"].dims[-2:] == ("input_y", "input_x")
    np.testing.assert_allclose(coarse["input_y"].values, series.coords["y"][0].reshape(-1, 2).mean(axis=1))


# --- the prediction figure ------------------------------------------------------------------------


def model_examples(series) -> dict:
    """Examples of two backbones x two variants, each another multiple of persistence."""
    return {(backbone, variant): examples_of(series, scaled(factor))
            for (backbone, variant), factor in zip([("simvp", "ori"), ("simvp", "nuwa"), ("convlstm", "ori"),
                                                    ("convlstm", "nuwa")], (1.0, 0.5, 0.8, 1.3))}


def images(figure) -> dict:
    return {image.get_gid(): image for axis in figure.axes for image in axis.get_images()}


def test_the_prediction_figure_shows_every_model_with_its_error_in_the_data_units():
    series = radar_series(units="kg m-2")
    examples = model_examples(series)
    figure = prediction_figure(examples, "toy (forecast, 100 %, seed 0)", window=1)
    drawn = images(figure)
    truth = examples["simvp", "ori"]["truth"].values[1, :, 0]
    for key, data in examples.items():
        name = " / ".join(key)
        prediction = data["prediction"].values[1, :, 0]
        for lead in range(T_OUT):
            np.testing.assert_allclose(drawn[f"prediction:{name}:lead{lead + 1}"].get_array(), prediction[lead])
            error = drawn[f"error:{name}:lead{lead + 1}"]
            np.testing.assert_allclose(error.get_array(), prediction[lead] - truth[lead], rtol=1e-6, atol=1e-6)
            # a diverging map centred at zero, the same symmetric limits for every model
            assert error.norm.vmin == -error.norm.vmax > -np.inf and error.get_cmap().name.startswith("RdBu_r")
    assert len({drawn[f"error:{' / '.join(k)}:lead1"].norm.vmax for k in examples}) == 1
    assert drawn["truth:lead1"].get_cmap().name.startswith("viridis")
    labels = [axis.get_ylabel() for axis in figure.axes]
    assert any("kg m-2" in label for label in labels), labels  # the colour bars say the units
    assert any("prediction − truth (kg m-2)" in label for label in labels), labels
    # timestamps and lead times
    titles = [axis.get_title() for axis in figure.axes]
    reference = pd.Timestamp(examples["simvp", "ori"]["forecast_reference_time"].values[1])
    assert f"forecast issued {reference:%Y-%m-%d %H:%M} UTC" in figure.get_suptitle()
    assert f"+5 min\n{reference + pd.Timedelta(minutes=5):%H:%M}" in titles, titles
    assert f"-10 min\n{reference - pd.Timedelta(minutes=10):%H:%M}" in titles, titles
    plt.close(figure)


def test_by_default_the_window_with_the_most_signal_is_shown():
    series = radar_series()
    examples = model_examples(series)
    spread = [np.std(window) for window in examples["simvp", "ori"]["truth"].values]
    figure = prediction_figure(examples, "toy")
    np.testing.assert_allclose(images(figure)["truth:lead1"].get_array(),
                               examples["simvp", "ori"]["truth"].values[int(np.argmax(spread)), 0, 0])
    plt.close(figure)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # pysteps' own Colormap.set_over and the like
def test_rain_is_drawn_in_pysteps_precipitation_colour_map():
    from pysteps.visualization.precipfields import get_colormap

    examples = model_examples(radar_series(units="mm h-1"))
    figure = prediction_figure(examples, "toy")
    cmap, norm, levels, _ = get_colormap("intensity", "mm/h", "pysteps")
    for gid in ("truth:lead1", "prediction:simvp / nuwa:lead2"):
        image = images(figure)[gid]
        np.testing.assert_array_equal(image.norm.boundaries, norm.boundaries)
        np.testing.assert_array_equal(image.get_cmap()(np.linspace(0, 1, 17)), cmap(np.linspace(0, 1, 17)))
    assert any(axis.get_ylabel() == "rain rate (mm h-1)" for axis in figure.axes)
    plt.close(figure)


def test_examples_of_other_windows_are_refused():
    series = radar_series()
    examples = model_examples(series)
    examples["convlstm", "nuwa"] = examples_of(series, count=2)
    with pytest.raises(DataFileError, match=r"examples of convlstm / nuwa hold test windows .*rerun the train stage"):
        prediction_figure(examples, "toy")


def test_labels_of_times_and_leads():
    assert time_text(np.datetime64("2008-06-03T14:05"), {"comment": "(UTC)"}) == "2008-06-03 14:05 UTC"
    assert time_text(np.datetime64("2008-06-03T14:05"), {}) == "2008-06-03 14:05"  # no zone where the data name none
    assert time_text(np.int64(68), {"units": "frame"}) == "frame 68"
    assert lead_text(np.timedelta64(10, "m")) == "+10 min"
    assert lead_text(np.timedelta64(120, "m")) == "+2 h"
    assert lead_text(np.timedelta64(-30, "m")) == "-30 min"
    assert lead_text(np.timedelta64(0, "m")) == "0"
    assert lead_text(np.int64(3), {"units": "frame"}) == "+3 frames"
    assert lead_text(np.int64(1), {"units": "frame"}) == "+1 frame"


def test_the_animation_has_one_frame_per_lead_and_stays_small(tmp_path):
    examples = model_examples(radar_series(units="mm h-1"))
    figure, animation = prediction_animation(examples, "toy")
    save_animation(animation, tmp_path / "predictions.gif", 400)
    plt.close(figure)
    path = tmp_path / "predictions.gif"
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == T_OUT
        assert abs(gif.info["duration"] - 400) <= 1
    assert path.stat().st_size < 1_000_000
    assert not list(tmp_path.glob(".*.tmp"))


# --- learning curves --------------------------------------------------------------------------------


def history(steps=20, every=5, scale=1.0) -> pd.DataFrame:
    step = np.arange(1, steps + 1)
    val = np.where(step % every == 0, scale * 2.0 / step, np.nan)
    return pd.DataFrame({"step": step, "train_loss": scale / step, "learning_rate": 1e-3, "val_loss": val,
                         "seconds": 0.1 * step})


def test_learning_curves_show_every_run_from_history_csv(tmp_path):
    histories = {}
    for index, key in enumerate([("forecast", 100, "simvp", "ori", 0), ("forecast", 100, "simvp", "nuwa", 0),
                                 ("forecast", 100, "convlstm", "ori", 0), ("forecast", 100, "convlstm", "ori", 1)]):
        history(scale=1 + index).to_csv(tmp_path / f"{index}.csv", index=False, na_rep="")
        histories[key] = pd.read_csv(tmp_path / f"{index}.csv")  # as written: NaN val_loss between evaluations
    figure = learning_curves_figure(histories, "toy")
    panels = [axis for axis in figure.axes if axis.get_lines()]
    assert [axis.get_title().split(" (")[0] for axis in panels] == ["simvp", "convlstm"]
    assert all(axis.get_yscale() == "log" for axis in panels)
    lines = {line.get_gid(): line for axis in panels for line in axis.get_lines() if line.get_gid()}
    assert set(lines) == {"train:ori:seed0", "val:ori:seed0", "train:nuwa:seed0", "val:nuwa:seed0",
                          "train:ori:seed1", "val:ori:seed1"}
    # the validation loss at its evaluation steps only; the last run drawn is convlstm / ori / seed 1
    expected = history(scale=4.0).dropna(subset=["val_loss"])
    np.testing.assert_array_equal(lines["val:ori:seed1"].get_xdata(), expected["step"].to_numpy(dtype=float))
    np.testing.assert_allclose(lines["val:ori:seed1"].get_ydata(), expected["val_loss"].to_numpy())
    assert "seeds 0, 1" in panels[1].get_title()
    assert "lower is better" in panels[0].get_ylabel()
    plt.close(figure)


def test_the_figures_backbone_key_is_refused_with_what_to_write_instead(tiny_params):
    old = {**tiny_params, "figures": {"backbone": "simvp", "animation_frame_ms": 600}}
    with pytest.raises(ParamsError, match=r"figures.backbone: removed: the figures show every backbone"):
        validate_params(old)
    older = {**tiny_params, "figures": {"backbone": "simvp"}}
    with pytest.raises(ParamsError, match=r"figures.animation_frame_ms: new key: .*figures.backbone goes"):
        validate_params(older)
