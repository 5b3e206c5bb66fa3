"""nycbike: the real NYCBike1 window files rebuilt into one checked hourly series."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.datasets.nycbike import FILES
from nuwa.ingest import SPLIT_CODES, ingest
from nuwa.io import DataFileError

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared/data/traffic/NYCBike1"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real NYCBike1 data folder not present at {DATA} (shared/data beside the repo)"
)


def config(source, **overrides) -> dict:
    entry = {
        "kind": "nycbike", "height": 16, "width": 8, "input_frames": 4, "output_frames": 4,
        "window_stride": 1, "patch_size": 4, "split": {"train": 0.7, "val": 0.1, "test": 0.2},
        "csi_thresholds": [5.0], "seed": 0, "source": str(source),
    }
    return entry | overrides


@pytest.fixture(scope="module")
def field():
    return get_dataset("nycbike")(config(DATA), 0)


@pytest.fixture(scope="module")
def raw():
    return {name: dict(np.load(DATA / name)) for name in FILES}


def copy_data(tmp_path: Path) -> Path:
    folder = tmp_path / "NYCBike1"
    folder.mkdir()
    for name in FILES:
        shutil.copy(DATA / name, folder / name)
        (folder / name).chmod(0o644)
    return folder


def rewrite(path: Path, **changes) -> None:
    arrays = dict(np.load(path)) | changes
    np.savez(path, **arrays)


def test_shape_coords_and_attrs(field):
    assert field.dims == ("time", "channel", "y", "x")
    assert field.shape == (1296, 2, 16, 8)
    assert field.dtype == np.float32
    assert list(field["channel"].values) == ["inflow", "outflow"]
    assert np.array_equal(field["time"].values, np.arange(1296))
    assert field["time"].attrs["units"] == "1" and "hours since the first frame" in field["time"].attrs["long_name"]
    assert field.attrs["units"] == "bikes per hour" and field.attrs["long_name"] == "bike flow"
    values = field.values
    assert (values >= 0).all() and np.array_equal(values, np.round(values))
    for value in field.attrs.values():  # NetCDF-safe attributes
        assert isinstance(value, (str, int, float, np.integer, np.floating))


def test_series_reproduces_every_window(field, raw):
    # cells in (time, channel, y, x) back to the files' (time, 128, 2), row-major 16 x 8
    series = field.values.transpose(0, 2, 3, 1).reshape(1296, 128, 2).astype(np.float64)
    start = 0
    checked = 0
    for name in FILES:
        x, y, offsets = raw[name]["x"], raw[name]["y"], raw[name]["x_offsets"].ravel()
        for i in range(len(x)):
            present = start + i
            for step, offset in enumerate(offsets):
                if present + offset >= 0:
                    np.testing.assert_array_equal(x[i, step], series[present + offset], err_msg=f"{name} x[{i}, {step}]")
                    checked += 1
            np.testing.assert_array_equal(y[i, 0], series[present + 1], err_msg=f"{name} y[{i}]")
        start += len(x)
    assert start + 1 == 1296
    assert checked > 1295 * 15


def test_layout_is_row_major_16_by_8():
    adjacency = np.load(DATA / "adj_mx.npz")["adj_mx"]
    rows, cols = np.divmod(np.argwhere(adjacency > 0), 8)
    # every adjacency edge links grid neighbours (8-neighbourhood) under the row-major 16 x 8 reading
    assert (np.abs(rows[:, 0] - rows[:, 1]) <= 1).all() and (np.abs(cols[:, 0] - cols[:, 1]) <= 1).all()


def test_altered_overlap_names_file_and_index(tmp_path):
    folder = copy_data(tmp_path)
    y = np.load(folder / "val.npz")["y"]
    y[10, 0, 37, 1] += 1
    rewrite(folder / "val.npz", y=y)
    with pytest.raises(DataFileError, match=r"val\.npz.*y\[10\]"):
        get_dataset("nycbike")(config(folder), 0)


def test_broken_continuation_is_caught(tmp_path):
    folder = copy_data(tmp_path)
    x = np.load(folder / "test.npz")["x"]
    x[0, -1, 5, 0] += 3
    rewrite(folder / "test.npz", x=x)
    with pytest.raises(DataFileError, match=r"test\.npz.*window 0.*val\.npz"):
        get_dataset("nycbike")(config(folder), 0)


def test_altered_lagged_input_names_file_and_index(tmp_path):
    folder = copy_data(tmp_path)
    x = np.load(folder / "test.npz")["x"]
    x[200, 0, 64, 1] += 1  # offset -73 of test window 200
    rewrite(folder / "test.npz", x=x)
    with pytest.raises(DataFileError, match=r"test\.npz.*x\[200\] at offset -73"):
        get_dataset("nycbike")(config(folder), 0)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "absent"))):
        get_dataset("nycbike")(config(tmp_path / "absent"), 0)
    folder = copy_data(tmp_path)
    (folder / "test.npz").unlink()
    with pytest.raises(DataFileError, match=re.escape(str(folder / "test.npz")) + ".*not found"):
        get_dataset("nycbike")(config(folder), 0)


def test_wrong_shape_names_path(tmp_path):
    folder = copy_data(tmp_path)
    x = np.load(folder / "val.npz")["x"]
    rewrite(folder / "val.npz", x=x.reshape(431, 19, 64, 4))
    with pytest.raises(DataFileError, match=re.escape(str(folder / "val.npz")) + r".*x has shape \(431, 19, 64, 4\)"):
        get_dataset("nycbike")(config(folder), 0)


def test_relative_source_resolved_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    field = get_dataset("nycbike")(config("../shared/data/traffic/NYCBike1"), 0)
    assert field.shape == (1296, 2, 16, 8)
    assert field.attrs["source"] == "../shared/data/traffic/NYCBike1"  # as written, not this machine's path


@pytest.mark.parametrize("key,value", [("height", 8), ("width", 16)])
def test_wrong_grid_is_a_clear_error(key, value):
    with pytest.raises(ValueError, match=rf"{key} is {value}.*16 rows x 8 columns"):
        get_dataset("nycbike")(config(DATA, **{key: value}), 0)


def test_config_schema():
    import jsonschema

    schema = dataset_config_schema("nycbike")
    jsonschema.validate(config(DATA), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config(""), schema)
    entry = config(DATA)
    del entry["source"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, schema)


def test_ingest(field):
    processed = ingest("nycbike", config(DATA))
    values = processed["bike_flow"]
    assert values.dims == ("time", "channel", "y", "x") and values.shape == (1296, 2, 16, 8)
    np.testing.assert_array_equal(values.values, field.values)
    split = processed["split"].values
    counts = [int((split == SPLIT_CODES[name]).sum()) for name in ("train", "val", "test")]
    assert counts == [907, 129, 260]
    train = field.values[:907].astype(np.float64)
    np.testing.assert_allclose(processed["norm_mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(processed["norm_std"].values, train.std(axis=(0, 2, 3)), rtol=1e-5)
    assert (processed["norm_std"].values > 0).all()
    assert processed.attrs["nuwa_kind"] == "nycbike"
