"""radar_knmi, radar_mch, radar_bom: real radar composites read with pysteps, checked independently.

Every check on values re-reads the files with the pysteps importer and redoes crop, unit
conversion and block mean here with plain numpy (nanmean over reshaped blocks), never with
the reader's own code.
"""

import re
import shutil
import warnings
from datetime import datetime
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from nuwa.datasets import dataset_config_schema, get_dataset
from nuwa.ingest import SPLIT_CODES, ingest
from nuwa.io import DataFileError, open_netcdf, write_netcdf
from nuwa.windows import window_starts

DATA = Path(__file__).resolve().parents[2] / "shared/data/radar"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real radar data folder not present at {DATA} (shared/data beside the repo)"
)

KINDS = ("radar_knmi", "radar_mch", "radar_bom")
COMMON = {"height": 32, "width": 32, "input_frames": 6, "output_frames": 6, "window_stride": 1, "patch_size": 4,
          "csi_thresholds": [0.5, 2.0, 5.0], "seed": 0, "downsample": 8, "quantity": "rain_rate", "missing": "zero"}
ENTRIES = {  # the params.yaml entries (absolute source here)
    "radar_knmi": {"source": DATA / "KNMI", "crop": [248, 504, 240, 496],
                   "split": {"train": 0.6, "val": 0.15, "test": 0.25}},
    "radar_mch": {"source": DATA / "mch", "crop": [200, 456, 320, 576],
                  "split": {"train": 0.7, "val": 0.1, "test": 0.2}},
    "radar_bom": {"source": DATA / "bom", "pattern": "**/*.prcp-cscn.nc", "crop": [216, 472, 120, 376],
                  "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
}
# facts about the sample files, from their names
EXPECTED = {
    "radar_knmi": {"frames": 92, "step": 5, "segments": [("2010-08-26T00:00", "2010-08-26T07:35")]},
    "radar_mch": {"frames": 120, "step": 5, "segments": [("2015-05-15T15:45", "2015-05-15T19:00"),
                                                          ("2016-07-11T20:45", "2016-07-12T00:00"),
                                                          ("2017-01-31T09:45", "2017-01-31T13:00")]},
    "radar_bom": {"frames": 61, "step": 6, "segments": [("2018-06-16T10:00", "2018-06-16T16:00")]},
}


def config(kind, **overrides) -> dict:
    entry = {"kind": kind, **COMMON, **ENTRIES[kind]}
    entry["source"] = str(entry["source"])
    return entry | overrides


# -- independent reference ----------------------------------------------------------------------

def file_for(kind: str, time: np.datetime64) -> Path:
    """The file of a time step, found from the time alone (not through the reader)."""
    t = datetime.fromisoformat(str(time)[:19])
    if kind == "radar_knmi":
        return DATA / "KNMI" / f"{t:%Y/%m}" / f"RAD_NL25_RAP_5min_{t:%Y%m%d%H%M}.h5"
    if kind == "radar_mch":
        (path,) = DATA.glob(f"mch/*/AQC{t:%y%j%H%M}?_00005.801.gif")
        return path
    (path,) = DATA.glob(f"bom/*/*/{t:%Y/%m/%d}/*_{t:%Y%m%d_%H%M%S}.*.nc")
    return path


def importer_read(kind: str, path: Path) -> tuple[np.ndarray, float]:
    """(depth in mm with NaN where missing, accumulation minutes) straight from pysteps."""
    from pysteps.io import importers

    if kind == "radar_knmi":
        precip, _, metadata = importers.import_knmi_hdf5(str(path))
    elif kind == "radar_mch":
        precip, _, metadata = importers.import_mch_gif(str(path), product="AQC", unit="mm", accutime=5.0)
    else:
        precip, _, metadata = importers.import_bom_rf3(str(path))
    assert metadata["unit"] == "mm"
    return np.array(np.ma.getdata(precip), dtype=np.float64), float(metadata["accutime"])


def reference_frame(kind: str, path: Path, crop, factor: int, quantity: str = "rain_rate") -> np.ndarray:
    precip, accutime = importer_read(kind, path)
    r0, r1, c0, c1 = crop
    depth = precip[r0:r1, c0:c1]
    depth = np.where(np.isnan(depth) | (depth < 0), np.nan, depth)
    if quantity == "accumulation":
        values, fill = depth, 0.0
    else:
        rate = depth * 60.0 / accutime
        if quantity == "rain_rate":
            values, fill = rate, 0.0
        else:  # Z = a R^b; below 0.1 mm/h: pysteps' floor, threshold in dBZ - 5
            a, b = (316.0, 1.5) if kind == "radar_mch" else (200.0, 1.6)
            fill = 10 * np.log10(a * 0.1 ** b) - 5
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(rate < 0.1, fill, 10 * np.log10(a * rate ** b))
            values = np.where(np.isnan(rate), np.nan, values)
    h, w = (r1 - r0) // factor, (c1 - c0) // factor
    blocks = values.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, factor * factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        mean = np.nanmean(blocks, axis=-1)
    return np.where(np.isnan(mean), fill, mean)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fields():
    return {kind: get_dataset(kind)(config(kind), 0) for kind in KINDS}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """ingest -> NetCDF -> read back, per kind."""
    folder = tmp_path_factory.mktemp("processed")
    out = {}
    for kind in KINDS:
        path = folder / f"{kind}.nc"
        write_netcdf(ingest(kind, config(kind)), path)
        out[kind] = open_netcdf(path, variables=("rain_rate", "split", "segment", "missing_fraction"))
    return out


def copy_files(kind: str, tmp_path: Path, count: int = 3) -> tuple[Path, list[Path]]:
    sources = {"radar_knmi": "KNMI/2010/08/*.h5", "radar_mch": "mch/20150515/*.gif",
               "radar_bom": "bom/prcp-cscn/2/2018/06/16/*.nc"}
    folder = tmp_path / kind
    folder.mkdir()
    copies = []
    for path in sorted(DATA.glob(sources[kind]))[:count]:
        copies.append(folder / path.name)
        shutil.copy(path, copies[-1])
        copies[-1].chmod(0o644)
    return folder, copies


def small_config(kind: str, folder: Path, **overrides) -> dict:
    return config(kind, source=str(folder), **overrides)


# -- shape, time, segments ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_attrs_and_laziness(fields, kind):
    field = fields[kind]
    n = EXPECTED[kind]["frames"]
    assert field.dims == ("time", "channel", "y", "x")
    assert field.shape == (n, 1, 32, 32)
    assert field.dtype == np.float32
    assert list(field["channel"].values) == ["rain_rate"]
    assert field.attrs["units"] == "mm h-1" and field.attrs["long_name"] == "rain rate"
    # lazy: one dask chunk per file, nothing read for the values yet
    assert isinstance(field.data, da.Array) and field.data.numblocks[0] == n == field.attrs["n_files"]
    for key, value in field.attrs.items():
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool), key
    assert field.attrs["crop"].startswith(str(ENTRIES[kind]["crop"]))
    assert field.attrs["downsample"] == 8 and field.attrs["missing"] == "zero"
    assert field["y"].attrs["units"] == "m" and field["x"].attrs["units"] == "m"
    # pixel centres of 8 x 8 blocks: 8 km (BoM 4 km) apart, y decreasing (row 0 = north)
    spacing = 8 * (500.0 if kind == "radar_bom" else 1000.0)
    np.testing.assert_allclose(np.diff(field["x"].values), spacing)
    np.testing.assert_allclose(np.diff(field["y"].values), -spacing)


@pytest.mark.parametrize("kind", KINDS)
def test_time_step_and_segments(fields, kind):
    field = fields[kind]
    times = field["time"].values
    assert times.dtype == np.dtype("datetime64[ns]")
    segment = field["segment"].values
    expected = EXPECTED[kind]["segments"]
    assert field.attrs["segments"] == len(expected) == len(np.unique(segment))
    step = np.timedelta64(EXPECTED[kind]["step"], "m")
    assert field.attrs["time_step_minutes"] == EXPECTED[kind]["step"]
    for seg, (first, last) in enumerate(expected):
        inside = times[segment == seg]
        assert str(inside[0])[:16] == first and str(inside[-1])[:16] == last
        assert (np.diff(inside) == step).all()
    assert field.attrs["n_time_gaps"] == len(expected) - 1
    if kind == "radar_mch":
        assert [int((segment == s).sum()) for s in range(3)] == [40, 40, 40]
        assert "2015-05-15T19:00:00 -> 2016-07-11T20:45:00" in field.attrs["time_gaps"]


# -- missing data -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_missing_fraction_counts_importer_nans(fields, kind):
    field = fields[kind]
    fraction = field["missing_fraction"].values
    r0, r1, c0, c1 = ENTRIES[kind]["crop"]
    for t in sorted({0, int(np.argmax(fraction)), len(fraction) - 1}):
        precip, _ = importer_read(kind, file_for(kind, field["time"].values[t]))
        crop = precip[r0:r1, c0:c1]
        count = int((np.isnan(crop) | (crop < 0)).sum())
        assert fraction[t] == pytest.approx(count / crop.size, abs=0), t
        full = (np.isnan(precip) | (precip < 0)).mean()
        if kind == "radar_knmi":  # the composite's mask is the same in every file
            assert field.attrs["missing_fraction_full_grid"] == pytest.approx(full, rel=1e-12)
    assert field.attrs["missing_fraction_mean"] == pytest.approx(fraction.mean())
    assert field.attrs["frames_with_missing"] == int((fraction > 0).sum())
    if kind == "radar_knmi":
        assert field.attrs["missing_fraction_full_grid"] > 0.7 and 0 < fraction.max() < 0.01


def test_missing_frequency_mch(fields):
    """MeteoSwiss' no-data mask changes from frame to frame: the block frequency over all 120."""
    field = fields["radar_mch"]
    r0, r1, c0, c1 = ENTRIES["radar_mch"]["crop"]
    counts = np.zeros((32, 32))
    for time in field["time"].values:
        precip, _ = importer_read("radar_mch", file_for("radar_mch", time))
        missing = np.isnan(precip[r0:r1, c0:c1])
        counts += missing.reshape(32, 8, 32, 8).any(axis=(1, 3))
    np.testing.assert_allclose(field["missing_frequency"].values, counts / 120)
    assert counts.sum() > 0 and field.attrs["frames_with_missing"] == 40


def test_bom_c10_negative_depths_are_missing():
    """prcp-c10 (the radar_bom default pattern): 10-min steps, and raw code -2 (-0.1 mm) counted as missing."""
    field = get_dataset("radar_bom")({"kind": "radar_bom", "source": str(DATA / "bom"), "downsample": 16,
                                      "height": 32, "width": 32}, 0)
    assert field.shape == (144, 1, 32, 32) and field.attrs["time_step_minutes"] == 10
    assert field.attrs["negative_pixels"] > 0
    fraction = field["missing_fraction"].values
    checked_negative = False
    for t in np.flatnonzero(fraction > 0)[:4]:
        precip, accutime = importer_read("radar_bom", file_for("radar_bom", field["time"].values[t]))
        assert accutime == 10
        checked_negative |= bool((precip < 0).any())
        assert fraction[t] == (np.isnan(precip) | (precip < 0)).sum() / precip.size
    assert checked_negative
    t = int(np.flatnonzero(fraction > 0)[0])
    expected = reference_frame("radar_bom", file_for("radar_bom", field["time"].values[t]), (0, 512, 0, 512), 16)
    np.testing.assert_allclose(field.isel(time=t, channel=0).values, expected, rtol=1e-6, atol=1e-6)


# -- values: the ingested NetCDF against an independent read --------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_window_from_netcdf_equals_independent_read(processed, kind):
    dataset = processed[kind]
    values = dataset["rain_rate"]
    assert values.shape == (EXPECTED[kind]["frames"], 1, 32, 32) and np.isfinite(values.values).all()
    assert values.attrs["units"] == "mm h-1"
    starts = window_starts(dataset["split"].values, "test", 12, 1, dataset["segment"].values)
    start = int(starts[0])
    for t in range(start, start + 12):
        expected = reference_frame(kind, file_for(kind, dataset["time"].values[t]), ENTRIES[kind]["crop"], 8)
        np.testing.assert_allclose(values.values[t, 0], expected, rtol=1e-6, atol=1e-6, err_msg=f"{kind} frame {t}")
    assert values.values[start:start + 12].max() > 1.0  # it rains in the window


@pytest.mark.parametrize("kind", KINDS)
def test_every_split_has_windows(processed, kind):
    dataset = processed[kind]
    entry = config(kind)
    length = entry["input_frames"] + entry["output_frames"]
    segment = dataset["segment"].values
    assert len(np.unique(segment)) == len(EXPECTED[kind]["segments"])
    for split in SPLIT_CODES:
        starts = window_starts(dataset["split"].values, split, length, entry["window_stride"], segment)
        assert len(starts) >= 1, split
        for start in starts:  # no window crosses a segment (MeteoSwiss events)
            assert len(set(segment[start:start + length])) == 1
    # the processed file keeps the missing-data record
    assert "missing_frequency" in dataset.variables and dataset.attrs["nuwa_kind"] == kind


def test_reflectivity_and_accumulation(fields):
    knmi = get_dataset("radar_knmi")(config("radar_knmi", quantity="reflectivity"), 0)
    assert knmi.attrs["units"] == "dBZ" and list(knmi["channel"].values) == ["reflectivity"]
    floor = 10 * np.log10(200 * 0.1 ** 1.6) - 5
    assert knmi.attrs["reflectivity_floor_dbz"] == pytest.approx(floor) == knmi.attrs["missing_fill_value"]
    for t in (0, 50):
        expected = reference_frame("radar_knmi", file_for("radar_knmi", knmi["time"].values[t]),
                                   ENTRIES["radar_knmi"]["crop"], 8, "reflectivity")
        np.testing.assert_allclose(knmi.isel(time=t, channel=0).values, expected, rtol=1e-5, atol=1e-4)
    assert knmi.isel(time=0).values.min() == pytest.approx(floor)
    mch = get_dataset("radar_mch")(config("radar_mch", quantity="accumulation"), 0)
    assert mch.attrs["units"] == "mm"
    expected = reference_frame("radar_mch", file_for("radar_mch", mch["time"].values[60]),
                               ENTRIES["radar_mch"]["crop"], 8, "accumulation")
    np.testing.assert_allclose(mch.isel(time=60, channel=0).values, expected, rtol=1e-6, atol=1e-7)
    # 5-min depth x 12 = rain rate
    np.testing.assert_allclose(fields["radar_mch"].isel(time=60, channel=0).values, expected * 12, rtol=1e-5, atol=1e-6)


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_absent_folder(tmp_path, kind):
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path)) + ".*no files match pattern"):
        get_dataset(kind)(small_config(kind, tmp_path), 0)
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "absent")) + ".*not found"):
        get_dataset(kind)(small_config(kind, tmp_path / "absent"), 0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file_is_named(tmp_path, kind, damage):
    folder, copies = copy_files(kind, tmp_path)
    victim = copies[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a radar file " * 64)
    with pytest.raises(DataFileError, match=re.escape(str(victim)) + ".*not a readable"):
        get_dataset(kind)(small_config(kind, folder), 0)


def test_crop_errors_and_grid_mismatch(tmp_path):
    folder, _ = copy_files("radar_knmi", tmp_path)
    generate = get_dataset("radar_knmi")
    with pytest.raises(ValueError, match=r"crop \[600, 856, 240, 496\] is outside the source grid of 765 x 700"):
        generate(small_config("radar_knmi", folder, crop=[600, 856, 240, 496]), 0)
    with pytest.raises(ValueError, match=r"crop \[0, 100, 0, 96\] gives 100 x 96 pixels, not a multiple of downsample 8"):
        generate(small_config("radar_knmi", folder, crop=[0, 100, 0, 96]), 0)
    with pytest.raises(ValueError, match=r"height is 64.*height x width = 32 x 32"):
        generate(small_config("radar_knmi", folder, height=64), 0)
    with pytest.raises(ValueError, match=r"width is 16.*256 x 256 source pixels.*32 x 32"):
        generate(small_config("radar_knmi", folder, width=16), 0)
    # the full grid: 765 x 700 / 5 = 153 x 140
    field = generate(small_config("radar_knmi", folder, crop=None, downsample=5, height=153, width=140), 0)
    assert field.shape == (3, 1, 153, 140) and "(full grid)" in field.attrs["crop"]
    assert field.attrs["missing_fraction_mean"] == pytest.approx(field.attrs["missing_fraction_full_grid"])


def test_time_errors(tmp_path):
    folder, copies = copy_files("radar_knmi", tmp_path)
    generate = get_dataset("radar_knmi")
    with pytest.raises(DataFileError, match="not a multiple of the time step 7"):
        generate(small_config("radar_knmi", folder, time_step_minutes=7), 0)
    (folder / "again").mkdir()
    duplicate = folder / "again" / copies[0].name
    shutil.copy(copies[0], duplicate)
    with pytest.raises(DataFileError, match=re.escape(str(copies[0])) + " and " + re.escape(str(duplicate)) + ": both have time"):
        generate(small_config("radar_knmi", folder), 0)
    duplicate.unlink()
    odd = folder / "RAD_NL25_RAP_5min_2010-08-26.h5"
    shutil.copy(copies[0], odd)
    with pytest.raises(DataFileError, match=re.escape(str(odd)) + ".*no timestamp matching"):
        generate(small_config("radar_knmi", folder), 0)


def test_bom_products_cannot_mix(tmp_path):
    folder = tmp_path / "bom"
    folder.mkdir()
    for pattern in ("prcp-cscn/2/2018/06/16/*.nc", "prcp-c10/66/2020/10/31/*.nc"):
        for path in sorted(DATA.glob("bom/" + pattern))[:2]:
            shutil.copy(path, folder / path.name)
    with pytest.raises(DataFileError, match=r"66_20201031_000000\.prcp-c10\.nc: grid differs from the first file .*same shape 512x512"):
        get_dataset("radar_bom")(small_config("radar_bom", folder, pattern="*.nc"), 0)


def test_config_schema():
    import jsonschema

    for kind in KINDS:
        schema = dataset_config_schema(kind)
        jsonschema.validate(config(kind), schema)
        for bad in ({"quantity": "dbz"}, {"missing": "nan"}, {"crop": [0, 1, 2]}, {"downsample": 0}, {"source": ""}):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(config(kind, **bad), schema)
        entry = config(kind)
        del entry["source"]
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(entry, schema)
