"""`nuwa inspect`: what a data file holds, and a `datasets:` entry that ingests it.

The suggestion is checked twice here: in-process against the params schema (what inspect itself
does and prints), and end to end: written into a params file, validated and ingested with the
real `nuwa validate` / `nuwa ingest` commands."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from nuwa.cli import main
from nuwa.inspect import InspectError, entry_yaml, inspect_source, render, unique_name

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WFDE5 = SHARED / "weather" / "wfde5" / "precipitation_flux.nc"
KNMI = SHARED / "radar" / "KNMI"
MCH = SHARED / "radar" / "mch"
BOM = SHARED / "radar" / "bom"
needs_wfde5 = pytest.mark.skipif(not WFDE5.exists(), reason=f"{WFDE5} not present")


def inspect_cli(capsys, *args) -> tuple[int, str]:
    code = main(["inspect", *map(str, args)])
    return code, capsys.readouterr().out


def entry_of(text: str) -> tuple[str, dict]:
    """(name, entry) of the `datasets:` block in inspect's output."""
    block = text[text.index("datasets:"):]
    block = block[:block.index("\nnext:")] if "\nnext:" in block else block
    (name, entry), = yaml.safe_load(block)["datasets"].items()
    return name, entry


def ingest_entry(tmp_path: Path, tiny_params: dict, name: str, entry: dict, capsys) -> Path:
    """The entry in a params file, through `nuwa validate` and `nuwa ingest`: the processed file."""
    params = copy.deepcopy(tiny_params)
    params["datasets"][name] = entry
    params["ingest"] = {"scheduler": "threads"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["validate", "--params", str(path)]) == 0, capsys.readouterr().err
    out = tmp_path / "processed" / f"{name}.nc"  # not beside the source: odd.nc would be overwritten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gaps are reported as warnings
        code = main(["ingest", "--params", str(path), "--dataset", name, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    return out


def window_counts(path: Path, entry: dict) -> dict:
    from nuwa.windows import load_series, select_dataset

    series = load_series(path)
    return {split: len(select_dataset(series, entry, split)) for split in ("train", "val", "test")}


# -- a shipped NetCDF file --------------------------------------------------------------------------

@needs_wfde5
def test_shipped_netcdf_is_described_and_its_entry_passes_validation(capsys):
    code, out = inspect_cli(capsys, WFDE5)
    assert code == 0
    for line in (
            "  time 744, lat 20, lon 28",
            "  pr  ('time', 'lat', 'lon')  744 x 20 x 28  float32  units kg m-2 s-1, standard_name precipitation_flux; "
            "NaN 55.4 % (never observed: 310 of 560 pixels; partly missing: 0 pixels; all-NaN frames: 0)",
            "  lat  ('lat',)  axis Y, standard_name latitude, units degrees_north  -> dims.y  50.25 .. 59.75, step 0.5",
            "  time: 744 frames, 2017-01-01 00:00 .. 2017-01-31 23:00, step 1 hour (time_step 1h), calendar "
            "gregorian; no gap",
            "  20 x 28 (lat x lon), latitude/longitude, spacing 0.5 x 0.5 degrees",
            "suggested entry, kind gridded: passes params validation (checked in-process, as `nuwa validate` "
            "checks an entry)"):
        assert line in out.splitlines(), (line, out)
    name, entry = entry_of(out)
    assert name == "precipitation_flux"
    assert entry == {
        "kind": "gridded", "source": str(WFDE5), "variables": ["pr"], "dims": {"time": "time", "y": "lat", "x": "lon"},
        "time_step": "1h", "convert": {"pr": {"factor": 3600.0, "units": "mm h-1"}}, "never_observed": "mask",
        "height": 20, "width": 28, "input_frames": 6, "output_frames": 6, "window_stride": 1, "patch_size": 4,
        "split": {"train": 0.7, "val": 0.1, "test": 0.2}, "csi_thresholds": [0.33, 1.9], "seed": 0}
    # the same as the shipped params.yaml entry wfde5_precip, which a person wrote
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["datasets"]["wfde5_precip"]
    differ = ("source", "csi_thresholds")
    assert {k: v for k, v in entry.items() if k not in differ} == {k: v for k, v in shipped.items() if k not in differ}


@needs_wfde5
def test_the_suggestion_validates_and_ingests_end_to_end(tmp_path, tiny_params, capsys):
    code, out = inspect_cli(capsys, WFDE5, "--entry-only")
    assert code == 0 and out.startswith("datasets:\n  precipitation_flux:\n")
    name, entry = entry_of(out)
    processed = ingest_entry(tmp_path, tiny_params, name, entry, capsys)
    from nuwa.windows import load_series

    series = load_series(processed)
    assert series.field.shape == (744, 1, 20, 28) and series.observed.sum() == 250
    assert series.attrs["units"] == "mm h-1"
    assert window_counts(processed, entry) == {"train": 509, "val": 63, "test": 139}  # as the comment says
    assert "509 / 63 / 139 windows" in inspect_source(str(WFDE5)).comments["split"]


@needs_wfde5
def test_a_glob_of_files_split_by_time_with_a_gap(tmp_path, tiny_params, capsys):
    """A multi-file CF series: the shipped month cut into three files, one day missing from the second."""
    folder = tmp_path / "series"
    folder.mkdir()
    with xr.open_dataset(WFDE5) as source:
        source = source.load()
    parts = [source.isel(time=slice(0, 240)), source.isel(time=slice(264, 480)), source.isel(time=slice(480, None))]
    for index, part in enumerate(parts):
        part.to_netcdf(folder / f"pr_{2017}_{index}.nc")
    pattern = str(folder / "pr_*.nc")
    inspection = inspect_source(pattern)
    assert inspection.validation is None and len(inspection.files) == 3
    assert inspection.facts["time"]["frames"] == 720 and inspection.facts["time"]["missing"] == 24
    assert inspection.facts["time"]["gaps"] == [("2017-01-10 23:00", "2017-01-12 00:00")]
    text = render(inspection)
    assert f"{pattern}: NetCDF, 3 file(s) (pr_2017_0.nc .. pr_2017_2.nc)" in text
    assert "1 gap(s), 24 missing frame(s): 2017-01-10 23:00 -> 2017-01-12 00:00" in text
    assert inspection.entry["source"] == pattern and inspection.entry["time_step"] == "1h"
    assert inspection.name == "pr_2017"
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, inspection.entry, capsys)
    with xr.open_dataset(processed) as done:
        assert done.sizes["time"] == 720 and np.unique(done["segment"].values).tolist() == [0, 1]
    counts = window_counts(processed, inspection.entry)
    assert all(counts.values())
    assert f"{counts['train']} / {counts['val']} / {counts['test']} windows" in inspection.comments["split"]


# -- what is guessed ---------------------------------------------------------------------------------

def cf_file(path: Path, times, shape=(12, 16), dims=("time", "lat", "lon"), nan=None, extra=None, encoding=None,
            cf=True) -> Path:
    rng = np.random.default_rng(0)
    values = rng.gamma(1.0, 2.0, (len(times), *shape)).astype(np.float32)
    if nan is not None:
        values[nan] = np.nan
    coords = {dims[0]: times, dims[1]: np.linspace(40, 40 + 0.25 * (shape[0] - 1), shape[0]),
              dims[2]: np.linspace(-5, -5 + 0.25 * (shape[1] - 1), shape[1])}
    data = {"v": (dims, values, {"units": "mm", "long_name": "a value"})}
    if extra:
        data = {"v": ((dims[0], "level", *dims[1:]), np.stack([values, values + 1], axis=1), {"units": "mm"})}
        coords["level"] = [850, 500]
    dataset = xr.Dataset(data, coords=coords)
    if cf:
        for dim, axis, standard in zip(dims, "TYX", ("time", "latitude", "longitude")):
            dataset[dim].attrs.update(axis=axis, standard_name=standard)
    dataset.to_netcdf(path, encoding=encoding or {})
    return path


def test_dims_come_from_cf_attributes_whatever_the_names(tmp_path, tiny_params, capsys):
    path = cf_file(tmp_path / "odd.nc", pd.date_range("2020-01-01", periods=60, freq="6h"),
                   dims=("stamp", "northing", "easting"), extra=True)
    inspection = inspect_source(str(path))
    assert inspection.entry["dims"] == {"time": "stamp", "y": "northing", "x": "easting"}
    assert inspection.entry["select"] == {"level": 850}
    assert inspection.entry["time_step"] == "6h" and "calendar" not in inspection.entry
    assert inspection.comments["dims"] == "from stamp: axis T; northing: axis Y; easting: axis X"
    assert inspection.validation is None
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, inspection.entry, capsys)
    with xr.open_dataset(processed) as done:
        assert done["v"].shape == (60, 1, 12, 16)


def test_a_large_grid_is_coarsened_and_trimmed_so_the_patch_divides_it(tmp_path, tiny_params, capsys):
    path = cf_file(tmp_path / "big.nc", pd.date_range("2020-01-01", periods=40, freq="D"), shape=(300, 250))
    inspection = inspect_source(str(path))
    entry = inspection.entry
    # 300 x 250 -> coarsen 3 (the smallest factor giving at most 128 a side) -> 100 x 83 -> 80 columns kept
    assert entry["coarsen"] == 3 and (entry["height"], entry["width"]) == (100, 80) and entry["patch_size"] == 4
    assert list(entry["crop"]) == ["x"] and entry["crop"]["x"] == [-5.0, pytest.approx(-5 + 0.25 * 239)]
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, entry, capsys)
    with xr.open_dataset(processed) as done:
        assert done["v"].shape[2:] == (100, 80)  # the reader agrees with the suggestion


def test_missing_values_get_never_observed_and_fill_missing(tmp_path, tiny_params, capsys):
    nan = np.zeros((48, 12, 16), dtype=bool)
    nan[:, :3, :] = True  # never observed
    nan[5, 6, 7] = nan[30, 8, 2] = True  # missing now and then
    path = cf_file(tmp_path / "holes.nc", pd.date_range("2020-01-01", periods=48, freq="h"), nan=nan)
    inspection = inspect_source(str(path))
    assert inspection.entry["never_observed"] == "mask" and inspection.entry["fill_missing"] == 0.0
    assert inspection.comments["never_observed"].startswith("48 of 192 pixels (25 %) NaN in every frame")
    assert "never observed: 48 of 192 pixels; partly missing: 2 pixels; all-NaN frames: 0" in render(inspection)
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, inspection.entry, capsys)
    from nuwa.windows import load_series

    assert (~load_series(processed).observed).sum() == 48


@pytest.mark.parametrize("calendar,freq,step", [("360_day", "MS", "1MS"), ("noleap", "D", "1D"),
                                                 ("standard", "MS", "1MS")])
def test_calendars_and_calendar_months(tmp_path, tiny_params, capsys, calendar, freq, step):
    times = xr.date_range("2001-01-01", periods=48, freq=freq, calendar=calendar, use_cftime=calendar != "standard")
    encoding = {"time": {"units": "days since 2000-01-01", "calendar": calendar}}
    path = cf_file(tmp_path / f"{calendar}.nc", times, encoding=encoding)
    inspection = inspect_source(str(path))
    assert inspection.entry["time_step"] == step
    assert inspection.entry.get("calendar") == (None if calendar == "standard" else calendar)
    assert f"calendar {calendar}" in render(inspection)
    assert inspection.validation is None, inspection.validation
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, inspection.entry, capsys)
    with xr.open_dataset(processed) as done:
        assert done.sizes["time"] == 48


def test_the_suggestion_gives_every_split_a_window_on_short_data(tmp_path):
    path = cf_file(tmp_path / "short.nc", pd.date_range("2020-01-01", periods=30, freq="D"))
    inspection = inspect_source(str(path))
    entry = inspection.entry
    assert (entry["input_frames"], entry["output_frames"]) == (4, 4)
    assert entry["split"] == {"train": 0.4, "val": 0.3, "test": 0.3}
    assert inspection.comments["split"] == "12 / 9 / 9 frames, 5 / 2 / 2 windows (train / val / test)"


def test_the_entry_text_is_the_entry():
    entry = {"kind": "gridded", "source": "data/*.nc", "variables": ["a", "b"], "dims": {"time": "t", "y": "y", "x": "x"},
             "time_step": "1MS", "crop": {"y": [1.5, -2.0]}, "fill_missing": 0.0, "csi_thresholds": [], "seed": 0}
    text = entry_yaml("mine", entry, {"time_step": "monthly"})
    assert yaml.safe_load(text) == {"datasets": {"mine": entry}}
    assert "    time_step: 1MS" in text and "# monthly" in text


def test_names_follow_the_params_rule():
    assert unique_name("ta_Amon_IITM-ESM_historical_r1i1p1f1_gn_195001-195912") == \
        "ta_amon_iitm_esm_historical_r1i1p1f1_gn_195001"
    assert unique_name("2017 data!") == "d_2017_data"
    assert unique_name("pr", {"pr", "pr_2"}) == "pr_3"


def test_with_a_params_file_the_name_avoids_its_datasets_and_the_whole_file_is_checked(tmp_path, capsys,
                                                                                       tiny_params):
    path = cf_file(tmp_path / "moving_glyphs.nc", pd.date_range("2020-01-01", periods=60, freq="D"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params, sort_keys=False))
    code, out = inspect_cli(capsys, path, "--params", tmp_path / "params.yaml")
    assert code == 0 and entry_of(out)[0] == "moving_glyphs_2"
    assert "passes params validation" in out


def test_an_entry_that_fails_validation_says_so_and_exits_1(tmp_path, capsys, monkeypatch):
    import nuwa.inspect

    path = cf_file(tmp_path / "x.nc", pd.date_range("2020-01-01", periods=60, freq="D"))
    chosen = nuwa.inspect.choose_windows
    monkeypatch.setattr(nuwa.inspect, "choose_windows", lambda segment: (
        {**chosen(segment)[0], "split": {"train": 0.7, "val": 0.1, "test": 0.1}}, "broken on purpose"))
    code, out = inspect_cli(capsys, path)
    assert code == 1
    assert ("suggested entry, kind gridded: does NOT pass params validation: suggested entry: datasets.x.split: "
            "fractions {'train': 0.7, 'val': 0.1, 'test': 0.1} sum to 0.9 (allowed: train + val + test = 1)") in out


def test_sources_that_cannot_be_inspected_are_named(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none_*.nc")]) == 2
    assert capsys.readouterr().err.strip() == f"nuwa inspect: error: {tmp_path / 'none_*.nc'}: no file matches the pattern"
    xr.Dataset({"v": (("a", "b"), np.zeros((2, 3)))}).to_netcdf(tmp_path / "flat.nc")
    with pytest.raises(InspectError, match="no time and no y and no x dimension found"):
        inspect_source(str(tmp_path / "flat.nc"))


# -- radar files --------------------------------------------------------------------------------------

def radar_kind_registered() -> bool:
    from nuwa.datasets import dataset_kinds

    return "radar" in dataset_kinds()


RADAR_KEYS = ["kind", "importer", "importer_kwargs", "source", "pattern", "timestamp_format", "quantity", "crop",
              "downsample", "missing", "height", "width", "input_frames", "output_frames", "window_stride",
              "patch_size", "split", "csi_thresholds", "seed"]


@pytest.mark.skipif(not KNMI.exists(), reason=f"{KNMI} not present")
def test_knmi_radar_files_get_a_radar_entry(tmp_path, tiny_params, capsys):
    inspection = inspect_source(str(KNMI))
    entry = inspection.entry
    assert list(entry) == RADAR_KEYS
    assert entry["kind"] == "radar" and entry["importer"] == "import_knmi_hdf5"
    assert entry["importer_kwargs"] == {"qty": "ACRR", "accutime": 5.0}
    assert entry["source"] == str(KNMI) and entry["pattern"] == "**/RAD_NL25_RAP_5min_*.h5"
    assert entry["timestamp_format"] == "%Y%m%d%H%M" and entry["quantity"] == "rain_rate" and entry["missing"] == "zero"
    r0, r1, c0, c1 = entry["crop"]
    assert ((r1 - r0) // entry["downsample"], (c1 - c0) // entry["downsample"]) == (entry["height"], entry["width"])
    assert entry["height"] % entry["patch_size"] == 0 and entry["width"] % entry["patch_size"] == 0
    assert inspection.facts["time"]["frames"] == 92
    text = render(inspection)
    assert "from the file names ('%Y%m%d%H%M'): 92 frames, 2010-08-26 00:00 .. 2010-08-26 07:35, step 5 minutes" in text
    if radar_kind_registered():
        assert inspection.validation is None, inspection.validation
        assert "suggested entry, kind radar: passes params validation" in text
        processed = ingest_entry(tmp_path, tiny_params, inspection.name, entry, capsys)
        with xr.open_dataset(processed) as done:
            assert done.sizes["time"] == 92 and (done.sizes["y"], done.sizes["x"]) == (entry["height"], entry["width"])
    else:
        assert "not checked: kind 'radar' is not registered" in text
    # the crop, downsample, pattern and timestamp format mean the same to today's KNMI reader
    product = {k: v for k, v in entry.items() if k not in ("importer", "importer_kwargs")} | {"kind": "radar_knmi"}
    processed = ingest_entry(tmp_path, tiny_params, "knmi", product, capsys)
    with xr.open_dataset(processed) as done:
        assert done.sizes["time"] == 92 and (done.sizes["y"], done.sizes["x"]) == (entry["height"], entry["width"])


@pytest.mark.skipif(not (MCH.exists() and BOM.exists()), reason="radar sample data not present")
def test_meteoswiss_and_bom_radar_files(capsys):
    from nuwa.config import validate_dataset_entry

    mch = inspect_source(str(MCH))
    assert mch.entry["importer"] == "import_mch_gif"
    assert mch.entry["importer_kwargs"] == {"product": "AQC", "unit": "mm", "accutime": 5.0}
    assert mch.entry["pattern"] == "**/AQC*.gif" and mch.entry["timestamp_format"] == "AQC%y%j%H%M"
    assert len(mch.facts["time"]["gaps"]) == 2  # three events
    bom = inspect_source(str(BOM))  # two products: the larger is taken, the other named
    assert bom.entry["importer"] == "import_bom_rf3" and bom.entry["importer_kwargs"] == {}
    assert bom.entry["pattern"] == "**/66_*.prcp-c10.nc" and bom.entry["timestamp_format"] == "%Y%m%d_%H%M%S"
    assert "61 file(s) like 2_20180616_100000.prcp-cscn.nc" in render(bom)
    cscn = inspect_source(str(BOM / "prcp-cscn" / "**" / "*.nc"))
    assert cscn.name == "radar_prcp_cscn" and cscn.entry["pattern"] == "**/2_*.prcp-cscn.nc"
    for inspection, kind in ((mch, "radar_mch"), (bom, "radar_bom"), (cscn, "radar_bom")):
        assert list(inspection.entry) == RADAR_KEYS
        product = {k: v for k, v in inspection.entry.items() if k not in ("importer", "importer_kwargs")}
        validate_dataset_entry(inspection.name, product | {"kind": kind})  # today's product kinds take the rest


FOREIGN = Path(__file__).resolve().parent / "data" / "foreign_cf"


@pytest.mark.skipif(not (FOREIGN / "cmip6").exists(), reason="tests/data/foreign_cf not present")
@pytest.mark.parametrize("file,expect", [
    ("A1B_north_america_subset.nc", {"time_step": "1YS", "calendar": "360_day"}),
    ("ostia_monthly_subset.nc", {"time_step": "1MS", "never_observed": "mask"}),
    ("cmip6/ta_day_FGOALS-g3_historical_r1i1p1f1_gn_20000101-20001231.nc",
     {"time_step": "1D", "calendar": "365_day", "select": {"plev": 100000.0}, "fill_missing": 0.0}),
])
def test_cf_files_nobody_here_wrote(tmp_path, tiny_params, capsys, file, expect):
    """Other people's CF files (iris sample data, CMIP6 subsets): non-standard calendars, yearly and
    mid-month steps, a land mask, netCDF's default fill written without a _FillValue (read as NaN,
    so fill_missing is suggested): each suggestion validates and ingests."""
    inspection = inspect_source(str(FOREIGN / file))
    assert {key: inspection.entry.get(key) for key in expect} == expect
    assert inspection.validation is None, inspection.validation
    processed = ingest_entry(tmp_path, tiny_params, inspection.name, inspection.entry, capsys)
    assert all(window_counts(processed, inspection.entry).values())
