"""taxibj and sevir: readers of the original HDF5 layouts, on small fixtures written in those layouts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.datasets.taxibj import file_name
from nuwa.ingest import ingest
from nuwa.io import DataFileError, write_netcdf

COMMON = {"input_frames": 4, "output_frames": 4, "window_stride": 1, "patch_size": 4,
          "split": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 0}


# ---------------------------------------------------------------- TaxiBJ fixtures

def taxibj_config(source, **overrides) -> dict:
    entry = {"kind": "taxibj", "height": 32, "width": 32, **COMMON, "csi_thresholds": [50.0],
             "source": str(source), "years": [13, 14]}
    return entry | overrides


def stamps(day: str, slots) -> list[bytes]:
    return [f"{day}{s:02d}".encode() for s in slots]


def write_taxibj(path: Path, dates: list[bytes], rng, data=None) -> np.ndarray:
    """A file in the release's layout: data (N, 2, 32, 32) float64, date (N,) |S10."""
    if data is None:
        data = rng.integers(0, 500, size=(len(dates), 2, 32, 32)).astype(np.float64)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=data)
        handle.create_dataset("date", data=np.array(dates, dtype="S10"))
    return data


# 2013: Jul 1 complete, Jul 2 misses slot 20 (dropped), Jul 3 and 4 complete;
# 2014: Mar 1 and 2 complete, Mar 3 only slots 1..10 (dropped)
DATES_13 = (stamps("20130701", range(1, 49)) + stamps("20130702", [s for s in range(1, 49) if s != 20])
            + stamps("20130703", range(1, 49)) + stamps("20130704", range(1, 49)))
DATES_14 = stamps("20140301", range(1, 49)) + stamps("20140302", range(1, 49)) + stamps("20140303", range(1, 11))


@pytest.fixture
def taxibj(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "TaxiBJ"
    folder.mkdir()
    data13 = write_taxibj(folder / file_name(13), DATES_13, rng)
    data14 = write_taxibj(folder / file_name(14), DATES_14, rng)
    keep13 = np.r_[0:48, 95:191]  # Jul 1, then Jul 3-4 (Jul 2 is rows 48..94)
    keep14 = np.r_[0:96]
    expected = np.concatenate([data13[keep13], data14[keep14]])
    times = np.concatenate([
        np.datetime64("2013-07-01T00:00") + np.arange(48) * np.timedelta64(30, "m"),
        np.datetime64("2013-07-03T00:00") + np.arange(96) * np.timedelta64(30, "m"),
        np.datetime64("2014-03-01T00:00") + np.arange(96) * np.timedelta64(30, "m"),
    ]).astype("datetime64[ns]")
    return {"folder": folder, "expected": expected, "times": times, "rng": rng}


def generate_taxibj(folder, **overrides) -> xr.DataArray:
    return get_dataset("taxibj")(taxibj_config(folder, **overrides), 0)


# ---------------------------------------------------------------- TaxiBJ tests

def test_taxibj_values_times_and_dropped_days(taxibj):
    field = generate_taxibj(taxibj["folder"])
    assert field.dims == ("time", "channel", "y", "x") and field.dtype == np.float32
    assert field.shape == (240, 2, 32, 32)
    assert list(field["channel"].values) == ["inflow", "outflow"]
    np.testing.assert_array_equal(field["time"].values, taxibj["times"])
    assert field["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(field.values, taxibj["expected"].astype(np.float32))
    assert field.attrs["dropped_days"] == 2 and field.attrs["dropped_rows"] == 47 + 10
    assert field.attrs["dropped_day_list"] == "20130702 20140303"
    assert field.attrs["rows_read"] == 191 + 106 and field.attrs["rows_kept"] == 240
    assert field.attrs["units"] and field.attrs["long_name"]
    for value in field.attrs.values():
        assert isinstance(value, (str, int, float))


def test_taxibj_segments_at_gaps(taxibj):
    field = generate_taxibj(taxibj["folder"])
    segment = field["segment"].values
    np.testing.assert_array_equal(segment, np.repeat([0, 1, 2], [48, 96, 96]))
    assert field.attrs["segments"] == 3
    assert field.attrs["gaps"].startswith("2 gap(s): 2013-07-01T23:30:00 -> 2013-07-03T00:00:00; 2013-07-04T23:30:00")


def test_taxibj_is_lazy(taxibj):
    field = generate_taxibj(taxibj["folder"])
    assert field.chunks is not None
    assert hasattr(field.data, "dask")


def test_taxibj_years_select_files(taxibj):
    field = generate_taxibj(taxibj["folder"], years=[14])
    np.testing.assert_array_equal(field.values, taxibj["expected"][144:].astype(np.float32))
    assert field.attrs["source_files"] == file_name(14)


def test_taxibj_unsorted_rows_are_put_in_time_order(taxibj):
    folder, rng = taxibj["folder"], taxibj["rng"]
    order = rng.permutation(len(DATES_14))
    data14 = write_taxibj(folder / file_name(14), [DATES_14[i] for i in order], rng)
    field = generate_taxibj(folder, years=[14])
    expected = np.empty_like(data14)
    expected[order] = data14  # back to time order
    np.testing.assert_array_equal(field.values, expected[:96].astype(np.float32))
    np.testing.assert_array_equal(field["time"].values, taxibj["times"][144:])


def test_taxibj_ingest_matches_fixture(taxibj, tmp_path):
    processed = ingest("taxibj", taxibj_config(taxibj["folder"]))
    values = processed["taxi_flow"]
    assert values.dims == ("time", "channel", "y", "x")
    np.testing.assert_array_equal(values.values, taxibj["expected"].astype(np.float32))
    np.testing.assert_array_equal(processed["time"].values, taxibj["times"])
    np.testing.assert_array_equal(processed["segment"].values, np.repeat([0, 1, 2], [48, 96, 96]))
    path = tmp_path / "taxibj.nc"
    write_netcdf(processed, path)
    with xr.open_dataset(path) as back:
        np.testing.assert_array_equal(back["taxi_flow"].values, taxibj["expected"].astype(np.float32))
        np.testing.assert_array_equal(back["time"].values, taxibj["times"])


def test_taxibj_empty_folder_and_missing_file(tmp_path, taxibj):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match=re.escape(str(empty / file_name(13))) + ".*not found"):
        generate_taxibj(empty)
    with pytest.raises(DataFileError, match=re.escape(str(taxibj["folder"] / file_name(15))) + ".*not found"):
        generate_taxibj(taxibj["folder"], years=[13, 15])


def test_taxibj_wrong_layout(taxibj):
    folder, rng = taxibj["folder"], taxibj["rng"]
    path = folder / file_name(13)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=np.zeros((len(DATES_13), 2, 32, 32)))
        handle.create_dataset("timestamps", data=np.array(DATES_13, dtype="S10"))
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*missing dataset.*date"):
        generate_taxibj(folder)
    write_taxibj(path, DATES_13, rng, data=np.zeros((len(DATES_13), 2, 16, 16)))
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*data has shape \(191, 2, 16, 16\)"):
        generate_taxibj(folder)


@pytest.mark.parametrize("bad,index,what", [
    (b"2013070149", 5, "timeslot 49"),
    (b"20130701x5", 7, "expected a YYYYMMDDss"),
    (b"2013023101", 3, "not a valid YYYYMMDD"),
])
def test_taxibj_unparsable_timeslot(taxibj, bad, index, what):
    dates = list(DATES_13)
    dates[index] = bad
    path = taxibj["folder"] / file_name(13)
    write_taxibj(path, dates, taxibj["rng"])
    with pytest.raises(DataFileError, match=re.escape(str(path)) + rf".*date\[{index}\].*{what}"):
        generate_taxibj(taxibj["folder"])


def test_taxibj_duplicate_timestamps(taxibj):
    dates = list(DATES_14)
    dates[60] = dates[12]  # 2014030113 twice
    path = taxibj["folder"] / file_name(14)
    write_taxibj(path, dates, taxibj["rng"])
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*duplicate.*2014030113.*date\[12\] and date\[60\]"):
        generate_taxibj(taxibj["folder"])


def test_taxibj_truncated_hdf5(taxibj):
    path = taxibj["folder"] / file_name(14)
    size = path.stat().st_size
    with open(path, "r+b") as stream:
        stream.truncate(size // 2)
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*truncated or corrupt"):
        generate_taxibj(taxibj["folder"])


@pytest.mark.parametrize("key,value", [("height", 16), ("width", 64)])
def test_taxibj_wrong_grid(taxibj, key, value):
    with pytest.raises(ValueError, match=rf"{key} is {value}.*32 rows x 32 columns"):
        generate_taxibj(taxibj["folder"], **{key: value})


def test_taxibj_config_schema(taxibj):
    import jsonschema

    schema = dataset_config_schema("taxibj")
    entry = taxibj_config(taxibj["folder"])
    jsonschema.validate(entry, schema)
    del entry["years"]  # optional
    jsonschema.validate(entry, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(taxibj_config(taxibj["folder"], years=[12]), schema)
    with pytest.raises(ValueError, match="years"):
        generate_taxibj(taxibj["folder"], years=[12])


# ---------------------------------------------------------------- SEVIR fixtures

FILE_2019 = "vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_0630.h5"
FILE_2018 = "vil/2018/SEVIR_VIL_STORMEVENTS_2018_0701_1231.h5"
FILE_RANDOM = "vil/2019/SEVIR_VIL_RANDOMEVENTS_2019_0101_0430.h5"
NOMINAL = ":".join(str(m) for m in range(-120, 121, 5))
IRREGULAR_OFFSETS = np.r_[np.arange(-125, 110, 5), np.arange(110, 121, 10)]  # 49, last steps 10 min
COLUMNS = ["id", "file_name", "file_index", "img_type", "time_utc", "minute_offsets", "episode_id", "event_id",
           "event_type", "llcrnrlat", "llcrnrlon", "urcrnrlat", "urcrnrlon", "proj", "size_x", "size_y",
           "height_m", "width_m", "data_min", "data_max", "pct_missing"]
# (id, file, index, time_utc, offsets, event_id, event_type), listed out of time order
EVENTS = [
    ("S100", FILE_2019, 1, "2019-06-01 18:00:00", NOMINAL, 100.0, "Hail"),
    ("S101", FILE_2019, 0, "2019-05-01 12:00:00", NOMINAL, 101.0, "Thunderstorm Wind"),
    ("S200", FILE_2018, 0, "2018-08-01 00:00:00", ":".join(map(str, IRREGULAR_OFFSETS)), 200.0, "Hail"),
    ("R300", FILE_RANDOM, 0, "2019-03-01 06:00:00", "", None, None),
]
TIME_ORDER = ["S200", "R300", "S101", "S100"]


def catalog_rows(events) -> pd.DataFrame:
    rows = []
    for sevir_id, name, index, time, offsets, event_id, event_type in events:
        rows.append({"id": sevir_id, "file_name": name, "file_index": index, "img_type": "vil", "time_utc": time,
                     "minute_offsets": offsets or None, "episode_id": event_id, "event_id": event_id,
                     "event_type": event_type, "llcrnrlat": 35.0, "llcrnrlon": -100.0, "urcrnrlat": 38.0,
                     "urcrnrlon": -96.0, "proj": "+proj=laea +lat_0=38 +lon_0=-98 +units=m", "size_x": 384,
                     "size_y": 384, "height_m": 384000, "width_m": 384000, "data_min": 0, "data_max": 255,
                     "pct_missing": 0.0})
        # the other image types of the same event: their files are absent and must be ignored
        rows.append(rows[-1] | {"img_type": "ir069", "file_name": name.replace("vil", "ir069").replace("VIL", "IR069"),
                                "size_x": 192, "size_y": 192})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_vil(path: Path, ids: list[str], vil: np.ndarray) -> None:
    """A file in SEVIR's layout: id (N,) byte strings, vil (N, 384, 384, 49) uint8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("id", data=np.array([i.encode() for i in ids], dtype="S15"))
        handle.create_dataset("vil", data=vil)


@pytest.fixture(scope="module")
def sevir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sevir") / "SEVIR"
    rng = np.random.default_rng(1)
    files = {FILE_2019: ["S101", "S100"], FILE_2018: ["S200"], FILE_RANDOM: ["R300"]}
    events = {}
    for name, ids in files.items():
        vil = rng.integers(0, 256, size=(len(ids), 384, 384, 49), dtype=np.uint8)
        write_vil(folder / "data" / name, ids, vil)
        events |= {sevir_id: vil[i] for i, sevir_id in enumerate(ids)}
    catalog_rows(EVENTS).to_csv(folder / "CATALOG.csv", index=False)
    return {"folder": folder, "events": events}


def sevir_config(source, **overrides) -> dict:
    entry = {"kind": "sevir", "height": 384, "width": 384, **COMMON, "patch_size": 16,
             "csi_thresholds": [16, 74, 133, 160, 181, 219], "source": str(source)}
    return entry | overrides


def generate_sevir(folder, **overrides) -> xr.DataArray:
    return get_dataset("sevir")(sevir_config(folder, **overrides), 0)


def expected_frames(sevir, ids) -> np.ndarray:
    """(49 x events, 1, 384, 384): each event's frames (last axis of the file) first."""
    return np.concatenate([np.moveaxis(sevir["events"][i], -1, 0)[:, None] for i in ids]).astype(np.float32)


def event_copy(tmp_path, sevir, events) -> Path:
    """A SEVIR folder with its own catalog, sharing the module fixture's data files."""
    folder = tmp_path / "SEVIR"
    folder.mkdir()
    os.symlink(sevir["folder"] / "data", folder / "data")
    catalog_rows(events).to_csv(folder / "CATALOG.csv", index=False)
    return folder


# ---------------------------------------------------------------- SEVIR tests

def test_sevir_values_order_and_coordinates(sevir):
    field = generate_sevir(sevir["folder"])
    assert field.dims == ("time", "channel", "y", "x") and field.dtype == np.float32
    assert field.shape == (4 * 49, 1, 384, 384)
    np.testing.assert_array_equal(field.values, expected_frames(sevir, TIME_ORDER))
    np.testing.assert_array_equal(field["time"].values, np.arange(4 * 49))
    np.testing.assert_array_equal(field["segment"].values, np.repeat(np.arange(4), 49))
    np.testing.assert_array_equal(field["sevir_id"].values, np.repeat(TIME_ORDER, 49))
    np.testing.assert_array_equal(field["event_id"].values, np.repeat(["200", "", "101", "100"], 49))
    valid = field["valid_time"].values
    assert valid.dtype == np.dtype("datetime64[ns]")
    minutes = np.timedelta64(1, "m")
    np.testing.assert_array_equal(valid[:49], np.datetime64("2018-08-01T00:00") + IRREGULAR_OFFSETS * minutes)
    nominal = np.arange(-120, 121, 5) * minutes
    np.testing.assert_array_equal(valid[49:98], np.datetime64("2019-03-01T06:00") + nominal)  # empty -> nominal
    np.testing.assert_array_equal(valid[147:], np.datetime64("2019-06-01T18:00") + nominal)
    assert field.attrs["events"] == 4 and field.attrs["events_with_irregular_offsets"] == 1
    assert "16, 74, 133, 160, 181, 219" in field.attrs["comment"] and field.attrs["units"] == "1"
    assert field.attrs["max_events"] == "none"
    for value in field.attrs.values():
        assert isinstance(value, (str, int, float))


def test_sevir_is_lazy(sevir):
    field = generate_sevir(sevir["folder"])
    assert field.chunks is not None
    assert field.chunks[0] == (49,) * 4  # one chunk per event


def test_sevir_event_selection(sevir):
    hail = generate_sevir(sevir["folder"], event_types=["Hail"])
    np.testing.assert_array_equal(hail.values, expected_frames(sevir, ["S200", "S100"]))
    np.testing.assert_array_equal(hail["segment"].values, np.repeat([0, 1], 49))
    first_two = generate_sevir(sevir["folder"], max_events=2)
    np.testing.assert_array_equal(np.unique(first_two["sevir_id"].values), ["R300", "S200"])
    np.testing.assert_array_equal(first_two.values, expected_frames(sevir, ["S200", "R300"]))
    both = generate_sevir(sevir["folder"], event_types=["Thunderstorm Wind", "Hail"], max_events=2)
    np.testing.assert_array_equal(np.unique(both["sevir_id"].values), ["S101", "S200"])


def test_sevir_no_matching_events_names_selection_and_types(sevir):
    catalog = re.escape(str(sevir["folder"] / "CATALOG.csv"))
    with pytest.raises(DataFileError, match=catalog + r".*\['Tornado'\].*'Hail' \(2\).*'Thunderstorm Wind' \(1\)"):
        generate_sevir(sevir["folder"], event_types=["Tornado"])


def test_sevir_downsample_is_block_mean(sevir):
    field = generate_sevir(sevir["folder"], downsample=4, height=96, width=96, max_events=1)
    frames = np.moveaxis(sevir["events"]["S200"], -1, 0).astype(np.float64)  # (49, 384, 384)
    block = np.zeros((49, 96, 96))
    for dy in range(4):
        for dx in range(4):
            block += frames[:, dy::4, dx::4]
    block /= 16
    assert field.shape == (49, 1, 96, 96)
    np.testing.assert_allclose(field.values[:, 0], block, rtol=0, atol=1e-5)
    assert field.attrs["downsample"] == 4


@pytest.mark.parametrize("overrides,key", [
    ({"height": 96, "width": 96}, "height"),
    ({"downsample": 4, "height": 96, "width": 384}, "width"),
    ({"downsample": 5}, "downsample"),
])
def test_sevir_grid_mismatch(sevir, overrides, key):
    with pytest.raises(ValueError, match=rf"config {key} is"):
        generate_sevir(sevir["folder"], **overrides)


def test_sevir_ingest_matches_fixture(sevir, tmp_path):
    config = sevir_config(sevir["folder"], downsample=8, height=48, width=48)
    processed = ingest("sevir", config)
    values = processed["vil"].values
    full = expected_frames(sevir, TIME_ORDER)
    expected = full.reshape(196, 1, 48, 8, 48, 8).astype(np.float64).mean(axis=(3, 5))
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(processed["segment"].values, np.repeat(np.arange(4), 49))
    np.testing.assert_array_equal(processed["sevir_id"].values, np.repeat(TIME_ORDER, 49))
    path = tmp_path / "sevir.nc"
    write_netcdf(processed, path)
    with xr.open_dataset(path) as back:
        np.testing.assert_allclose(back["vil"].values, expected, atol=1e-4)
        np.testing.assert_array_equal(back["valid_time"].values, processed["valid_time"].values)


def test_sevir_missing_catalog_and_columns(tmp_path, sevir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileError, match=re.escape(str(empty / "CATALOG.csv")) + ".*not found"):
        generate_sevir(empty)
    folder = event_copy(tmp_path, sevir, EVENTS)
    catalog_rows(EVENTS).drop(columns=["file_index", "event_type"]).to_csv(folder / "CATALOG.csv", index=False)
    with pytest.raises(DataFileError, match=re.escape(str(folder / "CATALOG.csv")) + ".*file_index, event_type"):
        generate_sevir(folder)


def test_sevir_id_not_at_file_index(tmp_path, sevir):
    events = [e if e[0] != "S100" else e[:2] + (0,) + e[3:] for e in EVENTS]  # S100 is row 1, not 0
    folder = event_copy(tmp_path, sevir, events)
    path = re.escape(str(folder / "data" / FILE_2019))
    with pytest.raises(DataFileError, match=path + ".*'S100' at file_index 0.*id\\[0\\] is 'S101'.*at index 1"):
        generate_sevir(folder)


def test_sevir_missing_data_file(tmp_path, sevir):
    events = EVENTS + [("S400", "vil/2017/SEVIR_VIL_STORMEVENTS_2017_0101_0630.h5", 0, "2017-05-01 00:00:00",
                        NOMINAL, 400.0, "Hail")]
    folder = event_copy(tmp_path, sevir, events)
    with pytest.raises(DataFileError, match=re.escape(str(folder / "data/vil/2017/SEVIR_VIL_STORMEVENTS_2017_0101_0630.h5"))
                       + ".*not found"):
        generate_sevir(folder)
    # a selection that does not need the absent file works
    assert generate_sevir(folder, event_types=["Thunderstorm Wind"]).shape == (49, 1, 384, 384)


def own_data(tmp_path) -> tuple[Path, Path]:
    """A SEVIR folder with the one-event random file only (to damage it)."""
    folder = tmp_path / "SEVIR"
    (folder / "data").mkdir(parents=True)
    catalog_rows([EVENTS[3]]).to_csv(folder / "CATALOG.csv", index=False)
    return folder, folder / "data" / FILE_RANDOM


def test_sevir_wrong_layout(tmp_path):
    folder, path = own_data(tmp_path)
    write_vil(path, ["R300"], np.zeros((1, 192, 192, 49), dtype=np.uint8))
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*vil has shape \(1, 192, 192, 49\)"):
        generate_sevir(folder)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("id", data=np.array([b"R300"]))
        handle.create_dataset("ir069", data=np.zeros((1, 4, 4, 49), dtype=np.int16))
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*missing dataset.*vil"):
        generate_sevir(folder)


def test_sevir_truncated_hdf5(tmp_path, sevir):
    folder, path = own_data(tmp_path)
    write_vil(path, ["R300"], sevir["events"]["R300"][None])
    with open(path, "r+b") as stream:
        stream.truncate(path.stat().st_size - 1000)
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*truncated or corrupt"):
        generate_sevir(folder)


def test_sevir_config_schema(sevir):
    import jsonschema

    schema = dataset_config_schema("sevir")
    jsonschema.validate(sevir_config(sevir["folder"]), schema)
    jsonschema.validate(sevir_config(sevir["folder"], event_types=["Hail"], max_events=None, downsample=2), schema)
    for bad in ({"max_events": 0}, {"downsample": 0}, {"event_types": "Hail"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(sevir_config(sevir["folder"], **bad), schema)
