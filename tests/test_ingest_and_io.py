"""Ingestion layout, the split (no leakage), atomic writes and clear errors on bad files."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import make_workdir, tool_env
from nuwa.ingest import SPLIT_CODES, build_processed, ingest
from nuwa.io import DataFileError, atomic_path, load_checkpoint, open_netcdf, write_netcdf
from nuwa.windows import load_series, window_starts


def test_ingest_layout_split_and_train_only_statistics(tiny_params, tmp_path):
    config = tiny_params["datasets"]["moving_glyphs"]
    dataset = ingest("moving_glyphs", config)
    name = dataset.attrs["nuwa_variable"]
    assert dataset[name].dims == ("time", "channel", "y", "x")
    assert {"units", "long_name"} <= set(dataset[name].attrs)
    assert dataset["split"].attrs["flag_meanings"] == "train val test"
    flags = dataset["split"].values
    # contiguous blocks, in order
    assert (np.diff(flags) >= 0).all() and set(flags) == {0, 1, 2}
    train = dataset[name].values[flags == SPLIT_CODES["train"]]
    np.testing.assert_allclose(dataset["norm_mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(dataset["norm_std"].values, train.std(axis=(0, 2, 3)), rtol=1e-4)
    whole = dataset[name].values
    assert not np.allclose(dataset["norm_mean"].values, whole.mean(axis=(0, 2, 3)), rtol=1e-6)
    path = tmp_path / "x.nc"
    write_netcdf(dataset, path)
    assert xr.open_dataset(path)[name].shape == whole.shape


def test_windows_of_different_splits_never_share_a_frame(tiny_params):
    config = tiny_params["datasets"]["moving_glyphs"]
    flags = ingest("moving_glyphs", config)["split"].values
    length = config["input_frames"] + config["output_frames"]
    frames = {}
    for split in ("train", "val", "test"):
        starts = window_starts(flags, split, length, config["window_stride"])
        assert len(starts)
        frames[split] = {int(s) + k for s in starts for k in range(length)}
        assert all(flags[f] == SPLIT_CODES[split] for f in frames[split])
    assert not frames["train"] & frames["test"]
    assert not frames["train"] & frames["val"]
    assert not frames["val"] & frames["test"]


def test_interleaved_split_flags_are_refused():
    # the authors' SEVIR loader evaluated on training files; a split that is not one block
    # (e.g. test frames scattered through training) must not pass silently
    flags = np.array([0, 0, 2, 0, 0, 1, 1, 2, 2, 2], dtype=np.int8)
    with pytest.raises(DataFileError, match="not one contiguous block"):
        window_starts(flags, "test", 2, 1)


def test_constant_field_cannot_be_normalised():
    field = xr.DataArray(np.ones((20, 1, 4, 4), np.float32), dims=("time", "channel", "y", "x"), name="v",
                         attrs={"units": "1"})
    with pytest.raises(ValueError, match="zero variance"):
        build_processed(field, {"kind": "k", "split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "const")


def test_nan_in_data_is_named(tmp_path):
    values = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    values[3, 0, 1, 2] = np.nan
    field = xr.DataArray(values, dims=("time", "channel", "y", "x"), name="v", attrs={"units": "1"})
    with pytest.raises(DataFileError, match=r"non-finite.*\(3, 0, 1, 2\)"):
        build_processed(field, {"kind": "k", "split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "nan")
    good = build_processed(field.fillna(0.5), {"kind": "k", "split": {"train": 0.6, "val": 0.2, "test": 0.2}}, "x")
    good = good.load()  # ingest keeps the field lazy (dask)
    good["v"].values[5, 0, 0, 0] = np.inf
    path = tmp_path / "inf.nc"
    good.to_netcdf(path)
    with pytest.raises(DataFileError, match=str(path)):
        load_series(path)


def test_missing_and_corrupt_netcdf_are_named(tmp_path):
    with pytest.raises(DataFileError, match="absent.nc: file not found"):
        open_netcdf(tmp_path / "absent.nc")
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"CDF\x01 this is not a netcdf file at all" * 10)
    with pytest.raises(DataFileError, match="corrupt.nc: not a readable NetCDF"):
        open_netcdf(corrupt)
    truncated = tmp_path / "truncated.nc"
    xr.Dataset({"a": ("t", np.arange(1000.0))}).to_netcdf(truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])
    with pytest.raises(DataFileError, match="truncated.nc"):
        open_netcdf(truncated)
    xr.Dataset({"a": ("t", np.arange(3.0))}).to_netcdf(tmp_path / "ok.nc")
    with pytest.raises(DataFileError, match="ok.nc: missing variable.s. importance"):
        open_netcdf(tmp_path / "ok.nc", variables=("importance",))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "file.nc"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


class Payload:
    """A picklable object that weights_only loading must refuse."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"object": Payload()}, path)
    with pytest.raises(DataFileError, match="refused"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "fine.pt")
    assert load_checkpoint(tmp_path / "fine.pt")["weights"].shape == (2,)


def test_cli_errors_name_the_culprit_and_write_nothing(tmp_path):
    directory = make_workdir(tmp_path)
    env = tool_env()
    (directory / "data" / "processed").mkdir(parents=True)
    (directory / "data" / "processed" / "moving_glyphs.nc").write_bytes(b"garbage")
    result = subprocess.run(["nuwa", "pretrain", "--dataset", "moving_glyphs"], cwd=directory, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "data/processed/moving_glyphs.nc: not a readable NetCDF file" in result.stderr
    assert not (directory / "results").exists()
    result = subprocess.run(["nuwa", "train", "--dataset", "moving_glyphs", "--backbone", "resnet", "--variant", "ori",
                             "--seed", "0"],
                            cwd=directory, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "'resnet' is not defined under backbones" in result.stderr
    result = subprocess.run(["nuwa", "ingest", "--dataset", "nowhere"], cwd=directory, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--dataset 'nowhere' is not defined under datasets" in result.stderr


def test_windows_never_cross_segments():
    flags = np.zeros(12, dtype=np.int8)
    segment = np.array([0] * 5 + [1] * 4 + [2] * 3)
    # runs [0, 5), [5, 9), [9, 12): windows of 3 start inside each run only
    assert window_starts(flags, "train", 3, 1, segment).tolist() == [0, 1, 2, 5, 6, 9]
    assert window_starts(flags, "train", 3, 2, segment).tolist() == [0, 2, 5, 9]
    assert window_starts(flags, "train", 5, 1, segment).tolist() == [0]
    assert window_starts(flags, "train", 3, 1).tolist() == list(range(10))


def test_split_may_interleave_across_segments_but_not_within_one():
    # KTH-like: each segment is a clip belonging wholly to one split
    flags = np.array([0, 0, 2, 2, 0, 0, 1, 1], dtype=np.int8)
    segment = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert window_starts(flags, "train", 2, 1, segment).tolist() == [0, 4]
    assert window_starts(flags, "test", 2, 1, segment).tolist() == [2]
    with pytest.raises(DataFileError, match="segment 0"):
        window_starts(np.array([0, 2, 0, 0], dtype=np.int8), "train", 1, 1, np.zeros(4))


def test_segments_and_dataset_split_reach_the_processed_file(tmp_path):
    from nuwa.datasets import field_array

    values = np.random.default_rng(1).random((10, 1, 4, 4))
    field = field_array(values, name="v", channels=["c"], attrs={"units": "1", "long_name": "v"},
                        segment=[0, 0, 0, 1, 1, 1, 2, 2, 2, 2],
                        split=["train"] * 6 + ["test"] * 4)
    processed = build_processed(field, {"kind": "k"}, "clips")
    assert processed["segment"].values.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert processed["split"].values.tolist() == [0] * 6 + [2] * 4
    assert "split" not in processed.coords and "segment" not in processed.coords
    np.testing.assert_allclose(processed["norm_mean"].values, values[:6].mean(axis=(0, 2, 3)), rtol=1e-5)
    write_netcdf(processed, tmp_path / "clips.nc")
    series = load_series(tmp_path / "clips.nc")
    assert series.segment.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    bad = field_array(values, name="v", channels=["c"], attrs={"units": "1"}, split=["train"] * 9 + ["holdout"])
    with pytest.raises(ValueError, match="holdout"):
        build_processed(bad, {"kind": "k"}, "clips")
