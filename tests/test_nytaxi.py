"""nytaxi: the real NYTaxi half-hourly flows (three files, one series), checked and ingested."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_PARAMS

from nuwa.datasets import dataset_config_schema, defines_split, get_dataset
from nuwa.datasets.nytaxi import FILES, FRAMES
from nuwa.ingest import SPLIT_CODES
from nuwa.io import DataFileError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared/data/traffic/NYTaxi"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real NYTaxi data folder not present at {DATA} (shared/data beside the repo)"
)


def config(source, **overrides) -> dict:
    """The params entry proposed for params.yaml (source relative to the repository root)."""
    entry = {
        "kind": "nytaxi", "source": str(source), "height": 16, "width": 12, "input_frames": 4,
        "output_frames": 4, "window_stride": 1, "patch_size": 4, "csi_thresholds": [100.0, 300.0], "seed": 0,
    }
    return entry | overrides


def read(source):
    return get_dataset("nytaxi")(config(source), 0)


@pytest.fixture(scope="module")
def field():
    return read(DATA)


@pytest.fixture(scope="module")
def raw():
    return [np.load(DATA / name)["flow"] for name in FILES]


def copy_data(tmp_path: Path) -> Path:
    folder = tmp_path / "NYTaxi"
    folder.mkdir()
    for name in FILES:
        shutil.copy(DATA / name, folder / name)
        (folder / name).chmod(0o644)
    return folder


def rewrite(path: Path, flow: np.ndarray) -> None:
    np.savez(path, flow=flow)


def load(path: Path) -> np.ndarray:
    return np.load(path)["flow"].copy()


def test_shape_coords_and_attrs(field):
    assert field.dims == ("time", "channel", "y", "x")
    assert field.shape == (4320, 2, 16, 12)
    assert field.dtype == np.float32
    assert list(field["channel"].values) == ["inflow", "outflow"]
    assert field.attrs["units"] == "trips per 30 min"
    values = field.values
    assert values.min() == 0 and values.max() == 1518
    assert np.array_equal(values, np.round(values))  # whole trip counts, exact in float32
    for value in field.attrs.values():  # NetCDF-safe attributes
        assert isinstance(value, (str, int, float, np.integer, np.floating))


def test_timestamps_every_30_min_from_2016_01_01(field):
    times = field["time"].values
    assert times.dtype == np.dtype("datetime64[ns]")
    assert times[0] == np.datetime64("2016-01-01T00:00") and times[-1] == np.datetime64("2016-03-30T23:30")
    assert (np.diff(times) == np.timedelta64(30, "m")).all()
    assert "New York" in field["time"].attrs["long_name"]


def test_dates_are_right(field):
    """The data confirm the documented start: the blizzard day and the daylight-saving hour."""
    total = field.sum(dim=("channel", "y", "x")).to_series()
    daily = total.resample("1D").sum()
    assert len(daily) == 90
    assert daily.idxmin() == pd.Timestamp("2016-01-23")  # "Jonas" blizzard, travel ban
    assert total.groupby(total.index.time).mean().idxmin() == pd.Timestamp("05:00").time()  # the nightly low
    # 02:00-03:00 did not exist on 2016-03-13 in New York: near-empty slots between full ones
    dst = total.loc["2016-03-13 01:30":"2016-03-13 03:00"].to_numpy()
    assert dst[1] < 100 and dst[2] < 100 and dst[0] > 10_000 and dst[3] > 10_000
    assert "2016-03-13T02:00" in field.attrs["dst_note"]


def test_series_joins_the_three_files_in_order(field, raw):
    assert [len(f) for f in raw] == [FRAMES[name] for name in FILES] == [2784, 672, 864]
    joined = np.concatenate(raw).transpose(0, 3, 1, 2)  # (time, row, column, channel) -> (time, channel, y, x)
    np.testing.assert_array_equal(field.values, joined.astype(np.float32))
    # every trip counted once each way: the totals balance over the joined series and trips
    # under way (cumulative outflow - inflow) never go negative
    totals = joined.sum(axis=(2, 3))
    under_way = np.cumsum(totals[:, 1] - totals[:, 0])
    assert under_way.min() >= 0 and under_way[-1] == 0
    assert field.attrs["trips"] == int(totals[:, 0].sum()) == 28_090_811
    assert field.attrs["trips_under_way_at_file_ends"] == f"{int(under_way[2783])} {int(under_way[3455])}"


def test_split_is_the_files_cut(field):
    assert defines_split("nytaxi")
    split = field["split"].values
    assert (split[:2784] == "train").all() and (split[2784:3456] == "val").all() and (split[3456:] == "test").all()
    times = pd.DatetimeIndex(field["time"].values)
    assert times[2784] == pd.Timestamp("2016-02-28") and times[3456] == pd.Timestamp("2016-03-13")


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "absent")) + ".*folder not found"):
        read(tmp_path / "absent")
    folder = copy_data(tmp_path)
    (folder / "flow_val.npz").unlink()
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_val.npz")) + ": file not found"):
        read(folder)


def test_unreadable_file_and_missing_array(tmp_path):
    folder = copy_data(tmp_path)
    raw = (folder / "flow_test.npz").read_bytes()
    (folder / "flow_test.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_test.npz")) + ": not a readable .npz"):
        read(folder)
    np.savez(folder / "flow_test.npz", data=np.zeros(3))
    with pytest.raises(DataFileError,
                       match=re.escape(str(folder / "flow_test.npz")) + r": no array 'flow' \(has: data\)"):
        read(folder)


@pytest.mark.parametrize("name,shape", [("flow_train.npz", (2783, 16, 12, 2)), ("flow_val.npz", (672, 12, 16, 2)),
                                        ("flow_test.npz", (864, 2, 16, 12))])
def test_wrong_shape_names_file(tmp_path, name, shape):
    folder = copy_data(tmp_path)
    flow = load(folder / name)
    rewrite(folder / name, flow[: shape[0]].reshape(shape) if shape[0] < len(flow) else flow.reshape(shape))
    expected = (FRAMES[name], 16, 12, 2)
    with pytest.raises(DataFileError, match=re.escape(f"{folder / name}: flow has shape {shape}, expected {expected}")):
        read(folder)


def test_nan_names_file_and_index(tmp_path):
    folder = copy_data(tmp_path)
    flow = load(folder / "flow_val.npz")
    flow[100, 3, 7, 1] = np.nan
    rewrite(folder / "flow_val.npz", flow)
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_val.npz")) +
                       r": flow has 1 non-finite value.*\(100, 3, 7, 1\)"):
        read(folder)


def test_negative_and_fractional_values_name_file(tmp_path):
    folder = copy_data(tmp_path)
    flow = load(folder / "flow_test.npz")
    flow[5, 0, 0, 0] = -1
    rewrite(folder / "flow_test.npz", flow)
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_test.npz")) +
                       r": flow has 1 negative value.*\(5, 0, 0, 0\)"):
        read(folder)
    flow[5, 0, 0, 0] = 0.5
    rewrite(folder / "flow_test.npz", flow)
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_test.npz")) + r": flow has 1 non-integer"):
        read(folder)


def test_swapped_channels_do_not_join(tmp_path):
    folder = copy_data(tmp_path)
    rewrite(folder / "flow_train.npz", load(folder / "flow_train.npz")[..., ::-1])
    with pytest.raises(DataFileError, match=re.escape(str(folder / "flow_train.npz")) +
                       r": at frame \d+ \(2016-01-.*more trips have ended than started.*do not join"):
        read(folder)


def test_files_out_of_order_do_not_join(tmp_path):
    """Validation's frames first (train cut to fit): the series would start with trips under way."""
    folder = copy_data(tmp_path)
    train, val = load(folder / "flow_train.npz"), load(folder / "flow_val.npz")
    rewrite(folder / "flow_train.npz", np.concatenate([val, train[: 2784 - 672]]))
    path = folder / "flow_train.npz"
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r": at frame 0 \(2016-01-01T00:00\) more trips"):
        read(folder)


def test_altered_count_breaks_the_trip_total(tmp_path):
    folder = copy_data(tmp_path)
    flow = load(folder / "flow_test.npz")
    cell = tuple(np.argwhere(flow[..., 0] > 0)[0])
    flow[(*cell, 0)] -= 1  # one trip fewer arriving
    rewrite(folder / "flow_test.npz", flow)
    with pytest.raises(DataFileError, match=re.escape(str(folder)) + r": total inflow and outflow .* differ by -1 "):
        read(folder)
    # a file from elsewhere in the series: also caught
    (tmp_path / "again").mkdir()
    folder = copy_data(tmp_path / "again")
    rewrite(folder / "flow_val.npz", load(folder / "flow_train.npz")[-672:])
    with pytest.raises(DataFileError, match=r"total inflow and outflow .* differ by"):
        read(folder)


@pytest.mark.parametrize("key,value", [("height", 12), ("width", 16)])
def test_wrong_grid_is_a_clear_error(key, value):
    with pytest.raises(ValueError, match=rf"{key} is {value}.*16 rows x 12 columns"):
        get_dataset("nytaxi")(config(DATA, **{key: value}), 0)


def test_config_schema():
    import jsonschema

    schema = dataset_config_schema("nytaxi")
    jsonschema.validate(config(DATA), schema)
    for bad in (config(""), config(DATA, split={"train": 0.7, "val": 0.1, "test": 0.2})):
        with pytest.raises(jsonschema.ValidationError):  # no split fractions: the files define the split
            jsonschema.validate(bad, schema)
    entry = config(DATA)
    del entry["source"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, schema)


@pytest.mark.parametrize("frames,windows", [(4, (2777, 665, 857)), (12, (2761, 649, 841))])
def test_nuwa_ingest_writes_a_series_with_windows_per_split(tmp_path, monkeypatch, field, frames, windows):
    """`nuwa ingest` of the proposed params entry (relative source, from the repository root)."""
    from nuwa.cli import main
    from nuwa.windows import WindowDataset, load_series

    params = yaml.safe_load(TINY_PARAMS.read_text())
    entry = config("../shared/data/traffic/NYTaxi", input_frames=frames, output_frames=frames)
    params["datasets"] = {"nytaxi": entry}
    params["grid"]["datasets"] = ["nytaxi"]
    params["ingest"] = {"scheduler": "threads"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(REPO)
    out = tmp_path / "nytaxi.nc"
    assert main(["ingest", "--params", str(tmp_path / "params.yaml"), "--dataset", "nytaxi", "--out", str(out)]) == 0

    series = load_series(out)
    assert series.name == "taxi_flow" and series.field.shape == (4320, 2, 16, 12)
    np.testing.assert_array_equal(series.field, field.values)
    counts = [int((series.split == SPLIT_CODES[name]).sum()) for name in ("train", "val", "test")]
    assert counts == [2784, 672, 864]
    assert (series.segment == 0).all()
    train = field.values[:2784].astype(np.float64)
    np.testing.assert_allclose(series.mean, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(series.std, train.std(axis=(0, 2, 3)), rtol=1e-5)
    assert series.data_range == 1518.0
    assert series.attrs["nuwa_kind"] == "nytaxi" and series.attrs["split_fractions"] == "defined by the dataset"
    lengths = tuple(len(WindowDataset(series, split, frames, frames, 1)) for split in ("train", "val", "test"))
    assert lengths == windows  # each split's frames - (input + output) + 1: no window crosses a file
