"""The dataset registry's names (a contract for configs and checks) and `nuwa datasets`."""

import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TINY_PARAMS, tool_env
from nuwa.datasets import dataset_kinds, source_status

CONTRACT = {"taxibj", "kth", "sevir", "radar", "radar_knmi", "radar_mch", "radar_bom", "radar_pool", "nycbike",
            "nytaxi", "pollutant", "wildfire", "moving_glyphs", "gridded"}


def test_registry_names_are_the_contract():
    assert set(dataset_kinds()) == CONTRACT


def test_default_params_define_an_entry_for_every_fixed_kind():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    kinds = {entry["kind"] for entry in params["datasets"].values()}
    assert kinds == CONTRACT  # gridded: the real WFDE5 precipitation (and a commented ERA5 example)


def test_source_status(tmp_path):
    assert source_status({"kind": "pollutant"}) == (None, True)
    assert source_status({"source": str(tmp_path / "absent")})[1] is False
    (tmp_path / "empty").mkdir()
    assert source_status({"source": str(tmp_path / "empty")})[1] is False
    (tmp_path / "empty" / "a.nc").write_bytes(b"")
    assert source_status({"source": str(tmp_path / "empty")})[1] is True
    assert source_status({"source": str(tmp_path / "empty" / "*.nc")})[1] is True
    assert source_status({"source": str(tmp_path / "empty" / "*.zarr")})[1] is False


def run_datasets(params: dict, directory) -> subprocess.CompletedProcess:
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "nuwa", "datasets", "--params", "params.yaml"], cwd=directory,
                          capture_output=True, text=True, env=tool_env())


def test_nuwa_datasets_lists_entries_kinds_and_presence(tmp_path):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    bike = {**params["datasets"]["moving_glyphs"], "kind": "nycbike", "source": "raw/NYCBike1"}
    for key in ("length", "glyphs", "glyph_size", "max_speed", "respawn_every"):
        bike.pop(key)
    params["datasets"]["bikes"] = bike
    result = run_datasets(params, tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["moving_glyphs"][1:] == ["moving_glyphs", "yes", "(generated)", "yes"]
    assert rows["bikes"][1:] == ["nycbike", "no", "raw/NYCBike1", "NO"]
    listed_kinds = {row[1] for row in rows.values()} | {line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert listed_kinds >= CONTRACT
    # a grid dataset without its files: exit status 1 and a line saying which
    params["grid"]["datasets"].append("bikes")
    missing = run_datasets(params, tmp_path)
    assert missing.returncode == 1 and "bikes" in missing.stderr
    (tmp_path / "raw" / "NYCBike1").mkdir(parents=True)
    (tmp_path / "raw" / "NYCBike1" / "val.npz").write_bytes(b"")
    assert run_datasets(params, tmp_path).returncode == 0


def file_entries() -> list[str]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return [name for name, entry in params["datasets"].items() if "source" in entry]


@pytest.mark.parametrize("name", file_entries())
def test_default_file_entries_round_trip_with_windows_in_every_split(name, tmp_path, monkeypatch):
    """Each shipped entry whose files are here: ingest, write, read back, windows in train/val/test."""
    from nuwa.ingest import ingest
    from nuwa.io import write_netcdf
    from nuwa.windows import WindowDataset, load_series

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = params["datasets"][name]
    monkeypatch.chdir(REPO)  # sources are relative to the repository root
    source, present = source_status(entry)
    if not present:
        pytest.skip(f"{name}: source {source} not present (see README, 'Data')")
    write_netcdf(ingest(name, entry), tmp_path / f"{name}.nc")
    series = load_series(tmp_path / f"{name}.nc")
    assert series.field.shape[1:] == (series.field.shape[1], entry["height"], entry["width"])
    for split in ("train", "val", "test"):
        windows = WindowDataset(series, split, entry["input_frames"], entry["output_frames"], entry["window_stride"])
        assert len(windows) > 0, split
