"""gridded on CF files nobody on this project wrote (tests/data/foreign_cf, README.md there says where
each comes from): non-standard calendars (360_day, noleap/365_day, julian) through cftime, calendar
months as time_step, dims checked against the files' CF attributes, the hints of the errors, the
missing-data record and the grid mapping; and the shipped WFDE5 entry ingests to the same content."""

import hashlib
import re
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import TINY_PARAMS

from nuwa.cli import main
from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.datasets.gridded import NAN_HINT, parse_time_step
from nuwa.ingest import ingest
from nuwa.io import DataFileError, write_netcdf
from nuwa.windows import load_series

REPO = Path(__file__).resolve().parents[1]
FOREIGN = REPO / "tests" / "data" / "foreign_cf"
CMIP6 = FOREIGN / "cmip6"
A1B = FOREIGN / "A1B_north_america_subset.nc"  # HadCM3 SRES A1B, 360_day calendar, one frame a year (June)
OSTIA = FOREIGN / "ostia_monthly_subset.nc"  # OSTIA SST monthly means, gregorian, land NaN
TOA = FOREIGN / "toa_brightness_stereographic_subset.nc"  # SEVIRI image on a polar stereographic grid, one time
FGOALS_MONTHLY = sorted(CMIP6.glob("ta_Amon_FGOALS-g3_*.nc"))  # 365_day; the 1950s and the 1970s (1960s left out)
FGOALS_DAILY = CMIP6 / "ta_day_FGOALS-g3_historical_r1i1p1f1_gn_20000101-20001231.nc"  # 365_day, daily, 2000
IITM = CMIP6 / "ta_Amon_IITM-ESM_historical_r1i1p1f1_gn_195001-195912.nc"  # julian, monthly
KACE = CMIP6 / "ta_Amon_KACE-1-0-G_historical_r1i1p1f1_gr_185001-201412.nc"  # 360_day, monthly
WFDE5 = REPO.parent / "shared" / "data" / "weather" / "wfde5" / "precipitation_flux.nc"
# 925 hPa: above the ground everywhere (at 1000 hPa the files hold netCDF's default fill below the ground)
CMIP_ENTRY = {"dims": {"time": "time", "y": "lat", "x": "lon"}, "select": {"plev": 92500.0}, "variables": ["ta"],
              "height": 2, "width": 2}
LAND_PIXELS = 746  # of OSTIA_SUBSET's 18 x 60: NaN in every one of its 54 months


def entry(source, **overrides) -> dict:
    base = {"kind": "gridded", "input_frames": 2, "output_frames": 2, "window_stride": 1, "patch_size": 1,
            "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "csi_thresholds": [280.0], "seed": 0,
            "source": str(source)}
    return base | overrides


def generate(config: dict) -> xr.DataArray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gap reports: checked where they matter
        return get_dataset("gridded")(config, 0)


def raw(path: Path, variable: str) -> np.ndarray:
    """The file's values, read by netCDF4 (masked values as NaN), independently of the reader."""
    with netCDF4.Dataset(path) as dataset:
        values = dataset[variable][...]
    return np.ma.filled(values.astype(np.float64), np.nan)


def daily(**overrides) -> dict:
    """The daily FGOALS-g3 file (levels 1000 and 850 hPa) at 850 hPa."""
    return entry(FGOALS_DAILY, calendar="noleap", time_step="1D", **(CMIP_ENTRY | {"select": {"plev": 85000.0}})
                 ) | overrides


def a1b(**overrides) -> dict:
    return entry(A1B, variables=["air_temperature"], calendar="360_day", time_step="12MS",
                 dims={"time": "time", "y": "latitude", "x": "longitude"}, height=12, width=16) | overrides


def ostia(**overrides) -> dict:
    return entry(OSTIA, variables=["surface_temperature"], time_step="1MS",
                 dims={"time": "time", "y": "latitude", "x": "longitude"}, height=18, width=60,
                 csi_thresholds=[300.0]) | overrides


# -- calendars ------------------------------------------------------------------------------

def test_360_day_file_reads_with_its_calendar_and_grid_mapping():
    field = generate(a1b())
    assert field.shape == (240, 1, 12, 16)
    times = field["time"].values
    assert type(times[0]).__name__ == "Datetime360Day" and times[0].calendar == "360_day"
    assert str(times[0]) == "1860-06-01 00:00:00" and str(times[-1]) == "2099-06-01 00:00:00"
    assert field["time"].encoding["calendar"] == "360_day"
    assert field.attrs["calendar"] == "360_day" and field.attrs["segments"] == 1
    np.testing.assert_array_equal(field.values[:, 0], raw(A1B, "air_temperature").astype(np.float32))
    # the grid mapping travels: a scalar coordinate with the file's attributes, named by the field
    assert field.attrs["grid_mapping"] == "latitude_longitude"
    mapping = field["latitude_longitude"]
    assert mapping.ndim == 0 and mapping.attrs["grid_mapping_name"] == "latitude_longitude"
    assert mapping.attrs["semi_major_axis"] == 6371229.0
    # a year of 360 days is a fixed step in this calendar: the same axis as 12 calendar months
    for step in ("1YS", "year", "360D"):
        assert (generate(a1b(time_step=step))["segment"].values == 0).all()


def test_360_day_ingest_writes_its_calendar(tmp_path):
    """ingest and nuwa.io keep the cftime axis: the processed file's time has calendar 360_day
    (needs nuwa.ingest to leave a cftime time coordinate without the units '1' of frame indices)."""
    processed = ingest("a1b", a1b(patch_size=4))
    path = tmp_path / "a1b.nc"
    write_netcdf(processed, path)
    with netCDF4.Dataset(path) as written:
        assert written["time"].calendar == "360_day" and written["time"].units.startswith("days since 1860-06-01")
        assert written["latitude_longitude"].grid_mapping_name == "latitude_longitude"
        assert written["air_temperature"].grid_mapping == "latitude_longitude"
    series = load_series(path)
    times, _ = series.coords["time"]
    assert times[0].calendar == "360_day" and str(times[1]) == "1861-06-01 00:00:00"
    assert series.field.shape == (240, 1, 12, 16)


def test_360_day_series_labels_its_examples_and_figures(tmp_path):
    """Downstream of ingest, a cftime axis gives the examples file lead times (360-day years of
    twelve 30-day months) and the figures dates in its own calendar."""
    from nuwa.evaluate import example_coords
    from nuwa.figures import _day, _is_time, time_text

    path = tmp_path / "a1b.nc"
    write_netcdf(ingest("a1b", a1b(patch_size=4)), path)
    series = load_series(path)
    coords = example_coords(series, np.array([0, 5, 100]), input_frames=2, output_frames=2)
    lead = coords["lead"][1] if isinstance(coords["lead"], tuple) else coords["lead"]
    assert np.asarray(lead).dtype.kind == "m"  # a timedelta, the same for every example
    assert [int(v / np.timedelta64(1, "D")) for v in np.asarray(lead)] == [360, 720]
    valid = coords["time"][1]
    assert _is_time(valid) and _day(valid[0, 0]) == "1862-06-01"
    assert time_text(valid[0, 0]) == "1862-06-01 00:00"


@pytest.mark.parametrize("calendar", ["noleap", "365_day"])
def test_noleap_monthly_files_with_a_missing_decade(calendar):
    """Two real CMIP6 files (the 1950s and the 1970s): months are consecutive, the missing 1960s a gap."""
    with pytest.warns(UserWarning, match=r"1 gap\(s\): 1959-12-16 12:00:00 -> 1970-01-16 12:00:00"):
        field = get_dataset("gridded")(entry(CMIP6 / "ta_Amon_FGOALS-g3_*.nc", calendar=calendar, time_step="1MS",
                                             **CMIP_ENTRY), 0)
    assert field.shape == (240, 1, 2, 2) and field.attrs["calendar"] == "noleap"
    np.testing.assert_array_equal(field["segment"].values, np.repeat([0, 1], 120))
    assert field.attrs["time_gaps"] == "1 gap(s): 1959-12-16 12:00:00 -> 1970-01-16 12:00:00"
    assert "calendar month" in field.attrs["time_step_definition"]
    expected = np.concatenate([raw(path, "ta")[:, 1] for path in FGOALS_MONTHLY]).astype(np.float32)
    np.testing.assert_array_equal(field.values[:, 0], expected)  # plev 92500 Pa is the second level


def test_noleap_daily_file_has_no_29_february():
    field = generate(daily())
    assert field.shape == (365, 1, 2, 2) and (field["segment"].values == 0).all()  # 28 Feb -> 1 Mar is one day
    days = [str(t)[:10] for t in field["time"].values]
    assert "2000-02-28" in days and "2000-03-01" in days and "2000-02-29" not in days


def test_julian_and_360_day_monthly_files():
    julian = generate(entry(IITM, calendar="julian", time_step="1MS", **CMIP_ENTRY))
    assert julian.shape == (120, 1, 2, 2) and julian.attrs["calendar"] == "julian"
    assert (julian["segment"].values == 0).all()
    kace = generate(entry(KACE, calendar="360_day", time_step="1MS", time_range=["1950-01", "1959-12"], **CMIP_ENTRY))
    assert kace.shape == (120, 1, 2, 2) and str(kace["time"].values[0]) == "1950-01-16 00:00:00"
    # in a 360_day calendar a month is 30 days: the same segments as the fixed step
    days = generate(entry(KACE, calendar="360_day", time_step="30D", time_range=["1950-01", "1959-12"], **CMIP_ENTRY))
    np.testing.assert_array_equal(days.values, kace.values)
    # 30 February exists there, and time_range takes it
    assert generate(entry(KACE, calendar="360_day", time_step="1MS", time_range=["1950-02-30", "1950-12-30"],
                          **CMIP_ENTRY)).sizes["time"] == 10


def test_a_calendar_other_than_the_declared_one_names_file_calendar_and_key(tmp_path):
    with pytest.raises(DataFileError, match=re.escape(str(A1B)) + r": time coordinate 'time' has calendar '360_day', "
                       r"but the params entry has no calendar key \(default: standard\) \(set calendar: 360_day"):
        generate({key: value for key, value in a1b().items() if key != "calendar"})
    with pytest.raises(DataFileError, match=r"has calendar 'noleap', but the params entry says calendar: 360_day "
                                            r"\(set calendar: noleap"):
        generate(daily(calendar="360_day"))
    with pytest.raises(DataFileError, match=re.escape(str(OSTIA)) + r".*has calendar 'standard', but the params "
                                            r"entry says calendar: noleap \(set calendar: standard"):
        generate(ostia(calendar="noleap"))
    # among several files, the one of another calendar is named
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.nc").write_bytes(FGOALS_MONTHLY[0].read_bytes())
    (folder / "b.nc").write_bytes(IITM.read_bytes())
    with pytest.raises(DataFileError, match=re.escape(str(folder / "b.nc")) + r".*has calendar 'julian'"):
        generate(entry(folder, calendar="noleap", time_step="1MS", **CMIP_ENTRY))


def test_calendar_and_time_step_in_the_schema():
    import jsonschema

    schema = dataset_config_schema("gridded")
    for calendar in ("standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "all_leap", "366_day",
                     "360_day", "julian"):
        jsonschema.validate(a1b(calendar=calendar), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(a1b(calendar="360"), schema)
    assert parse_time_step("1h")[1] is None and parse_time_step("6h")[0] == np.timedelta64(6, "h")
    for spelling, months in (("1MS", 1), ("MS", 1), ("3MS", 3), ("1M", 1), ("1ME", 1), ("month", 1), ("monthly", 1),
                             ("2 months", 2), ("1YS", 12), ("Y", 12), ("year", 12), ("yearly", 12)):
        assert parse_time_step(spelling) == (None, months), spelling


# -- calendar months on a standard calendar -------------------------------------------------

@pytest.mark.parametrize("step", ["1MS", "M", "month"])
def test_monthly_means_stamped_mid_month_are_consecutive(step):
    """OSTIA's months are stamped on the 16th at 00:00 or 12:00 (the middle of each month)."""
    field = generate(ostia(time_step=step, never_observed="mask"))
    assert field.shape == (54, 1, 18, 60) and (field["segment"].values == 0).all()
    assert np.issubdtype(field["time"].dtype, np.datetime64) and "calendar" not in field.attrs
    assert field.attrs["never_observed_pixels"] == LAND_PIXELS


def test_missing_months_are_gaps(tmp_path):
    source = xr.open_dataset(OSTIA)
    folder = tmp_path / "ostia"
    folder.mkdir()
    source.isel(time=slice(0, 20)).to_netcdf(folder / "a.nc")
    source.isel(time=slice(23, 54)).to_netcdf(folder / "b.nc")  # December 2007 .. February 2008 missing
    with pytest.warns(UserWarning, match=r"1 gap\(s\): 2007-11-16T00:00:00 -> 2008-03-16T12:00:00"):
        field = get_dataset("gridded")(ostia(source=str(folder), never_observed="mask"), 0)
    np.testing.assert_array_equal(field["segment"].values, np.repeat([0, 1], [20, 31]))


@pytest.mark.parametrize("case,step,median,suggest", [
    ("ostia", "12h", "30 days 12:00:00", "1MS"),  # the new user's monthly file with a 12-hour step
    ("a1b", "1MS", "360 days 00:00:00", "12MS"),
    ("daily", "1MS", "1 days 00:00:00", "1D"),
    ("daily", "6h", "1 days 00:00:00", "1D"),
])
def test_a_time_step_that_does_not_match_the_data_is_an_error(case, step, median, suggest):
    config = {"ostia": ostia(time_step=step), "a1b": a1b(time_step=step),
              "daily": daily(time_step=step)}[case]
    with pytest.raises(DataFileError, match=rf"time_step {step} does not match the data: \d+ of the \d+ steps between "
                                            rf"frames differ from it, the median step is {median} .*set time_step: "
                                            rf"{suggest} in the params entry"):
        generate(config)


# -- dims against the file's CF attributes ---------------------------------------------------

def test_transposed_dims_are_refused():
    with pytest.raises(DataFileError, match=re.escape(str(A1B)) + r": dims\.y is 'longitude', but the file's coordinate "
                       r"variable 'longitude' has axis 'X': it is the x .* axis, not the y .*set dims: "
                       r"\{time: time, y: latitude, x: longitude\}"):
        generate(a1b(dims={"time": "time", "y": "longitude", "x": "latitude"}, height=16, width=12))
    with pytest.raises(DataFileError, match=r"dims\.y is 'lon', but the file's coordinate variable 'lon' has axis 'X'"):
        generate(daily(dims={"y": "lon", "x": "lat"}))


def test_standard_name_alone_refuses_transposed_dims(tmp_path):
    source = xr.open_dataset(OSTIA)
    for name in ("latitude", "longitude", "time"):
        source[name].attrs.pop("axis", None)
    source["longitude"].attrs.pop("units")
    path = tmp_path / "no_axis.nc"
    source.to_netcdf(path)
    with pytest.raises(DataFileError, match=r"dims\.y is 'longitude', but the file's coordinate variable 'longitude' "
                                            r"has standard_name 'longitude'"):
        generate(ostia(source=str(path), dims={"time": "time", "y": "longitude", "x": "latitude"}, height=60, width=18))


# -- hints ----------------------------------------------------------------------------------

def test_missing_dims_hint_names_dims_and_the_mapping_to_write():
    with pytest.raises(DataFileError) as error:
        generate(entry(FGOALS_DAILY, calendar="noleap", time_step="1D", variables=["ta"], height=2, width=2))
    message = str(error.value)
    assert "expected exactly ('time', 'latitude', 'longitude')" in message
    assert "the file's CF attributes suggest dims: {time: time, y: lat, x: lon}" in message
    assert "fix 'plev' with select, e.g. select: {plev: 100000.0}" in message  # the first level
    assert "fix 'plev', 'lat', 'lon'" not in message  # the old hint sent users to select for lat/lon
    with pytest.raises(DataFileError, match=r"no dimension 'valid_time' for time .*set dims\.time in the params entry "
                                            r"\(the file's CF attributes suggest dims: \{time: time, y: lat, x: lon\}\)"):
        generate(daily(dims={"time": "valid_time", "y": "lat", "x": "lon"}))


def test_nan_error_names_fill_missing_and_never_observed():
    """OSTIA's land is NaN: ingest's error says what to set (needs nuwa.ingest to append NAN_HINT for gridded)."""
    assert "fill_missing" in NAN_HINT and "never_observed: mask" in NAN_HINT
    with pytest.raises(DataFileError, match=r"non-finite value\(s\).*" + re.escape(NAN_HINT)):
        ingest("ostia", ostia())


# -- missing data and coarsen ---------------------------------------------------------------

def test_netcdf_default_fill_is_missing_and_fill_missing_records_it():
    """FGOALS-g3 at 1000 hPa: netCDF's default fill (9.97e36, no _FillValue declared) below the ground,
    in some months only; it is NaN (not 1e37 K), an error without fill_missing, recorded with it."""
    cube = raw(FGOALS_DAILY, "ta")[:, 0]  # netCDF4 masks the default fill: NaN here
    below = np.isnan(cube)
    assert 0 < below.sum() < below.size and not below.all(axis=0).any()  # missing in some frames only
    config = daily(select={"plev": 100000.0})
    field = generate(config)
    np.testing.assert_array_equal(np.isnan(field.values[:, 0]), below)
    with pytest.raises(DataFileError, match=r"non-finite value\(s\)"):
        ingest("fgoals", config)
    filled = generate(config | {"fill_missing": 250.0})
    np.testing.assert_array_equal(filled["missing_fraction"].values, below.mean(axis=(1, 2)))
    np.testing.assert_array_equal(filled["missing_frequency"].values, below.mean(axis=0))
    assert filled.attrs["missing_values"] == f"ta: {below.sum()}"
    assert (filled.values[:, 0][below] == 250.0).all() and np.isfinite(filled.values).all()
    processed = ingest("fgoals", config | {"fill_missing": 250.0})
    np.testing.assert_array_equal(processed["missing_fraction"].values, below.mean(axis=(1, 2)))


def test_fill_missing_records_the_missing_fraction_and_frequency():
    field = generate(ostia(fill_missing=271.35))
    land = np.isnan(raw(OSTIA, "surface_temperature")).all(axis=0)
    assert land.sum() == LAND_PIXELS
    np.testing.assert_allclose(field["missing_fraction"].values, np.full(54, LAND_PIXELS / (18 * 60)))
    np.testing.assert_array_equal(field["missing_frequency"].values, land.astype(np.float64))
    assert field["missing_fraction"].attrs["units"] == "1" and field.attrs["frames_with_missing"] == 54
    assert field.attrs["missing_values"] == f"surface_temperature: {LAND_PIXELS * 54}"
    assert (field.values[:, 0][:, land] == np.float32(271.35)).all()
    # coarsen 3: a coastal block is the mean of its sea cells, a land block takes fill_missing
    coarse = generate(ostia(fill_missing=271.35, coarsen=3, height=6, width=20))
    values = raw(OSTIA, "surface_temperature")
    blocks = values.reshape(54, 6, 3, 20, 3)
    counts = np.isfinite(blocks).sum(axis=(2, 4))
    coastal = np.argwhere((counts[0] > 0) & (counts[0] < 9))[0]
    expected = np.nanmean(blocks[:, coastal[0], :, coastal[1], :], axis=(1, 2))
    np.testing.assert_allclose(coarse.values[:, 0, coastal[0], coastal[1]], expected, rtol=1e-6)
    full_land = np.argwhere(counts[0] == 0)[0]
    assert (coarse.values[:, 0, full_land[0], full_land[1]] == np.float32(271.35)).all()
    block_land = (~np.isfinite(blocks)).any(axis=(2, 4))
    np.testing.assert_array_equal(coarse["missing_frequency"].values, block_land.mean(axis=0))


def test_projected_grid_keeps_its_stereographic_mapping(tmp_path):
    """A satellite image on a polar stereographic grid (x/y in metres): dims checked against
    projection_x/y_coordinate, the grid mapping kept, its missing pixels (off the disc) recorded."""
    path = tmp_path / "toa.nc"
    # its scalar time as a one-frame axis (the grid mapping stays a scalar)
    xr.open_dataset(TOA).set_coords("stereographic").expand_dims("time").reset_coords("stereographic").to_netcdf(path)
    config = entry(path, variables=["data"], dims={"time": "time", "y": "y", "x": "x"}, time_step="15min",
                   height=40, width=48, fill_missing=200.0)
    field = generate(config)
    assert field["y"].attrs["standard_name"] == "projection_y_coordinate" and field["y"].attrs["units"] == "m"
    assert field.attrs["grid_mapping"] == "stereographic"
    with netCDF4.Dataset(TOA) as source:
        expected = {key: source["stereographic"].getncattr(key) for key in source["stereographic"].ncattrs()}
    assert field["stereographic"].attrs == expected
    assert field.attrs["source_title"] == "TOA brightness temperature, 10.80 micron (MSG)"
    off_disc = np.isnan(raw(TOA, "data"))
    assert 0 < off_disc.sum() < off_disc.size
    np.testing.assert_array_equal(field["missing_fraction"].values, [off_disc.mean()])
    np.testing.assert_array_equal(field["missing_frequency"].values, off_disc.astype(np.float64))
    with pytest.raises(DataFileError, match=r"dims\.y is 'x', but the file's coordinate variable 'x' has axis 'X'"):
        generate(config | {"dims": {"time": "time", "y": "x", "x": "y"}, "height": 48, "width": 40})


def test_ostia_through_nuwa_ingest(tmp_path):
    """`nuwa ingest` end to end on a file nobody here wrote: land masked, monthly steps, grid mapping kept."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"] = {"ostia": ostia(never_observed="mask", source=str(OSTIA))}
    params["grid"]["datasets"] = ["ostia"]
    params["ingest"] = {"scheduler": "threads"}
    # validate checks the grid's backbones can train on the 18 x 60 grid: SimVP without downsampling
    params["backbones"] = {"simvp": {"kind": "simvp", "size": "small", "N_S": 1},
                           "convlstm": {"kind": "convlstm", "size": "small", "patch_size": 1}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "ostia.nc"
    assert main(["ingest", "--params", str(path), "--dataset", "ostia", "--out", str(out), "--threads", "1"]) == 0
    with xr.open_dataset(out) as written:
        assert written.sizes["time"] == 54 and int(written["observed"].sum()) == 18 * 60 - LAND_PIXELS
        assert written["surface_temperature"].attrs["grid_mapping"] == "latitude_longitude"
        assert written["latitude_longitude"].attrs["earth_radius"] == 6371229.0
        assert written["surface_temperature"].attrs["time_step"] == "1MS"
    assert load_series(out).field.shape == (54, 1, 18, 60)


# -- the shipped WFDE5 entry: same content as before calendars and calendar months -----------

def _content_digest(path: Path) -> str:
    """sha256 of a NetCDF file's content (attributes, types, dims, values), not of its HDF5 bytes;
    without ``nuwa_params_sha256`` (the params entry's digest, recorded since: checked on its own)
    and without the data variable's ``source`` (once this machine's absolute path, which made the
    digest differ on CI's machine; now the params' string: checked on its own)."""
    def plain(value):
        return value if isinstance(value, str) else np.asarray(value).tolist()

    digest = hashlib.sha256()
    with netCDF4.Dataset(path) as dataset:
        dataset.set_auto_maskandscale(False)
        for key in sorted(set(dataset.ncattrs()) - {"nuwa_params_sha256"}):
            digest.update(f"global {key}={plain(dataset.getncattr(key))!r}\n".encode())
        for name in sorted(dataset.variables):
            variable = dataset.variables[name]
            digest.update(f"{name} {variable.dtype} {variable.dimensions}\n".encode())
            for key in sorted(set(variable.ncattrs()) - {"source"}):
                digest.update(f"  {key}={plain(variable.getncattr(key))!r}\n".encode())
            values = np.asarray(variable[...])
            digest.update(repr(values.tolist()).encode() if values.dtype == object
                          else np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


# the content of `nuwa ingest --dataset wfde5_precip` before calendar/calendar months existed
WFDE5_CONTENT = "199cf2300845e40c11ec85829479b452adb9616903032f444f10c6a7e666c932"


@pytest.mark.skipif(not WFDE5.exists(), reason=f"real WFDE5 data not present at {WFDE5}")
def test_wfde5_ingests_to_the_same_content_and_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # params.yaml names the source relative to the repository
    outs = [tmp_path / f"wfde5_{i}.nc" for i in range(2)]
    for out in outs:
        assert main(["ingest", "--params", "params.yaml", "--dataset", "wfde5_precip", "--out", str(out),
                     "--threads", "1"]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert _content_digest(outs[0]) == WFDE5_CONTENT
    with netCDF4.Dataset(outs[0]) as dataset:
        assert dataset["pr"].getncattr("source") == "../shared/data/weather/wfde5/precipitation_flux.nc"
    from nuwa.config import load_params
    from nuwa.io import params_entry_sha256

    with netCDF4.Dataset(outs[0]) as dataset:  # the entry it was made of, which every later stage compares
        recorded = dataset.getncattr("nuwa_params_sha256")
    assert recorded == params_entry_sha256(load_params(REPO / "params.yaml")["datasets"]["wfde5_precip"])
