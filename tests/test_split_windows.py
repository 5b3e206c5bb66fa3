"""A split without a single window is refused early: by `nuwa validate` when the params alone
say so (a generated series of known length), always by ingest (the real frames and segments),
with the frames and windows per split and the settings to change. Windows are counted in one
place, nuwa.windows.window_starts, the function that serves them to training."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from nuwa.config import ParamsError, validate_params
from nuwa.io import DataFileError

WFDE5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "weather" / "wfde5" / "precipitation_flux.nc"
NYTAXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "traffic" / "NYTaxi"


def windows_config(**changes) -> dict:
    return {"input_frames": 6, "output_frames": 6, "window_stride": 1,
            "split": {"train": 0.7, "val": 0.1, "test": 0.2}, **changes}


# -- counting: one place --------------------------------------------------------------------------

def test_window_counts_are_the_windows_training_is_served():
    from nuwa.windows import SeriesData, WindowDataset, split_flags, window_counts

    flags = split_flags(100, {"train": 0.6, "val": 0.2, "test": 0.2})
    segment = np.repeat([0, 1], 50)
    series = SeriesData(field=np.zeros((100, 1, 4, 4), np.float32), split=flags, mean=np.zeros(1, np.float32),
                        std=np.ones(1, np.float32), data_range=1.0, name="x", attrs={}, segment=segment)
    counts = window_counts(flags, 8, 3, segment)
    assert counts == {name: len(WindowDataset(series, name, 5, 3, 3)) for name in ("train", "val", "test")}
    assert counts == {"train": 16, "val": 5, "test": 5}  # train: 15 in segment 0, 1 in segment 1


def test_ingest_keeps_its_split_names():
    """split_flags and the codes moved to nuwa.windows (numpy only); ingest re-exports them."""
    import nuwa.ingest
    import nuwa.windows

    assert nuwa.ingest.split_flags is nuwa.windows.split_flags
    assert nuwa.ingest.SPLIT_CODES == nuwa.windows.SPLIT_CODES == {"train": 0, "val": 1, "test": 2}


def test_message_names_counts_and_the_setting_that_fixes_it():
    from nuwa.windows import empty_split_message, split_flags

    config = windows_config()
    message = empty_split_message(split_flags(92, config["split"]), config)
    assert message == ("no window fits in the val split (every split needs at least one): 92 frames split into "
                       "64 / 9 / 19 (train / val / test) give 53 / 0 / 8 windows of input_frames + output_frames = "
                       "6 + 6 = 12 frames, window_stride 1; to fix: lower input_frames or output_frames (each "
                       "split's block needs at least 12 consecutive frames), or raise split.val to at least 0.14 "
                       "(12 of 92 frames, taking it from the others)")
    fixed = {**config, "split": {"train": 0.66, "val": 0.14, "test": 0.2}}
    assert empty_split_message(split_flags(92, fixed["split"]), fixed) is None  # the hint is enough


@pytest.mark.parametrize("frames,length", [(100, 29), (50, 7), (1000, 123), (92, 12), (37, 5)])
def test_the_suggested_fraction_always_holds_a_window(frames, length):
    from nuwa.windows import _smallest_fraction

    fraction = _smallest_fraction(frames, length)
    assert int(frames * fraction) >= length
    assert fraction == 0.01 or int(frames * round(fraction - 0.01, 2)) < length


def test_segments_are_named_with_their_lengths():
    from nuwa.windows import empty_split_message, split_flags

    config = windows_config(split={"train": 0.8, "val": 0.05, "test": 0.15}, time_step_minutes=5)
    segment = np.repeat([0, 1, 2], 40)
    message = empty_split_message(split_flags(120, config["split"]), config, segment)
    assert message == ("no window fits in the val split (every split needs at least one): 120 frames in 3 segments "
                       "of 40, 40, 40 frames (no window crosses a segment boundary) split into 96 / 6 / 18 (train / "
                       "val / test) give 63 / 0 / 7 windows of input_frames + output_frames = 6 + 6 = 12 frames, "
                       "window_stride 1; to fix: lower input_frames or output_frames (each split's block needs at "
                       "least 12 consecutive frames within one segment), or change split (fractions of each "
                       "segment's frames for kinds that split per segment, else of all frames), or make the segments "
                       "longer (a gap in time starts a new segment: check time_step_minutes against the spacing of "
                       "the frames)")


# -- validate: known from the params alone ---------------------------------------------------------

def test_validate_counts_the_windows_it_refuses(tiny_params):
    params = copy.deepcopy(tiny_params)
    params["datasets"]["moving_glyphs"].update(length=100, input_frames=6, output_frames=6,
                                               split={"train": 0.8, "val": 0.1, "test": 0.1})
    with pytest.raises(ParamsError) as error:
        validate_params(params)
    text = str(error.value)
    assert "no window fits in the val and test splits" in text
    assert "100 frames (length 100) split into 80 / 10 / 10 (train / val / test) give 35 / 0 / 0 windows" in text
    assert "raise split.val and split.test to at least 0.12" in text and "raise length" in text
    params["datasets"]["moving_glyphs"]["split"] = {"train": 0.76, "val": 0.12, "test": 0.12}
    validate_params(params)  # the fix it names is enough


def test_validate_accepts_every_shipped_params_and_experiment_file():
    from conftest import REPO
    from nuwa.config import load_params

    for path in [REPO / "params.yaml", *sorted((REPO / "experiments").glob("*.yaml"))]:
        load_params(path)


# -- ingest: always ---------------------------------------------------------------------------------

def monthly_field(months: int = 54):
    from nuwa.datasets import field_array

    times = pd.date_range("2000-01-01", periods=months, freq="MS").to_numpy()
    rng = np.random.default_rng(0)
    return field_array(rng.normal(280, 5, (months, 1, 8, 8)), name="tas", channels=["tas"], attrs={"units": "K"},
                       time=times, time_attrs={"standard_name": "time"}, segment=np.arange(months))


def gridded_entry(source: Path, **changes) -> dict:
    return {"kind": "gridded", "source": str(source), "variables": ["tas"], "dims": {"time": "time", "y": "lat", "x": "lon"},
            "time_step": "1D", "height": 8, "width": 8, "patch_size": 4, "csi_thresholds": [], "seed": 0,
            **windows_config(), **changes}


def test_ingest_refuses_one_frame_segments_naming_the_time_step_and_the_spacing():
    """A reader whose nominal step is finer than the frames' spacing cuts every frame into a segment
    of its own (a 12-hour step on monthly data: 54 segments, no window). kind gridded now refuses
    that itself; ingest refuses it for every reader."""
    from nuwa.ingest import build_processed

    entry = gridded_entry(Path("monthly.nc"), time_step="12h")
    with pytest.raises(DataFileError) as error:
        build_processed(monthly_field(), entry, "monthly")
    assert str(error.value) == (
        "dataset 'monthly': 54 of 54 segments are a single frame (54 of 54 frames), so no window can use them: with "
        "time_step: '12h' every larger step between frames is a gap that starts a new segment; the frames are 28 to "
        "31 days (calendar months) apart; set time_step to the spacing of the frames (calendar months: 1MS)")
    radar = {**entry, "kind": "radar_knmi", "time_step_minutes": 1}
    del radar["time_step"]
    with pytest.raises(DataFileError, match=r"with time_step_minutes: 1 every larger step .* set time_step_minutes"):
        build_processed(monthly_field(), radar, "radar")


def monthly_file(path: Path, months: int = 54) -> Path:
    field = monthly_field(months)
    xr.Dataset({"tas": (("time", "lat", "lon"), field.values[:, 0], {"units": "K"})},
               coords={"time": field["time"].values, "lat": np.arange(8.0), "lon": np.arange(8.0)}).to_netcdf(path)
    return path


def test_ingest_refuses_an_empty_split_of_real_data_naming_dataset_counts_and_keys(tmp_path):
    from nuwa.ingest import ingest

    times = pd.date_range("2000-01-01", periods=40, freq="D")
    xr.open_dataset(monthly_file(tmp_path / "monthly.nc", months=40)).load().assign_coords(time=times).to_netcdf(
        tmp_path / "daily.nc")
    entry = gridded_entry(tmp_path / "daily.nc")
    with pytest.raises(ValueError) as error:
        ingest("daily", entry)
    assert str(error.value) == (
        f"dataset 'daily' (source {tmp_path / 'daily.nc'}): no window fits in the val and test splits (every split "
        "needs at least one): 40 frames split into 28 / 4 / 8 (train / val / test) give 17 / 0 / 0 windows of "
        "input_frames + output_frames = 6 + 6 = 12 frames, window_stride 1; to fix: lower input_frames or "
        "output_frames (each split's block needs at least 12 consecutive frames), or raise split.val and split.test "
        "to at least 0.3 (12 of 40 frames, taking it from the others)")
    entry.update(input_frames=2, output_frames=2)
    assert ingest("daily", entry).sizes["time"] == 40


def test_ingest_names_the_segments_of_gappy_data(tmp_path):
    from nuwa.ingest import ingest

    times = pd.date_range("2000-01-01", periods=60, freq="D").delete(range(20, 25))  # a 5-day gap: 2 segments
    rng = np.random.default_rng(1)
    xr.Dataset({"tas": (("time", "lat", "lon"), rng.normal(280, 5, (55, 8, 8)).astype(np.float32), {"units": "K"})},
               coords={"time": times, "lat": np.arange(8.0), "lon": np.arange(8.0)}).to_netcdf(tmp_path / "gap.nc")
    entry = gridded_entry(tmp_path / "gap.nc", split={"train": 0.6, "val": 0.2, "test": 0.2})
    with pytest.warns(UserWarning, match="gap"), pytest.raises(ValueError) as error:
        ingest("gappy", entry)
    text = str(error.value)
    assert "55 frames in 2 segments of 20, 35 frames (no window crosses a segment boundary)" in text
    assert "split into 33 / 11 / 11 (train / val / test) give" in text
    assert "/ 0 / " in text and "check time_step against the spacing of the frames" in text


def test_ingest_cli_prints_the_refusal_on_one_line(tmp_path, tiny_params, capsys, monkeypatch):
    from nuwa.cli import main

    monkeypatch.chdir(tmp_path)
    params = copy.deepcopy(tiny_params)
    params["datasets"]["daily"] = gridded_entry(monthly_file(tmp_path / "m.nc", months=40), time_step="1MS",
                                                input_frames=10, output_frames=10)
    params["ingest"] = {"scheduler": "threads"}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["ingest", "--dataset", "daily", "--out", str(tmp_path / "out.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nuwa ingest: error: dataset 'daily'"), err
    assert "no window fits in the val and test splits" in err[0] and "lower input_frames or output_frames" in err[0]
    assert not (tmp_path / "out.nc").exists()


@pytest.mark.skipif(not WFDE5.exists(), reason=f"{WFDE5} not present")
def test_real_data_with_windows_too_long_for_its_validation_block(tmp_path):
    from nuwa.ingest import ingest

    entry = {**gridded_entry(WFDE5, input_frames=40, output_frames=40), "variables": ["pr"], "time_step": "1h",
             "never_observed": "mask", "height": 20, "width": 28}
    with pytest.raises(ValueError) as error:
        ingest("wfde5_precip", entry)
    assert str(error.value) == (
        f"dataset 'wfde5_precip' (source {WFDE5}): no window fits in the val split (every split needs at least "
        "one): 744 frames split into 520 / 74 / 150 (train / val / test) give 441 / 0 / 71 windows of input_frames + "
        "output_frames = 40 + 40 = 80 frames, window_stride 1; to fix: lower input_frames or output_frames (each "
        "split's block needs at least 80 consecutive frames), or raise split.val to at least 0.11 (80 of 744 "
        "frames, taking it from the others)")


@pytest.mark.skipif(not (NYTAXI / "flow_val.npz").exists(), reason=f"{NYTAXI} not present")
def test_a_kind_with_its_own_split_is_told_there_is_no_split_key():
    from nuwa.ingest import ingest

    entry = {"kind": "nytaxi", "source": str(NYTAXI), "height": 16, "width": 12, "input_frames": 400,
             "output_frames": 400, "window_stride": 1, "patch_size": 4, "csi_thresholds": [], "seed": 0}
    with pytest.raises(ValueError, match=r"no window fits in the val split .* 4320 frames split into 2784 / 672 / "
                                         r"864 .*the split is kind nytaxi's own: there is no split key to change"):
        ingest("nytaxi", entry)


def test_an_empty_training_split_names_split_train():
    from nuwa.ingest import build_processed

    entry = gridded_entry(Path("m.nc"), split={"train": 0.01, "val": 0.49, "test": 0.5})
    with pytest.raises(ValueError, match=r"^dataset 'tiny': the training split is empty \(split.train 0.01 of 54 "
                                         r"frames gives none: raise split.train\)$"):
        build_processed(monthly_field().assign_coords(segment=("time", np.zeros(54, np.int32))), entry, "tiny")
