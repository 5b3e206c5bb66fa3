"""gridded: user data (ERA5/WeatherBench-like NetCDF or Zarr) read lazily from a params entry."""

import re
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.ingest import ingest
from nuwa.io import DataFileError, write_netcdf

TIMES = pd.date_range("2021-01-01", periods=48, freq="h")
LAT = np.arange(70.0, 19.9, -2.5)  # descending, like ERA5: 70, 67.5, ..., 20 (21 rows)
LON = np.arange(-10.0, 39.9, 2.5)  # -10, -7.5, ..., 37.5 (20 columns)
LEVELS = np.array([500, 850, 1000])
TIME_ENCODING = {"units": "hours since 1900-01-01 00:00:00.0", "calendar": "gregorian", "dtype": "int32"}


def t2m_values(times, lat, lon) -> np.ndarray:
    hours = ((np.asarray(times) - TIMES[0].to_datetime64()) / np.timedelta64(1, "h")).astype(np.float64)
    return (273.15 + 10 * np.cos(np.deg2rad(lat))[None, :, None] + 0.05 * lon[None, None, :]
            + 3 * np.sin(2 * np.pi * hours / 24)[:, None, None]).astype(np.float32)


def z_values(times, levels, lat, lon) -> np.ndarray:
    hours = ((np.asarray(times) - TIMES[0].to_datetime64()) / np.timedelta64(1, "h")).astype(np.float64)
    return (10.0 * levels[None, :, None, None] + lat[None, None, :, None] - 0.1 * lon[None, None, None, :]
            + hours[:, None, None, None]).astype(np.float32)


def make_dataset(times=TIMES, lat=LAT, lon=LON) -> xr.Dataset:
    times = pd.DatetimeIndex(times)
    return xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m_values(times, lat, lon),
                    {"units": "K", "long_name": "2 metre temperature"}),
            "z": (("time", "level", "latitude", "longitude"), z_values(times, LEVELS, lat, lon),
                  {"units": "m**2 s**-2", "long_name": "Geopotential"}),
        },
        coords={
            "time": ("time", times, {"long_name": "time"}),
            "level": ("level", LEVELS, {"units": "millibars", "long_name": "pressure_level"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "long_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "long_name": "longitude"}),
        },
        attrs={"Conventions": "CF-1.6", "title": "synthetic ERA5-like test data"},
    )


def write(dataset: xr.Dataset, path: Path) -> Path:
    dataset.to_netcdf(path, encoding={"time": TIME_ENCODING})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gridded")
    dataset = make_dataset()
    parts = root / "parts"
    parts.mkdir()
    for day, start in enumerate(range(0, 48, 16)):  # three files, written out of name order on purpose
        write(dataset.isel(time=slice(start, start + 16)), parts / f"era5_part{2 - day}.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3: consolidated metadata not in the v3 spec
        dataset.to_zarr(root / "era5.zarr", mode="w", encoding={"time": {"units": TIME_ENCODING["units"]}})
    return {"root": root, "file": write(dataset, root / "era5.nc"), "parts": parts, "zarr": root / "era5.zarr"}


def config(source, **overrides) -> dict:
    entry = {
        "kind": "gridded", "height": 21, "width": 20, "input_frames": 4, "output_frames": 4,
        "window_stride": 1, "patch_size": 1, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "csi_thresholds": [280.0], "seed": 0, "source": str(source), "variables": ["t2m"], "time_step": "1h",
    }
    return entry | overrides


def generate(entry: dict) -> xr.DataArray:
    return get_dataset("gridded")(entry, 0)


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Independent coarsening: trim, then mean over factor x factor blocks of the last two axes."""
    ny, nx = values.shape[-2] // factor * factor, values.shape[-1] // factor * factor
    v = values[..., :ny, :nx].astype(np.float64)
    return v.reshape(*v.shape[:-2], ny // factor, factor, nx // factor, factor).mean(axis=(-3, -1))


def expected_crop(lat_range, lon_range, factor=1):
    """Expected (t2m, z at 850 hPa), lat, lon after a crop by label and a coarsening, from numpy only."""
    rows = np.flatnonzero((LAT >= lat_range[0]) & (LAT <= lat_range[1]))
    cols = np.flatnonzero((LON >= lon_range[0]) & (LON <= lon_range[1]))
    t2m = t2m_values(TIMES, LAT, LON)[:, rows][:, :, cols]
    z = z_values(TIMES, LEVELS, LAT, LON)[:, 1][:, rows][:, :, cols]
    field = np.stack([t2m, z], axis=1)
    lat, lon = LAT[rows], LON[cols]
    if factor > 1:
        field = block_mean(field, factor)
        lat = block_mean(np.broadcast_to(lat[:, None], (len(lat), len(lon))), factor)[:, 0]
        lon = block_mean(np.broadcast_to(lon[None, :], (len(lat), len(lon))), factor)[0]
    return field, lat, lon


# -- values ---------------------------------------------------------------------------------

def test_single_file_select_crop_coarsen_values(data):
    entry = config(data["file"], variables=["t2m", "z"], select={"level": 850},
                   crop={"y": [30, 60], "x": [0, 20]}, coarsen=2, height=6, width=4)
    field = generate(entry)
    expected, lat, lon = expected_crop((30, 60), (0, 20), factor=2)
    assert expected.shape == (48, 2, 6, 4)
    assert field.dims == ("time", "channel", "y", "x") and field.shape == expected.shape
    assert field.dtype == np.float32
    np.testing.assert_allclose(field.values, expected, rtol=1e-6)
    assert list(field["channel"].values) == ["t2m", "z"]
    np.testing.assert_array_equal(field["time"].values, TIMES.values)
    np.testing.assert_allclose(field["y"].values, lat)
    np.testing.assert_allclose(field["x"].values, lon)
    assert lat[0] > lat[-1]  # the axis keeps the source's (descending) direction
    assert field["y"].attrs["source_dim"] == "latitude" and field["y"].attrs["units"] == "degrees_north"
    assert field["x"].attrs["source_dim"] == "longitude" and field["x"].attrs["units"] == "degrees_east"
    assert field.attrs["units"] == "K" and field.attrs["long_name"].startswith("2 metre temperature")
    assert field.attrs["channel_units"] == "t2m: K; z: m**2 s**-2"
    assert field.attrs["select"] == "level=850" and field.attrs["coarsen"] == 2
    assert field.attrs["segments"] == 1 and field.attrs["time_gaps"] == "none"
    assert (field["segment"].values == 0).all()
    for value in field.attrs.values():  # NetCDF-safe attributes
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool)


@pytest.mark.parametrize("crop_y", [[30, 60], [60, 30]])
def test_descending_latitude_crop(data, crop_y):
    field = generate(config(data["file"], crop={"y": crop_y}, height=13))
    np.testing.assert_array_equal(field["y"].values, np.arange(60.0, 29.9, -2.5))
    rows = np.flatnonzero((LAT >= 30) & (LAT <= 60))
    np.testing.assert_array_equal(field.values[:, 0], t2m_values(TIMES, LAT, LON)[:, rows])


def test_ascending_latitude_crop(tmp_path):
    ascending = make_dataset().isel(latitude=slice(None, None, -1))
    path = write(ascending, tmp_path / "ascending.nc")
    field = generate(config(path, crop={"y": [30, 60], "x": [0, 20]}, height=13, width=9))
    np.testing.assert_array_equal(field["y"].values, np.arange(30.0, 60.1, 2.5))
    rows = np.flatnonzero((LAT >= 30) & (LAT <= 60))[::-1]
    cols = np.flatnonzero((LON >= 0) & (LON <= 20))
    np.testing.assert_array_equal(field.values[:, 0], t2m_values(TIMES, LAT, LON)[:, rows][:, :, cols])


@pytest.mark.parametrize("kind", ["glob", "folder", "zarr"])
def test_multi_file_and_zarr_sources_match_single_file(data, kind):
    source = {"glob": data["parts"] / "era5_part*.nc", "folder": data["parts"], "zarr": data["zarr"]}[kind]
    entry = {"variables": ["t2m", "z"], "select": {"level": 850}, "crop": {"y": [30, 60], "x": [0, 20]},
                 "coarsen": 2, "height": 6, "width": 4}
    field = generate(config(source, **entry))
    expected, _, _ = expected_crop((30, 60), (0, 20), factor=2)
    np.testing.assert_array_equal(field["time"].values, TIMES.values)  # files combined in time order
    np.testing.assert_allclose(field.values, expected, rtol=1e-6)
    assert field.attrs["source_format"] == ("zarr" if kind == "zarr" else "netcdf")
    assert field.attrs["source_files"] == (1 if kind == "zarr" else 3)


def test_zarr_store_detected_without_suffix(data, tmp_path):
    store = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_dataset().to_zarr(store, mode="w")
    field = generate(config(store))
    assert field.attrs["source_format"] == "zarr"
    np.testing.assert_array_equal(field.values[:, 0], t2m_values(TIMES, LAT, LON))


def test_relative_source_from_working_directory(data, monkeypatch):
    monkeypatch.chdir(data["root"])
    field = generate(config("parts/*.nc"))
    assert field.shape == (48, 1, 21, 20)
    assert field.attrs["source"] == "parts/*.nc"  # as written: a file made elsewhere has the same bytes


def test_time_range(data):
    field = generate(config(data["parts"], time_range=["2021-01-01T10", "2021-01-02T05"]))
    np.testing.assert_array_equal(field["time"].values, TIMES[10:30].values)
    np.testing.assert_array_equal(field.values[:, 0], t2m_values(TIMES, LAT, LON)[10:30])
    with pytest.raises(DataFileError, match=r"time_range.*selects no frame"):
        generate(config(data["file"], time_range=["2030-01-01", "2030-02-01"]))


# -- laziness -------------------------------------------------------------------------------

def _no_compute(*args, **kwargs):
    raise AssertionError("the generator computed (loaded) dask data")


@pytest.mark.parametrize("kind", ["file", "parts", "zarr"])
def test_field_stays_lazy_and_chunked_along_time(data, kind):
    entry = config(data[kind], variables=["t2m", "z"], select={"level": 500}, crop={"y": [30, 60]},
                   coarsen=2, height=6, width=10, chunk_frames=10)
    with dask.config.set(scheduler=_no_compute):  # any compute inside the generator fails
        field = generate(entry)
    assert isinstance(field.data, da.Array) and field.chunks is not None
    assert field.chunks == ((10, 10, 10, 10, 8), (2,), (6,), (10,))


def test_fill_missing_counts_in_one_pass_and_stays_lazy(data):
    """fill_missing records what it fills: one counting pass (a single dask.compute), the field stays lazy."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return dask.get(*args, **kwargs)

    entry = config(data["file"], variables=["t2m", "z"], select={"level": 500}, crop={"y": [30, 60]},
                   coarsen=2, height=6, width=10, chunk_frames=10, fill_missing=0.0)
    with dask.config.set(scheduler=counting):
        field = generate(entry)
    assert len(calls) == 1
    assert isinstance(field.data, da.Array) and field.chunks == ((10, 10, 10, 10, 8), (2,), (6,), (10,))
    assert field.attrs["frames_with_missing"] == 0 and (field["missing_fraction"].values == 0).all()


# -- gaps and time checks -------------------------------------------------------------------

def test_gaps_become_segments_and_are_reported(tmp_path):
    keep = np.r_[0:10, 13:30, 36:48]  # two gaps: 10..12 and 30..35 missing
    path = write(make_dataset(times=TIMES[keep]), tmp_path / "gappy.nc")
    with pytest.warns(UserWarning, match=r"2 gap\(s\).*2021-01-01T09:00:00 -> 2021-01-01T13:00:00"):
        field = generate(config(path))
    np.testing.assert_array_equal(field["segment"].values, np.repeat([0, 1, 2], [10, 17, 12]))
    assert field.attrs["n_time_gaps"] == 2 and field.attrs["segments"] == 3
    assert "2021-01-02T05:00:00 -> 2021-01-02T12:00:00" in field.attrs["time_gaps"]
    np.testing.assert_array_equal(field.values[:, 0], t2m_values(TIMES[keep], LAT, LON))


def test_missing_file_in_folder_is_a_gap(data, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("era5_part2.nc", "era5_part0.nc"):  # the middle day is missing
        (folder / name).write_bytes((data["parts"] / name).read_bytes())
    with pytest.warns(UserWarning, match=r"1 gap\(s\)"):
        field = generate(config(folder))
    np.testing.assert_array_equal(field["segment"].values, np.repeat([0, 1], 16))


@pytest.mark.parametrize("problem,message", [
    ("unordered", r"time goes backwards at index 6"),
    ("duplicate", r"time repeats at index 6"),
])
def test_unordered_or_duplicate_time_names_file_and_index(tmp_path, problem, message):
    times = TIMES.values.copy()
    if problem == "duplicate":
        times[6] = times[5]
    else:
        times[5], times[6] = TIMES.values[6], TIMES.values[5]
    path = write(make_dataset(times=times), tmp_path / "bad.nc")
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*" + message):
        generate(config(path))
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*" + message):  # checked before time_range
        generate(config(path, time_range=["2021-01-01T02", "2021-01-01T20"]))
    # among several files, the bad one is named
    folder = tmp_path / "parts"
    folder.mkdir()
    write(make_dataset(times=TIMES[20:30]), folder / "good.nc")
    write(make_dataset(times=times[:10]), folder / "bad.nc")
    with pytest.raises(DataFileError, match=re.escape(str(folder / "bad.nc")) + ".*" + message):
        generate(config(folder))


def test_overlapping_files_are_named(data, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    dataset = make_dataset()
    write(dataset.isel(time=slice(0, 20)), folder / "a.nc")
    write(dataset.isel(time=slice(16, 48)), folder / "b.nc")
    with pytest.raises(DataFileError, match=r"b\.nc.*overlap.*a\.nc"):
        generate(config(folder))


def test_off_grid_time_is_an_error(tmp_path):
    times = TIMES.values.copy()
    times[7:] = times[7:] + np.timedelta64(30, "m")
    path = tmp_path / "offgrid.nc"
    make_dataset(times=times).to_netcdf(path, encoding={"time": {"units": "minutes since 2021-01-01"}})
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*not a multiple of the time step"):
        generate(config(path))


# -- errors ---------------------------------------------------------------------------------

def test_missing_variable_lists_available(data):
    with pytest.raises(DataFileError, match=r"variable\(s\) tp not found \(available: t2m, z\)"):
        generate(config(data["file"], variables=["t2m", "tp"]))
    with pytest.raises(DataFileError, match=r"era5_part\d\.nc.*tp not found"):
        generate(config(data["parts"], variables=["tp"]))


def test_empty_folder_and_unmatched_glob(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "empty")) + ".*no NetCDF files"):
        generate(config(tmp_path / "empty"))
    pattern = tmp_path / "nothing_*.nc"
    with pytest.raises(DataFileError, match=re.escape(str(pattern)) + ".*no file matches"):
        generate(config(pattern))
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "absent.nc")) + ".*not found"):
        generate(config(tmp_path / "absent.nc"))


def test_unreadable_file_is_named(data, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.nc").write_bytes((data["parts"] / "era5_part0.nc").read_bytes())
    (folder / "b.nc").write_bytes(b"not a netcdf file")
    with pytest.raises(DataFileError, match=re.escape(str(folder / "b.nc")) + ".*not a readable NetCDF"):
        generate(config(folder))


def test_select_errors(data):
    with pytest.raises(DataFileError, match=r"select\.level: value 700 not found \(available: 500, 850, 1000\)"):
        generate(config(data["file"], variables=["z"], select={"level": 700}))
    with pytest.raises(DataFileError, match=r"select\.member: no dimension 'member'"):
        generate(config(data["file"], variables=["z"], select={"member": 0}))
    with pytest.raises(DataFileError, match=r"variable 'z' has dims \('time', 'level', 'latitude', 'longitude'\).*'level'"):
        generate(config(data["file"], variables=["t2m", "z"]))


def test_wrong_dims_and_grid(data):
    with pytest.raises(DataFileError, match=r"variable 't2m' has dims.*expected exactly \('time', 'lat', 'lon'\)"):
        generate(config(data["file"], dims={"y": "lat", "x": "lon"}))
    with pytest.raises(DataFileError, match=r"no dimension 'valid_time' for time"):
        generate(config(data["file"], dims={"time": "valid_time"}))
    with pytest.raises(ValueError, match=r"height 21 and width 20 do not match the grid 10 x 10.*height: 10, width: 10"):
        generate(config(data["file"], coarsen=2))
    with pytest.raises(DataFileError, match=r"crop\.x \[100, 120\] keeps no 'longitude'"):
        generate(config(data["file"], crop={"x": [100, 120]}))


def test_bad_time_step():
    with pytest.raises(ValueError, match=r"time_step '1QS' is neither a fixed-length pandas frequency .* nor calendar "
                                         r"months \('1MS'"):
        generate(config("unused.nc", time_step="1QS"))
    with pytest.raises(ValueError, match=r"time_step '0MS' must be positive"):
        generate(config("unused.nc", time_step="0MS"))


def test_nan_fill_missing(tmp_path):
    dataset = make_dataset()
    dataset["t2m"][3, 4, 5] = np.nan
    path = write(dataset, tmp_path / "holes.nc")
    field = generate(config(path, fill_missing=-1.5))
    values = field.values
    assert values[3, 0, 4, 5] == -1.5 and np.isfinite(values).all()
    assert field.attrs["fill_missing"] == -1.5
    with pytest.raises(DataFileError, match=r"non-finite"):  # no fill: ingest refuses NaN
        ingest("holes", config(path))
    coarse = generate(config(path, coarsen=2, height=10, width=10)).values  # a block mean keeps the hole
    assert np.isnan(coarse[3, 0, 2, 2]) and np.isfinite(np.delete(coarse.reshape(48, -1), 22, axis=1)).all()
    # recorded: the fraction of each frame's cells filled, the fraction of frames a pixel was filled
    assert field["missing_fraction"].dims == ("time",) and field["missing_frequency"].dims == ("y", "x")
    expected = np.zeros(48)
    expected[3] = 1 / (21 * 20)
    np.testing.assert_array_equal(field["missing_fraction"].values, expected)
    assert field["missing_frequency"].values[4, 5] == 1 / 48 and field["missing_frequency"].values.sum() == 1 / 48
    assert field.attrs["frames_with_missing"] == 1 and field.attrs["missing_values"] == "t2m: 1"
    # with coarsen, a filled cell does not dilute its block: the block mean of the three valid cells
    coarse = generate(config(path, coarsen=2, height=10, width=10, fill_missing=-1.5))
    raw = dataset["t2m"].values[3, 4:6, 4:6].astype(np.float64)
    np.testing.assert_allclose(coarse.values[3, 0, 2, 2], np.nanmean(raw), rtol=1e-6)
    assert coarse["missing_frequency"].shape == (10, 10) and coarse["missing_frequency"].values[2, 2] == 1 / 48


def test_config_schema(data):
    import jsonschema

    schema = dataset_config_schema("gridded")
    jsonschema.validate(config(data["file"]), schema)
    full = config(data["file"], dims={"time": "valid_time"}, select={"level": 850, "number": "0"},
                  crop={"y": [30, 60]}, coarsen=2, time_range=["2021-01-01", "2021-01-02"], fill_missing=0,
                  chunk_frames=8)
    jsonschema.validate(full, schema)
    jsonschema.validate(config(data["file"], crop=None, time_range=None, fill_missing=None), schema)
    for bad in ({"variables": []}, {"coarsen": 0}, {"crop": {"y": [1]}}, {"crop": {"z": [1, 2]}},
                {"time_range": ["2021"]}, {"dims": {"t": "time"}}, {"fill_missing": "zero"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(config(data["file"], **bad), schema)
    for key in ("source", "variables", "time_step"):
        entry = config(data["file"])
        del entry[key]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(entry, schema)


# -- ingest ---------------------------------------------------------------------------------

def test_ingest(data, tmp_path):
    entry = config(data["parts"], variables=["t2m", "z"], select={"level": 850},
                   crop={"y": [30, 60], "x": [0, 20]}, coarsen=2, height=6, width=4)
    processed = ingest("era5_t2m", entry)
    name = processed.attrs["nuwa_variable"]
    expected, lat, _ = expected_crop((30, 60), (0, 20), factor=2)
    values = processed[name]
    assert values.dims == ("time", "channel", "y", "x")
    np.testing.assert_allclose(values.values, expected, rtol=1e-6)
    np.testing.assert_allclose(processed["y"].values, lat)
    np.testing.assert_array_equal(processed["time"].values, TIMES.values)
    train = expected[:24].astype(np.float64)
    np.testing.assert_allclose(processed["norm_mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert processed.attrs["nuwa_kind"] == "gridded"
    # the processed dataset is writable as NetCDF and reads back the same
    write_netcdf(processed, tmp_path / "era5_t2m.nc")
    with xr.open_dataset(tmp_path / "era5_t2m.nc") as back:
        np.testing.assert_allclose(back[name].values, expected, rtol=1e-6)
        assert back["y"].attrs["source_dim"] == "latitude"
        np.testing.assert_array_equal(back["time"].values, TIMES.values)
