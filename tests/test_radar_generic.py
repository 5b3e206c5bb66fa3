"""kind radar: any pysteps importer, on real radar files from other services (tests/data/foreign_radar).

Files nobody on this project wrote (see tests/data/foreign_radar/README.md): the Finnish FMI
reflectivity composite (PGM, dBZ, four 5-min files), the European OPERA rain-rate composite
(ODIM HDF5, one file) and a MeteoSwiss RFO rain-rate composite (ODIM HDF5, one file, from Py-ART's
MeteoSwiss fork). Every check on values re-reads the file with the pysteps importer and redoes
crop, conversion (plain numpy formulas: Z = 10^(dBZ/10), R = (Z/a)^(1/b)) and block mean here,
never with the reader's own code. The presets (radar_knmi, radar_mch, radar_bom) are checked to
equal explicit ``kind: radar`` entries on the shipped events.
"""

import copy
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from nuwa.datasets import dataset_config_schema, get_dataset, with_defaults
from nuwa.ingest import ingest
from nuwa.io import DataFileError, open_netcdf, write_netcdf

FOREIGN = Path(__file__).resolve().parent / "data" / "foreign_radar"
FMI = FOREIGN / "fmi_pgm"
OPERA = FOREIGN / "opera_odim" / "T_PAAH21_C_EUOC_20180824234500.hdf"
RFO = FOREIGN / "meteoswiss_rfo" / "RFO_example_h5_grid.h5"
SHIPPED = Path(__file__).resolve().parents[2] / "shared/data/radar"

FMI_ENTRY = {"kind": "radar", "importer": "import_fmi_pgm", "importer_kwargs": {"gzipped": True},
             "source": str(FMI), "pattern": "*_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz",
             "timestamp_format": "%Y%m%d%H%M", "crop": [384, 640, 192, 448], "downsample": 8,
             "quantity": "rain_rate", "missing": "zero", "height": 32, "width": 32}
OPERA_ENTRY = {"kind": "radar", "importer": "import_odim_hdf5", "importer_kwargs": {"qty": "RATE"},
               "source": str(OPERA.parent), "pattern": "T_PAAH21_C_EUOC_*.hdf", "timestamp_format": "%Y%m%d%H%M%S",
               "crop": [128, 640, 896, 1408], "downsample": 16, "quantity": "rain_rate", "missing": "zero",
               "height": 32, "width": 32}
FMI_ZR = (223.0, 1.53)  # pysteps' import_fmi_pgm metadata


def generate(entry: dict):
    return get_dataset(entry["kind"])(with_defaults(copy.deepcopy(entry)), 0)


# -- independent reference ----------------------------------------------------------------------

def fmi_dbz(path: Path) -> np.ndarray:
    from pysteps.io.importers import import_fmi_pgm

    dbz, _, metadata = import_fmi_pgm(str(path), gzipped=True)
    assert metadata["unit"] == "dBZ" and metadata["transform"] == "dB" and metadata["yorigin"] == "upper"
    return np.asarray(dbz, dtype=np.float64)


def odim_rate(path: Path, importer: str = "import_odim_hdf5") -> tuple[np.ndarray, dict]:
    from pysteps.io import importers

    rate, _, metadata = getattr(importers, importer)(str(path), qty="RATE")
    assert metadata["unit"] == "mm/h" and metadata["transform"] is None
    return np.asarray(rate, dtype=np.float64), metadata


def dbz_threshold(a: float, b: float) -> float:
    return 10 * np.log10(a * 0.1 ** b)  # the reflectivity of 0.1 mm/h


def rate_from_dbz(dbz: np.ndarray, a: float, b: float) -> np.ndarray:
    """No rain below the 0.1 mm/h reflectivity; NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        rate = (10 ** (dbz / 10) / a) ** (1 / b)
        return np.where(dbz < dbz_threshold(a, b), 0.0, rate)


def block_mean(values: np.ndarray, crop, factor: int, fill: float) -> np.ndarray:
    r0, r1, c0, c1 = crop
    v = values[r0:r1, c0:c1]
    h, w = (r1 - r0) // factor, (c1 - c0) // factor
    blocks = v.reshape(h, factor, w, factor).transpose(0, 2, 1, 3).reshape(h, w, factor * factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks
        mean = np.nanmean(blocks, axis=-1)
    return np.where(np.isnan(mean), fill, mean)


def latitude(projection: str, x: float, y: float) -> float:
    import pyproj

    return pyproj.Proj(projection)(x, y, inverse=True)[1]


# -- FMI: a dBZ composite, four files -------------------------------------------------------------

@pytest.fixture(scope="module")
def fmi():
    return {quantity: generate({**FMI_ENTRY, "quantity": quantity})
            for quantity in ("rain_rate", "reflectivity", "accumulation")}


def test_pyproj_importers_work():
    """pyproj is a dependency: pysteps' FMI and ODIM importers need it (NameError: name 'pyproj' without)."""
    import pyproj  # noqa: F401

    assert fmi_dbz(sorted(FMI.glob("*.pgm.gz"))[0]).shape == (1226, 760)
    assert odim_rate(OPERA)[0].shape == (2200, 1900)


def test_fmi_series_time_grid_and_records(fmi):
    field = fmi["rain_rate"]
    files = sorted(FMI.glob("*.pgm.gz"))
    assert field.shape == (4, 1, 32, 32) and field.dtype == np.float32
    assert [str(t)[:16] for t in field["time"].values] == ["2016-09-28T14:45", "2016-09-28T14:50",
                                                           "2016-09-28T14:55", "2016-09-28T15:00"]
    a = field.attrs
    assert (a["generator"], a["time_step_minutes"], a["accumulation_minutes"], a["segments"]) == ("radar", 5, 5.0, 1)
    assert a["importer"] == "pysteps.io.importers.import_fmi_pgm(gzipped=True)"
    assert (a["zr_a"], a["zr_b"]) == FMI_ZR and a["institution"] == "Finnish Meteorological Institute"
    assert a["projection"].startswith("+proj=stere") and a["source_grid"] == "1226 x 760"
    # pixels are not square here: both sizes recorded
    assert a["source_pixel_size_m"] == pytest.approx(999.674053) and a["source_pixel_size_y_m"] == pytest.approx(999.62859)
    np.testing.assert_allclose(np.diff(field["x"].values), 8 * 999.674053)
    np.testing.assert_allclose(np.diff(field["y"].values), -8 * 999.62859)
    assert a["rain_threshold_dbz"] == pytest.approx(dbz_threshold(*FMI_ZR)) and a["reflectivity_threshold_mm_h"] == 0.1
    # missing = NaN only: -32 dBZ (no echo) and other negative reflectivities are measurements
    assert a["missing_definition"].endswith("(no measurement: outside radar range or no data)")
    assert a["negative_pixels"] == 0
    r0, r1, c0, c1 = FMI_ENTRY["crop"]
    for t, path in enumerate(files):
        dbz = fmi_dbz(path)
        assert (dbz < 0).any()
        crop = dbz[r0:r1, c0:c1]
        assert field["missing_fraction"].values[t] == np.isnan(crop).sum() / crop.size
    assert 0 < a["missing_fraction_mean"] < 0.05
    assert a["missing_fraction_full_grid"] == pytest.approx(np.isnan(fmi_dbz(files[0])).mean(), rel=1e-9)


def test_fmi_north_up():
    """Row 0 is north: the importer's yorigin 'upper', checked against the geography (Finland: ~60-70 N)."""
    field = generate({**FMI_ENTRY, "crop": None, "downsample": 2, "height": 613, "width": 380})
    y, x = field["y"].values, field["x"].values
    projection = field.attrs["projection"]
    top, bottom = (latitude(projection, x[len(x) // 2], y[i]) for i in (0, -1))
    assert top > 68.5 and bottom < 61 and "yorigin_flipped" not in field.attrs
    assert np.all(np.diff(y) < 0)


@pytest.mark.parametrize("quantity", ["rain_rate", "reflectivity", "accumulation"])
def test_fmi_values_equal_importer_dbz_converted_here(fmi, quantity):
    field = fmi[quantity]
    a, b = FMI_ZR
    floor = dbz_threshold(a, b) - 5
    units = {"rain_rate": "mm h-1", "reflectivity": "dBZ", "accumulation": "mm"}[quantity]
    assert field.attrs["units"] == units and list(field["channel"].values) == [quantity]
    fill = floor if quantity == "reflectivity" else 0.0
    assert field.attrs["missing_fill_value"] == pytest.approx(fill)
    for t, path in enumerate(sorted(FMI.glob("*.pgm.gz"))):
        dbz = fmi_dbz(path)
        rate = rate_from_dbz(dbz, a, b)
        if quantity == "rain_rate":
            values = rate
        elif quantity == "accumulation":
            values = rate * 5 / 60
        else:  # the importer's dBZ where it rains, pysteps' floor (threshold - 5 dB) below
            values = np.where(np.isnan(dbz), np.nan, np.where(dbz < dbz_threshold(a, b), floor, dbz))
        expected = block_mean(values, FMI_ENTRY["crop"], 8, fill)
        np.testing.assert_allclose(field.values[t, 0], expected, rtol=1e-5, atol=1e-5, err_msg=f"frame {t}")
    if quantity == "rain_rate":
        assert field.values.max() > 5 and (field.values == 0).any()  # rain and dry blocks
    if quantity == "reflectivity":
        assert field.attrs["reflectivity_floor_dbz"] == pytest.approx(floor) and field.values.min() == pytest.approx(floor)


def test_flipped_importer_gives_north_up(monkeypatch):
    """An importer whose rows start in the south (yorigin 'lower') is flipped, and that is recorded."""
    from pysteps.io import importers

    def import_fmi_pgm_upside_down(filename, gzipped=False, **kwargs):
        dbz, quality, metadata = importers.import_fmi_pgm(filename, gzipped=gzipped, **kwargs)
        return dbz[::-1].copy(), quality, {**metadata, "yorigin": "lower"}

    monkeypatch.setattr(importers, "import_fmi_pgm_upside_down", import_fmi_pgm_upside_down, raising=False)
    upright = generate(FMI_ENTRY)
    flipped = generate({**FMI_ENTRY, "importer": "import_fmi_pgm_upside_down"})
    np.testing.assert_array_equal(flipped.values, upright.values)
    np.testing.assert_array_equal(flipped["y"].values, upright["y"].values)
    np.testing.assert_array_equal(flipped["missing_frequency"].values, upright["missing_frequency"].values)
    assert "rows reversed" in flipped.attrs["yorigin_flipped"]


# -- OPERA: a rain-rate composite, one file -------------------------------------------------------

def test_opera_one_file_series():
    """The reader on one real OPERA file in place (no windows: one time step)."""
    field = generate(OPERA_ENTRY)
    rate, metadata = odim_rate(OPERA)
    assert field.shape == (1, 1, 32, 32)
    assert str(field["time"].values[0])[:19] == "2018-08-24T23:45:00" and field.attrs["n_files"] == 1
    a = field.attrs
    assert (a["accumulation_minutes"], a["time_step_minutes"], a["segments"]) == (15.0, 15, 1)
    assert a["conversion"].startswith("none: rain rate in mm h-1") and a["source_grid"] == "2200 x 1900"
    assert a["source_pixel_size_m"] == 2000.0 and "pixel_size_note" not in a
    assert (a["zr_a"], a["zr_b"]) == (200.0, 1.6)  # the importer gives none: Marshall-Palmer, as pysteps
    assert a["missing_definition"].endswith("or negative rain rate")
    expected = block_mean(rate, OPERA_ENTRY["crop"], 16, 0.0)
    np.testing.assert_allclose(field.values[0, 0], expected, rtol=1e-6, atol=1e-6)
    r0, r1, c0, c1 = OPERA_ENTRY["crop"]
    crop = rate[r0:r1, c0:c1]
    assert field["missing_fraction"].values[0] == np.isnan(crop).sum() / crop.size > 0.01
    assert a["missing_fraction_full_grid"] == pytest.approx(np.isnan(rate).mean(), rel=1e-12)
    blocks_missing = np.isnan(crop).reshape(32, 16, 32, 16).any(axis=(1, 3))
    np.testing.assert_array_equal(field["missing_frequency"].values, blocks_missing.astype(float))
    assert field.values.max() > 1
    # north up: the composite's upper-left corner (67.0 N) is far north of its lower-left (31.7 N)
    projection = a["projection"]
    full = generate({**OPERA_ENTRY, "crop": None, "downsample": 100, "height": 22, "width": 19})
    y, x = full["y"].values, full["x"].values
    assert latitude(projection, x[0], y[0]) > 60 > 40 > latitude(projection, x[0], y[-1])
    assert np.all(np.diff(y) < 0) and metadata["yorigin"] == "upper"


def test_opera_series_from_copies(tmp_path):
    """Copies of the one file under 15-min names: one segment, every frame the file's; a gap starts a new one."""
    for name in ("20180824230000", "20180824231500", "20180824233000", "20180824234500", "20180825003000"):
        (tmp_path / f"T_PAAH21_C_EUOC_{name}.hdf").symlink_to(OPERA)
    field = generate({**OPERA_ENTRY, "source": str(tmp_path)})
    assert field.shape == (5, 1, 32, 32)
    np.testing.assert_array_equal(field["segment"].values, [0, 0, 0, 0, 1])
    assert field.attrs["n_time_gaps"] == 1 and "2018-08-24T23:45:00 -> 2018-08-25T00:30:00" in field.attrs["time_gaps"]
    values = field.values
    assert all(np.array_equal(values[0], values[t]) for t in range(5))


# -- MeteoSwiss RFO: ODIM with variable-length strings, two importers -------------------------------

def rfo_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "rfo"
    folder.mkdir()
    for i in range(count):  # the file is 2024-02-27 09:50 UTC; copies every 5 min from 08:00
        minutes = 8 * 60 + 5 * i
        (folder / f"RFO_20240227{minutes // 60:02d}{minutes % 60:02d}00.h5").symlink_to(RFO)
    return folder


RFO_ENTRY = {"kind": "radar", "importer": "import_odim_hdf5", "importer_kwargs": {"qty": "RATE", "accutime": 5},
             "pattern": "RFO_*.h5", "timestamp_format": "%Y%m%d%H%M%S", "crop": [200, 456, 320, 576],
             "downsample": 8, "quantity": "rain_rate", "missing": "zero", "height": 32, "width": 32}


def test_rfo_string_attributes_are_read(tmp_path):
    """pysteps 1.21 .decode()s ODIM's quantity; this file stores it as a variable-length (str) attribute."""
    import h5py

    with h5py.File(RFO, "r") as f:
        assert isinstance(f["dataset1/data1/what"].attrs["quantity"], str)
        assert f["what"].attrs["object"] == "COMP"
    field = generate({**RFO_ENTRY, "source": str(rfo_folder(tmp_path, 3))})
    assert field.shape == (3, 1, 32, 32) and field.values.max() > 1


def test_rfo_two_importers_record_their_nan_handling(tmp_path):
    """import_odim_hdf5 reads ODIM 'undetect' as 0 mm/h (measured, dry); import_mch_hdf5 as NaN (missing).

    Each field equals its own importer's output, block-averaged here, and each records its own
    missing pixels: the difference is the importers', recorded, not hidden.
    """
    folder = rfo_folder(tmp_path, 3)
    crop = RFO_ENTRY["crop"]
    r0, r1, c0, c1 = crop
    fields = {}
    for importer in ("import_odim_hdf5", "import_mch_hdf5"):
        entry = {**RFO_ENTRY, "source": str(folder), "importer": importer, "importer_kwargs": {"qty": "RATE"},
                 "time_step_minutes": 5}
        field = fields[importer] = generate(entry)
        rate, metadata = odim_rate(RFO, importer)
        np.testing.assert_allclose(field.values[1, 0], block_mean(rate, crop, 8, 0.0), rtol=1e-6, atol=1e-6)
        cropped = rate[r0:r1, c0:c1]
        assert field["missing_fraction"].values[0] == np.isnan(cropped).sum() / cropped.size
        assert field.attrs["missing_fraction_full_grid"] == pytest.approx(np.isnan(rate).mean(), rel=1e-12)
        assert field.attrs["accumulation_minutes"] == metadata["accutime"]
    odim, mch = fields["import_odim_hdf5"], fields["import_mch_hdf5"]
    assert odim.attrs["missing_fraction_mean"] == 0 < mch.attrs["missing_fraction_mean"]
    assert odim.attrs["missing_fraction_full_grid"] < mch.attrs["missing_fraction_full_grid"]
    assert (odim.attrs["zr_a"], mch.attrs["zr_a"]) == (200.0, 316.0)
    # the ODIM importer's pixel size (1.0: km written where ODIM wants m) disagrees with its extent: recorded
    assert "disagrees with the extent" in odim.attrs["pixel_size_note"] and "pixel_size_note" not in mch.attrs
    assert odim.attrs["source_pixel_size_m"] == pytest.approx(709000 / 710)
    assert mch.attrs["source_pixel_size_m"] == 1000.0


def test_rfo_ingest_of_a_series_of_copies(tmp_path):
    """The whole way: a params-style entry -> ingest -> NetCDF, with windows in every split."""
    entry = {**RFO_ENTRY, "source": str(rfo_folder(tmp_path, 24)), "input_frames": 2, "output_frames": 2,
             "window_stride": 1, "patch_size": 4, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
             "csi_thresholds": [0.5], "seed": 0, "quantity": "accumulation"}
    path = tmp_path / "rfo.nc"
    write_netcdf(ingest("rfo", entry), path)
    dataset = open_netcdf(path, variables=("accumulation", "split", "segment"))
    values = dataset["accumulation"].values
    assert values.shape == (24, 1, 32, 32) and dataset.attrs["nuwa_kind"] == "radar"
    assert dataset["accumulation"].attrs["accumulation_minutes"] == 5.0  # importer_kwargs accutime: 5
    assert dataset["accumulation"].attrs["time_step_minutes"] == 5
    rate, _ = odim_rate(RFO)
    np.testing.assert_allclose(values[7, 0], block_mean(rate * 5 / 60, RFO_ENTRY["crop"], 8, 0.0), rtol=1e-6, atol=1e-7)
    assert sorted(set(np.asarray(dataset["split"].values).tolist())) == [0, 1, 2]


# -- refused entries --------------------------------------------------------------------------------

def test_unknown_importer_is_refused_listing_pysteps_importers():
    with pytest.raises(ValueError, match=r"radar config importer 'import_knmi' is not an importer of pysteps .*"
                                         r"available in pysteps\.io\.importers: .*import_fmi_pgm.*import_odim_hdf5"):
        generate({**FMI_ENTRY, "importer": "import_knmi"})


def test_params_validation_names_the_key():
    """Checked with the schema before any job: the key is named and the allowed values listed."""
    from nuwa.config import ParamsError, validate_dataset_entry

    common = {"input_frames": 6, "output_frames": 6, "window_stride": 1, "patch_size": 4, "seed": 0,
              "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "csi_thresholds": [0.5]}
    validate_dataset_entry("fmi", {**FMI_ENTRY, **common})
    with pytest.raises(ParamsError, match=r"datasets\.fmi\.importer: 'import_knmi' is not allowed \(allowed: .*"
                                          r"'import_fmi_pgm'"):
        validate_dataset_entry("fmi", {**FMI_ENTRY, **common, "importer": "import_knmi"})
    with pytest.raises(ParamsError, match=r"datasets\.fmi\.importer_kwargs: unknown key 'gzip' \(allowed: .*gzipped"):
        validate_dataset_entry("fmi", {**FMI_ENTRY, **common, "importer_kwargs": {"gzip": True}})
    with pytest.raises(ParamsError, match=r"datasets\.fmi\.importer_kwargs: .*expected object"):
        validate_dataset_entry("fmi", {**FMI_ENTRY, **common, "importer_kwargs": "gzipped"})
    entry = {**FMI_ENTRY, **common}
    del entry["importer"]
    with pytest.raises(ParamsError, match=r"datasets\.fmi: missing required key 'importer'"):
        validate_dataset_entry("fmi", entry)
    with pytest.raises(ParamsError, match=r"datasets\.knmi\.importer: 'import_odim_hdf5' is not allowed \(allowed: "
                                          r"'import_knmi_hdf5'\)"):
        validate_dataset_entry("knmi", {**common, "kind": "radar_knmi", "source": "x", "height": 32, "width": 32,
                                        "importer": "import_odim_hdf5"})


def test_bad_importer_kwargs_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"importer_kwargs\.qty: not an argument of pysteps\.io\.importers\."
                                         r"import_fmi_pgm \(allowed: gzipped, dtype\)"):
        generate({**FMI_ENTRY, "importer_kwargs": {"gzipped": True, "qty": "RATE"}})
    with pytest.raises(ValueError, match=r"importer_kwargs\.fillna is not allowed: nuwa finds missing pixels"):
        generate({**OPERA_ENTRY, "importer_kwargs": {"qty": "RATE", "fillna": 0.0}})
    with pytest.raises(ValueError, match=r"importer_kwargs must give product, unit, accutime \(required by "
                                         r"pysteps\.io\.importers\.import_mch_gif"):
        generate({**FMI_ENTRY, "importer": "import_mch_gif", "importer_kwargs": {}})
    with pytest.raises(ValueError, match=r"radar_knmi config importer is 'import_odim_hdf5', but radar_knmi reads "
                                         r"with import_knmi_hdf5 \(for another importer use kind: radar\)"):
        get_dataset("radar_knmi")({"source": str(FMI), "importer": "import_odim_hdf5"}, 0)


def test_importer_that_cannot_read_the_files_names_the_file(tmp_path):
    # a quantity the file does not hold: the importer's error, the file and the keys to check
    with pytest.raises(DataFileError, match=re.escape(str(OPERA)) + r": not a readable file for pysteps\.io\.importers\."
                       r"import_odim_hdf5\(qty='DBZH'\) \(OSError: requested quantity DBZH not found\) \(check importer "
                       r"and importer_kwargs\)"):
        generate({**OPERA_ENTRY, "importer_kwargs": {"qty": "DBZH"}})
    # the wrong importer for the format
    with pytest.raises(DataFileError, match=re.escape(str(OPERA)) + r": not a readable file for .*import_fmi_pgm"):
        generate({**OPERA_ENTRY, "importer": "import_fmi_pgm", "importer_kwargs": {"gzipped": True}})
    # FMI files are gzipped: without gzipped: true the importer fails on the first
    with pytest.raises(DataFileError, match=re.escape(str(sorted(FMI.glob("*.gz"))[0])) + ": not a readable file"):
        generate({**FMI_ENTRY, "importer_kwargs": {}})
    # a damaged file in the middle of a series is named, not the first
    folder = tmp_path / "fmi"
    folder.mkdir()
    copies = []
    for path in sorted(FMI.glob("*.pgm.gz")):
        copies.append(folder / path.name)
        shutil.copy(path, copies[-1])
    copies[2].write_bytes(copies[2].read_bytes()[:5000])
    with pytest.raises(DataFileError, match=re.escape(str(copies[2])) + r": not a readable file for .*import_fmi_pgm"):
        generate({**FMI_ENTRY, "source": str(folder)})


def test_schema():
    import jsonschema

    schema = dataset_config_schema("radar")
    assert set(schema["required"]) >= {"importer", "source", "pattern", "timestamp_format"}
    assert {"import_odim_hdf5", "import_fmi_pgm", "import_knmi_hdf5", "import_bom_rf3"} <= set(
        schema["properties"]["importer"]["enum"])
    for kind, importer in (("radar_knmi", "import_knmi_hdf5"), ("radar_mch", "import_mch_gif"),
                           ("radar_bom", "import_bom_rf3")):
        preset = dataset_config_schema(kind)
        assert preset["properties"]["importer"] == {"enum": [importer]} and "importer" not in preset["required"]
        assert with_defaults({"kind": kind})["importer"] == importer
    entry = {**FMI_ENTRY, "split": {"train": 0.6, "val": 0.2, "test": 0.2}}
    jsonschema.validate(entry, schema)
    for bad in ({"importer": "import_x"}, {"importer_kwargs": {"gzip": True}}, {"importer_kwargs": []}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**entry, **bad}, schema)


def test_pool_takes_a_radar_member():
    pool = {"kind": "radar_pool", "source": str(FOREIGN), "height": 32, "width": 32,
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            "members": [{key: value for key, value in FMI_ENTRY.items() if key not in ("height", "width")}
                        | {"source": "fmi_pgm"}]}
    import jsonschema

    jsonschema.validate({**pool, "input_frames": 1, "output_frames": 1, "window_stride": 1, "patch_size": 4,
                         "csi_thresholds": [0.5], "seed": 0}, dataset_config_schema("radar_pool"))
    bad = copy.deepcopy(pool)
    del bad["members"][0]["importer"]
    with pytest.raises(jsonschema.ValidationError, match="'importer' is a required property"):
        jsonschema.validate(bad, dataset_config_schema("radar_pool"))
    field = get_dataset("radar_pool")(pool, 0)
    np.testing.assert_array_equal(field.values, generate(FMI_ENTRY).values)
    assert field.attrs["member_kinds"] == "radar"


# -- the presets are kind radar with their importer -------------------------------------------------

PRESET_ENTRIES = {  # the params.yaml entries, and the same as kind radar
    "radar_knmi": ({"source": "KNMI", "crop": [248, 504, 240, 496]},
                   {"importer": "import_knmi_hdf5", "importer_kwargs": {"qty": "ACRR", "accutime": 5.0},
                    "pattern": "**/RAD_NL25_RAP_5min_*.h5", "timestamp_format": "%Y%m%d%H%M"}),
    "radar_mch": ({"source": "mch", "crop": [200, 456, 320, 576]},
                  {"importer": "import_mch_gif", "importer_kwargs": {"product": "AQC", "unit": "mm", "accutime": 5.0},
                   "pattern": "**/AQC*.gif", "timestamp_format": "AQC%y%j%H%M"}),
    "radar_bom": ({"source": "bom", "pattern": "**/*.prcp-cscn.nc", "crop": [216, 472, 120, 376]},
                  {"importer": "import_bom_rf3", "importer_kwargs": {}, "timestamp_format": "%Y%m%d_%H%M%S"}),
}
DIFFERENT_BY_DESIGN = {"generator", "service", "file_format"}  # kind radar names its importer there


@pytest.mark.skipif(not SHIPPED.is_dir(), reason=f"shipped radar data not present at {SHIPPED}")
@pytest.mark.parametrize("kind", list(PRESET_ENTRIES))
@pytest.mark.parametrize("quantity", ["rain_rate", "reflectivity"])
def test_preset_equals_kind_radar_with_its_importer(kind, quantity):
    own, explicit = PRESET_ENTRIES[kind]
    common = {"downsample": 8, "quantity": quantity, "missing": "zero", "height": 32, "width": 32,
              "source": str(SHIPPED / own["source"])}
    preset = generate({"kind": kind, **own, **common})
    generic = generate({"kind": "radar", **own, **explicit, **common})
    assert preset.values.tobytes() == generic.values.tobytes()
    assert set(preset.coords) == set(generic.coords)
    for name in preset.coords:
        assert preset[name].values.tobytes() == generic[name].values.tobytes(), name
        assert preset[name].attrs == generic[name].attrs, name
    assert set(preset.attrs) == set(generic.attrs)
    differ = {key for key in preset.attrs if preset.attrs[key] != generic.attrs[key]}
    assert differ == DIFFERENT_BY_DESIGN
    assert (preset.attrs["generator"], generic.attrs["generator"]) == (kind, "radar")
    assert f"pysteps.io.importers.{explicit['importer']}(" in generic.attrs["service"]


@pytest.mark.skipif(not SHIPPED.is_dir(), reason=f"shipped radar data not present at {SHIPPED}")
def test_bom_fast_read_equals_the_importer_itself(tmp_path):
    """radar_bom's netCDF4 read against import_bom_rf3 called on every file (importer_kwargs forces it)."""
    folder = tmp_path / "bom"
    folder.mkdir()
    for path in sorted(SHIPPED.glob("bom/prcp-cscn/2/2018/06/16/*.nc"))[:3]:
        shutil.copy(path, folder / path.name)
    entry = {"kind": "radar", "importer": "import_bom_rf3", "source": str(folder), "pattern": "*.prcp-cscn.nc",
             "timestamp_format": "%Y%m%d_%H%M%S", "crop": [216, 472, 120, 376], "downsample": 8}
    fast = generate(entry)
    slow = generate({**entry, "importer_kwargs": {"dtype": "double"}})
    assert "netCDF4" in fast.attrs["importer"] and slow.attrs["importer"].endswith("import_bom_rf3(dtype='double')")
    assert fast.values.tobytes() == slow.values.tobytes()
    assert fast["missing_fraction"].values.tobytes() == slow["missing_fraction"].values.tobytes()
