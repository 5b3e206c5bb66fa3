"""radar_pool: the shipped radar events pooled into one dataset, checked against each member's own ingest."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nuwa.datasets import dataset_config_schema, get_dataset, source_status
from nuwa.ingest import SPLIT_CODES, SPLITS, ingest
from nuwa.io import DataFileError, open_netcdf, write_netcdf
from nuwa.windows import WindowDataset, load_series, window_starts

DATA = Path(__file__).resolve().parents[2] / "shared/data/radar"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real radar data folder not present at {DATA} (shared/data beside the repo)"
)

COMMON = {"height": 32, "width": 32, "input_frames": 6, "output_frames": 6, "window_stride": 1, "patch_size": 4,
          "csi_thresholds": [0.5, 2.0, 5.0], "seed": 0}
SPLIT = {"train": 0.4, "val": 0.3, "test": 0.3}
KNMI = {"kind": "radar_knmi", "source": "KNMI", "crop": [248, 504, 240, 496], "downsample": 8,
        "quantity": "rain_rate", "missing": "zero"}
MCH = {"kind": "radar_mch", "source": str(DATA / "mch"), "crop": [200, 456, 320, 576], "downsample": 8}  # absolute
BOM = {"kind": "radar_bom", "source": "bom", "pattern": "**/*.prcp-cscn.nc", "crop": [216, 472, 120, 376],
       "downsample": 8}
# frames per segment (KNMI: one event; MeteoSwiss: three) and the per-segment blocks at 0.4 / 0.3 / 0.3
SEGMENT_FRAMES = [92, 40, 40, 40]
SEGMENT_BLOCKS = [(36, 27, 29), (16, 12, 12), (16, 12, 12), (16, 12, 12)]
WINDOWS = {"train": 25 + 3 * 5, "val": 16 + 3 * 1, "test": 18 + 3 * 1}  # 6 -> 6, stride 1


def pool_config(*members, **overrides) -> dict:
    return {"kind": "radar_pool", "source": str(DATA), **COMMON, "split": dict(SPLIT),
            "members": [copy.deepcopy(m) for m in (members or (KNMI, MCH))]} | overrides


def member_config(member: dict) -> dict:
    """The member as a stand-alone entry of its own kind (source made absolute)."""
    entry = {**COMMON, **member, "split": dict(SPLIT)}
    source = Path(member["source"])
    entry["source"] = str(source if source.is_absolute() else DATA / source)
    return entry


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "radar_pool.nc"
    write_netcdf(ingest("radar_pool", pool_config()), path)
    return open_netcdf(path), load_series(path)


@pytest.fixture(scope="module")
def members():
    """Each member's own ingest (its kind, its entry), in memory."""
    return [ingest(member["kind"], member_config(member)).load() for member in (KNMI, MCH)]


def test_pooled_frames_are_each_members_own_ingest_in_order(pooled, members):
    dataset, series = pooled
    values = dataset["rain_rate"].values
    assert values.shape == (sum(SEGMENT_FRAMES), 1, 32, 32) and values.dtype == np.float32
    start = 0
    for index, own in enumerate(members):
        n = own.sizes["time"]
        part = values[start:start + n]
        assert part.tobytes() == own["rain_rate"].values.tobytes(), f"member {index}"
        np.testing.assert_array_equal(dataset["time"].values[start:start + n], own["time"].values)
        np.testing.assert_array_equal(dataset["missing_fraction"].values[start:start + n], own["missing_fraction"].values)
        np.testing.assert_array_equal(dataset[f"member_{index}_missing_frequency"].values, own["missing_frequency"].values)
        np.testing.assert_array_equal(dataset[f"member_{index}_y"].values, own["y"].values)
        assert (dataset["member"].values[start:start + n] == index).all()
        start += n
    assert start == len(values)
    # the pooled missing frequency: over all frames
    expected = sum(own["missing_frequency"].values * own.sizes["time"] for own in members) / len(values)
    np.testing.assert_allclose(dataset["missing_frequency"].values, expected, rtol=1e-12)
    assert dataset["missing_frequency"].values.max() > 0  # KNMI's crop touches the radar disc's edge
    attrs = dataset["rain_rate"].attrs
    assert attrs["units"] == "mm h-1" and attrs["members"] == 2 and attrs["member_kinds"] == "radar_knmi radar_mch"
    assert attrs["time_step_minutes"] == 5 and attrs["grid_spacing_m"] == 8000.0
    assert attrs["frames_with_missing"] == int((dataset["missing_fraction"].values > 0).sum())
    assert np.allclose(series.field, values)


def test_segments_and_splits_per_segment(pooled):
    dataset, series = pooled
    segment = dataset["segment"].values
    assert segment.tolist() == sum(([s] * n for s, n in enumerate(SEGMENT_FRAMES)), [])
    assert dataset.attrs["segments"] == 4
    split = dataset["split"].values
    for seg, blocks in enumerate(SEGMENT_BLOCKS):
        flags = split[segment == seg]
        expected = np.repeat([SPLIT_CODES[s] for s in SPLITS], blocks)
        assert flags.tolist() == expected.tolist(), seg  # train, then val, then test, in every segment
    attrs = dataset["rain_rate"].attrs
    assert attrs["segment_member"] == "0 1 1 1"
    sources = attrs["segment_source"].split("; ")
    assert len(sources) == 4
    assert sources[0].startswith(f"0: member 0 radar_knmi {DATA / 'KNMI'} 2010-08-26T00:00:00 to 2010-08-26T07:35:00")
    assert sources[2].startswith(f"2: member 1 radar_mch {DATA / 'mch'} 2016-07-11T20:45:00")
    assert "(train 16, val 12, test 12)" in sources[3]
    assert "per segment" in attrs["split_method"] and attrs["member_0"].startswith("radar_knmi: source")
    # every event holds rain in every split block
    values = dataset["rain_rate"].values
    for seg in range(4):
        for name in SPLITS:
            assert values[(segment == seg) & (split == SPLIT_CODES[name])].max() > 1.0, (seg, name)


def test_windows_per_split_never_cross_a_segment(pooled):
    _, series = pooled
    for name in SPLITS:
        windows = WindowDataset(series, name, 6, 6, 1)
        assert len(windows) == WINDOWS[name], name
        for start in windows.starts:
            assert len(set(series.segment[start:start + 12])) == 1
            assert (series.split[start:start + 12] == SPLIT_CODES[name]).all()
        # every event contributes windows to every split
        assert set(series.segment[windows.starts]) == {0, 1, 2, 3}, name
    assert len(window_starts(series.split, "train", 12, 1, series.segment)) == 40


def test_mixed_time_steps_and_pixel_sizes_are_refused_unless_allowed():
    generate = get_dataset("radar_pool")
    with pytest.raises(ValueError, match=re.escape(f"radar_pool member 2 (radar_bom, source {DATA / 'bom'}): time step "
                                                   "6 min differs from member 0's 5 min")):
        generate(pool_config(KNMI, MCH, BOM), 0)
    with pytest.raises(ValueError, match=r"radar_pool member 1 \(radar_bom.*output pixel size 4000 m differs from "
                                         r"member 0's 8000 m"):
        generate(pool_config(KNMI, BOM, allow_mixed_time_steps=True), 0)
    field = generate(pool_config(KNMI, MCH, BOM, allow_mixed_time_steps=True, allow_mixed_grid_spacing=True), 0)
    assert field.shape == (92 + 120 + 61, 1, 32, 32)
    assert field["frame_step_minutes"].values.tolist() == [5] * 212 + [6] * 61
    assert "time_step_minutes" not in field.attrs and field.attrs["time_steps_minutes"] == "5, 6"
    assert field.attrs["grid_spacings_m"] == "8000, 4000" and field.attrs["segment_member"] == "0 1 1 1 2"
    assert [int((field["segment"].values == s).sum()) for s in range(5)] == SEGMENT_FRAMES + [61]
    assert field.attrs["allow_mixed_time_steps"] == 1


def test_member_with_other_shape_or_quantity_is_named():
    generate = get_dataset("radar_pool")
    with pytest.raises(ValueError, match=re.escape(f"radar_pool member 1 (radar_mch, source {DATA / 'mch'}): "
                                                   "radar_mch: config height is 32") + ".*64 x 64"):
        generate(pool_config(KNMI, {**MCH, "downsample": 4}), 0)
    with pytest.raises(ValueError, match=r"radar_pool member 1 \(radar_mch.*quantity 'accumulation' differs from "
                                         r"member 0's 'rain_rate'"):
        generate(pool_config(KNMI, {**MCH, "quantity": "accumulation"}), 0)
    # same quantity and units, different floor (Z-R relation)
    with pytest.raises(ValueError, match=r"radar_pool member 1 \(radar_mch.*fill value 4.997 dBZ differs from member 0's 2.01"):
        generate(pool_config({**KNMI, "quantity": "reflectivity"}, {**MCH, "quantity": "reflectivity"}), 0)


def test_bad_members_are_named(tmp_path):
    generate = get_dataset("radar_pool")
    with pytest.raises(ValueError, match=r"radar_pool member 1 \(radar_knmi.*shares 92 time step\(s\) "
                                         r"\(first 2010-08-26T00:00:00\) with member 0"):
        generate(pool_config(KNMI, {**KNMI, "source": str(DATA / "KNMI")}), 0)
    with pytest.raises(DataFileError, match=re.escape(f"radar_pool member 0 (radar_knmi, source {tmp_path / 'KNMI'})")
                       + ".*source folder not found"):
        generate(pool_config(KNMI, source=str(tmp_path)), 0)
    with pytest.raises(ValueError, match=r"radar_pool member 1 \(radar_mch.*unknown key\(s\) \['height'\]"):
        generate(pool_config(KNMI, {**MCH, "height": 32}), 0)
    with pytest.raises(ValueError, match=r"radar_pool member 0 \(radar_sevir.*kind must be one of"):
        generate(pool_config({**KNMI, "kind": "radar_sevir"}), 0)


def test_config_schema_and_source_status():
    import jsonschema

    schema = dataset_config_schema("radar_pool")
    jsonschema.validate(pool_config(), schema)
    for bad in ({"members": []}, {"members": [{**KNMI, "height": 32}]}, {"members": [{**KNMI, "kind": "kth"}]},
                {"members": [{"kind": "radar_knmi"}]}, {"allow_mixed_time_steps": "yes"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(pool_config(**bad), schema)
    entry = pool_config()
    del entry["split"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, schema)
    assert source_status(pool_config()) == (str(DATA), True)


def test_cli_ingest_of_a_params_entry(tmp_path):
    from conftest import TINY_PARAMS, tool_env

    from nuwa.config import ParamsError, validate_params

    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"]["radar_pool"] = pool_config()
    validate_params(copy.deepcopy(params))
    bad = copy.deepcopy(params)
    bad["datasets"]["radar_pool"]["members"][1]["quantity"] = "dbz"
    with pytest.raises(ParamsError, match=r"datasets\.radar_pool\.members\.1\.quantity"):
        validate_params(bad)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "radar_pool.nc"
    result = subprocess.run([sys.executable, "-m", "nuwa", "ingest", "--params", str(tmp_path / "params.yaml"),
                             "--dataset", "radar_pool", "--out", str(out)], capture_output=True, text=True,
                            env=tool_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    series = load_series(out)
    assert series.field.shape == (212, 1, 32, 32) and series.attrs["nuwa_kind"] == "radar_pool"
    assert len(np.unique(series.segment)) == 4
    assert {name: len(WindowDataset(series, name, 6, 6, 1)) for name in SPLITS} == WINDOWS
