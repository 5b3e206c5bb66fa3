"""Reliability, bad data files: every stage given a truncated, corrupt, misnamed, misshapen or
non-finite input file stops with one line naming the file (exit 2) and writes nothing.

Pipeline side: a real processed dataset, saliency file and bank, made once by the real stages
(in process, ``nuwa.cli.main``), then damaged one way at a time. Ingest side: the cases the
dataset tests (tests/test_gridded.py, test_taxibj_sevir.py, test_kth.py, test_radar.py,
test_nycbike.py, test_ingest_and_io.py) do not already prove, through ``nuwa ingest``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import TINY_PARAMS
from conftest import cli_fails_cleanly as fails_cleanly

from nuwa.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared/data"
RADAR = DATA / "radar"
STAGES = ("pretrain", "saliency", "bank", "train", "baseline")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """params, processed dataset, upstream model, saliency file and banks of the tiny config."""
    root = tmp_path_factory.mktemp("made")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"] = {"scheduler": "threads"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(root / "params.yaml"), "--dataset", "moving_glyphs"]
    data = str(root / "data.nc")
    assert main(["ingest", *common, "--out", data]) == 0
    assert main(["pretrain", *common, "--data", data, "--model-out", str(root / "model.pt"),
                 "--history-out", str(root / "history.csv")]) == 0
    assert main(["saliency", *common, "--data", data, "--model", str(root / "model.pt"),
                 "--out", str(root / "saliency.nc")]) == 0
    assert main(["bank", *common, "--variant", "nuwa", "--seed", "0", "--data", data, "--saliency", str(root / "saliency.nc"),
                 "--out", str(root / "bank.nc")]) == 0
    return root


def stage_argv(stage: str, made: Path, out: Path, data=None, saliency=None, bank=None) -> list[str]:
    data = str(data or made / "data.nc")
    common = [stage, "--params", str(made / "params.yaml"), "--dataset", "moving_glyphs"]
    return common + {
        "pretrain": ["--data", data, "--model-out", str(out / "model.pt"), "--history-out", str(out / "history.csv")],
        "saliency": ["--data", data, "--model", str(made / "model.pt"), "--out", str(out / "saliency.nc")],
        "bank": ["--variant", "nuwa", "--seed", "0", "--data", data, "--saliency", str(saliency or made / "saliency.nc"),
                 "--out", str(out / "bank.nc")],
        "train": ["--backbone", "simvp", "--variant", "nuwa", "--seed", "0", "--data", data, "--bank", str(bank or made / "bank.nc"),
                  "--out-dir", str(out), "--device", "cpu"],
        "baseline": ["--baseline", "persistence", "--data", data, "--out", str(out / "persistence.json"),
                     "--losses-out", str(out / "losses.nc")],
    }[stage]


def damage(source: Path, target: Path, how: str, variable: str | None = None) -> Path:
    """A copy of NetCDF ``source`` damaged ``how``; ``variable`` is the one to damage."""
    if how == "truncated":
        raw = source.read_bytes()
        target.write_bytes(raw[: len(raw) // 2])
        return target
    if how == "garbage":
        target.write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really HDF5 " * 64)
        return target
    with xr.open_dataset(source) as handle:
        dataset = handle.load()
    if how == "renamed":
        dataset = dataset.rename({variable: variable + "_old"})
    elif how == "dims":  # the same numbers, axes reversed
        var = dataset[variable]
        dataset[variable] = (var.dims[::-1], np.ascontiguousarray(var.values.transpose()), var.attrs)
    elif how == "nan":
        dataset[variable].values[tuple(min(1, n - 1) for n in dataset[variable].shape)] = np.nan
    elif how == "inf":
        dataset[variable].values[(-1,) * dataset[variable].ndim] = -np.inf
    else:  # set a variable or attribute: "name=value"
        name, value = how.split("=")
        if name in dataset.variables:
            dataset[name].values[...] = float(value)
        else:
            del dataset.attrs[name]
    dataset.to_netcdf(target)
    return target


# -- pipeline side: the processed dataset, read by every later stage --------------------------

PROCESSED_DAMAGE = {
    "truncated": ("truncated", None, "not a readable NetCDF file"),
    "corrupt": ("garbage", None, "not a readable NetCDF file"),
    "field-renamed": ("renamed", "intensity", "nuwa_variable='intensity' does not name a data variable"),
    "norm-renamed": ("renamed", "norm_std", "missing variable(s) norm_std"),
    "wrong-dims": ("dims", "intensity", "has dims ('x', 'y', 'channel', 'time'), expected ('time', 'channel', 'y', 'x')"),
    "nan": ("nan", "intensity", "non-finite value(s) (NaN or Inf), first at index (1, 0, 1, 1)"),
    "inf": ("inf", "intensity", "non-finite value(s) (NaN or Inf), first at index (159, 0, 15, 15)"),
    "zero-std": ("norm_std=0", None, "variable 'norm_std' is 0.0 for channel 'intensity': cannot normalise"),
    "nan-std": ("norm_std=nan", None, "variable 'norm_std' is nan for channel 'intensity'"),
    "bad-split-flag": ("split=7", None, "variable 'split' has value(s) [7]"),
    "no-data-range": ("data_range=", None, "attribute data_range is None"),
}


@pytest.mark.parametrize("case", sorted(PROCESSED_DAMAGE))
def test_damaged_processed_file_stops_every_stage(made, tmp_path, capsys, case):
    how, variable, phrase = PROCESSED_DAMAGE[case]
    bad = damage(made / "data.nc", tmp_path / "moving_glyphs.nc", how, variable)
    for stage in STAGES:
        out = tmp_path / f"out_{stage}"
        fails_cleanly(stage_argv(stage, made, out, data=bad), capsys, bad, phrase, out=out)


# -- pipeline side: the saliency file (read by the bank) and the bank (read by train) ----------

SALIENCY_DAMAGE = {
    "truncated": ("truncated", "not a readable NetCDF file"),
    "corrupt": ("garbage", "not a readable NetCDF file"),
    "renamed": ("renamed", "missing variable(s) importance"),
    "wrong-dims": ("dims", "variable 'importance' has dims ('patch_x', 'patch_y', 'step', 'sample')"),
    "nan": ("nan", "variable 'importance': 1 non-finite value(s)"),
}


@pytest.mark.parametrize("case", sorted(SALIENCY_DAMAGE))
def test_damaged_saliency_file_stops_the_bank(made, tmp_path, capsys, case):
    how, phrase = SALIENCY_DAMAGE[case]
    bad = damage(made / "saliency.nc", tmp_path / "saliency.nc", how, "importance")
    out = tmp_path / "out"
    fails_cleanly(stage_argv("bank", made, out, saliency=bad), capsys, bad, phrase, out=out)


def test_saliency_file_of_another_patch_grid_stops_the_bank(made, tmp_path, capsys):
    with xr.open_dataset(made / "saliency.nc") as handle:
        coarse = handle.load().coarsen(patch_y=2, patch_x=2).mean()  # same samples, 2 x 2 patches
    coarse.to_netcdf(tmp_path / "saliency.nc")
    out = tmp_path / "out"
    fails_cleanly(stage_argv("bank", made, out, saliency=tmp_path / "saliency.nc"), capsys, tmp_path / "saliency.nc",
                  "importance has (step, patch_y, patch_x) = (4, 2, 2)", "need (4, 4, 4)", out=out)


BANK_DAMAGE = {
    "truncated": ("truncated", "not a readable NetCDF file"),
    "corrupt": ("garbage", "not a readable NetCDF file"),
    "renamed": ("renamed", "missing variable(s) augmented"),
    "wrong-dims": ("dims", "variable 'augmented' has dims ('x', 'y', 'channel', 'step', 'bank_sample')"),
    "nan": ("nan", "augmented window 1 holds non-finite values"),
    "inf": ("inf", "augmented window 44 holds non-finite values"),
}


@pytest.mark.parametrize("case", sorted(BANK_DAMAGE))
def test_damaged_bank_stops_training(made, tmp_path, capsys, case):
    how, phrase = BANK_DAMAGE[case]
    bad = damage(made / "bank.nc", tmp_path / "nuwa.nc", how, "augmented")
    out = tmp_path / "run"
    fails_cleanly(stage_argv("train", made, out, bank=bad), capsys, bad, phrase, out=out)


# -- ingest side, through `nuwa ingest` ----------------------------------------------------------

def ingest_params(tmp_path: Path, entry: dict) -> Path:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"] = {"mine": entry}
    params["grid"]["datasets"] = ["mine"]
    params["ingest"] = {"scheduler": "threads"}
    # the grid's backbones must be buildable on every grid dataset (validate checks it): these
    # small files' 4 x 5 grids need SimVP without downsampling and ConvLSTM on 1-pixel patches
    params["backbones"] = {"simvp": {"kind": "simvp", "size": "small", "N_S": 1},
                           "convlstm": {"kind": "convlstm", "size": "small", "patch_size": 1}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def gridded_entry(source: Path) -> dict:
    return {"kind": "gridded", "source": str(source), "variables": ["t2m"], "time_step": "1h", "height": 4,
            "width": 5, "input_frames": 1, "output_frames": 1, "window_stride": 1, "patch_size": 1,
            "split": {"train": 0.5, "val": 0.25, "test": 0.25}, "csi_thresholds": [1.0], "seed": 0}


def gridded_file(path: Path, values: np.ndarray) -> Path:
    times = pd.date_range("2021-01-01", periods=len(values), freq="h")
    xr.Dataset({"t2m": (("time", "latitude", "longitude"), values.astype(np.float32), {"units": "K"})},
               coords={"time": times, "latitude": [50.0, 47.5, 45.0, 42.5], "longitude": np.arange(5.0)}
               ).to_netcdf(path)
    return path


@pytest.mark.parametrize("case", ["truncated", "constant", "nan"])
def test_bad_gridded_file_stops_ingest(tmp_path, capsys, case):
    values = np.random.default_rng(0).normal(280, 5, (12, 4, 5))
    if case == "constant":
        values[:] = 273.15
    if case == "nan":
        values[7, 2, 3] = np.nan
    source = gridded_file(tmp_path / "era5.nc", values)
    if case == "truncated":
        source.write_bytes(source.read_bytes()[:1500])
    params = ingest_params(tmp_path, gridded_entry(source))
    out = tmp_path / "processed"
    argv = ["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out / "mine.nc")]
    if case == "truncated":
        fails_cleanly(argv, capsys, source, "not a readable NetCDF", out=out)
        return
    # the whole field's problem: named by dataset and channel (constant) or source and index (NaN)
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    if case == "constant":
        assert lines[0] == ("nuwa ingest: error: dataset 'mine': channel(s) t2m constant over the training split "
                            "(zero variance): cannot normalise")
    else:
        assert lines[0].startswith(f"nuwa ingest: error: dataset 'mine' (source {source}): 1 non-finite value(s)")
        assert "first at index (time, channel, y, x) = (7, 0, 2, 3), time 2021-01-01T07:00:00" in lines[0]
    assert not out.exists()


def test_truncated_nycbike_file_stops_ingest(tmp_path, capsys):
    source = DATA / "traffic/NYCBike1"
    if not source.is_dir():
        pytest.skip(f"real NYCBike1 data not present at {source}")
    folder = tmp_path / "NYCBike1"
    folder.mkdir()
    for name in ("val.npz", "test.npz"):
        shutil.copy(source / name, folder / name)
    raw = (source / "test.npz").read_bytes()
    (folder / "test.npz").chmod(0o644)
    (folder / "test.npz").write_bytes(raw[: len(raw) * 2 // 3])
    entry = {"kind": "nycbike", "source": str(folder), "height": 16, "width": 8, "input_frames": 4,
             "output_frames": 4, "window_stride": 1, "patch_size": 4, "split": {"train": 0.7, "val": 0.1, "test": 0.2},
             "csi_thresholds": [1.0], "seed": 0}
    params = ingest_params(tmp_path, entry)
    out = tmp_path / "processed"
    fails_cleanly(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out / "mine.nc")], capsys,
                  folder / "test.npz", "not a readable .npz file", out=out)


KNMI_NAME = "RAD_NL25_RAP_5min_{:%Y%m%d%H%M}.h5"


def radar_entry(kind: str, folder: Path) -> dict:
    crop = {"radar_knmi": [248, 504, 240, 496], "radar_mch": [200, 456, 320, 576]}[kind]
    return {"kind": kind, "source": str(folder), "crop": crop, "downsample": 8, "quantity": "rain_rate",
            "missing": "zero", "height": 32, "width": 32, "input_frames": 2, "output_frames": 1, "window_stride": 1,
            "patch_size": 4, "split": {"train": 0.6, "val": 0.2, "test": 0.2}, "csi_thresholds": [0.5], "seed": 0}


def radar_copies(kind: str, folder: Path, count: int) -> list[Path]:
    pattern = {"radar_knmi": "KNMI/**/*.h5", "radar_mch": "mch/20150515/*.gif"}[kind]
    folder.mkdir()
    copies = []
    for path in sorted(RADAR.glob(pattern))[:count]:
        copies.append(folder / path.name)
        shutil.copy(path, copies[-1])
        copies[-1].chmod(0o644)
    return copies


needs_radar = pytest.mark.skipif(not RADAR.is_dir(), reason=f"real radar data not present at {RADAR}")


@needs_radar
@pytest.mark.parametrize("kind,intruder,position", [
    ("radar_knmi", "mch/20150515/*.gif", 0),     # a MeteoSwiss GIF under a KNMI HDF5 name, first file
    ("radar_knmi", "bom/prcp-cscn/**/*.nc", 2),  # a BoM NetCDF (valid HDF5, other layout), later file
    ("radar_mch", "KNMI/**/*.h5", 1),            # a KNMI HDF5 under a MeteoSwiss GIF name
], ids=["mch-gif-as-knmi", "bom-nc-as-knmi", "knmi-h5-as-mch"])
def test_radar_file_of_another_importer_is_named(tmp_path, capsys, kind, intruder, position):
    copies = radar_copies(kind, tmp_path / "radar", 4)
    victim = copies[position]
    shutil.copy(sorted(RADAR.glob(intruder))[0], victim)
    params = ingest_params(tmp_path, radar_entry(kind, tmp_path / "radar"))
    out = tmp_path / "processed"
    fmt = {"radar_knmi": "not a readable KNMI HDF5 file", "radar_mch": "not a readable MeteoSwiss AQC GIF file"}[kind]
    fails_cleanly(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out / "mine.nc")], capsys,
                  victim, fmt, out=out)


@needs_radar
def test_radar_gap_is_recorded_in_the_processed_file(tmp_path, capsys):
    """A missing radar file is legitimate: a gap, recorded (segments, time_gaps), never bridged."""
    # 20 five-minute files, 01:00 missing: segments of 12 and 7 frames, enough for a window in
    # every split (ingest refuses a split without one)
    copies = radar_copies("radar_knmi", tmp_path / "radar", 20)
    copies[12].unlink()
    params = ingest_params(tmp_path, {**radar_entry("radar_knmi", tmp_path / "radar"), "input_frames": 1,
                                      "output_frames": 1})
    out = tmp_path / "processed" / "mine.nc"
    assert main(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out)]) == 0
    with xr.open_dataset(out) as processed:
        assert processed.attrs["segments"] == 2
        attrs = processed["rain_rate"].attrs
        assert attrs["n_time_gaps"] == 1 and attrs["n_files"] == 19
        assert "2010-08-26T00:55:00 -> 2010-08-26T01:05:00" in attrs["time_gaps"]
        assert processed["segment"].values.tolist() == [0] * 12 + [1] * 7
