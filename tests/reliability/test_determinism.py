"""Determinism: the same params and seed give the same bytes, in two fresh checkouts at different paths.

Each "checkout" is a copy of the working tree's tracked files (`git ls-files`: the Snakefile,
rules, profiles, dvc.yaml, ...) with the tiny params; the `nuwa` package both run is the one
installed in the venv (the same code, as two clones on one machine would have). The two
workflows run at the same time (`snakemake --cores 2` each), in folders whose absolute paths
differ in name and length, in processes with different hash seeds.

Every output is compared byte for byte (NetCDF, checkpoints, JSON, CSV, Markdown, PNG) except
the `seconds` column of the two `history.csv` kinds (wall-clock time since the start of the
run: the only timing field), which is compared with that column left out.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from conftest import REPO, TINY_PARAMS, digest, output_files, tool_env

pytestmark = pytest.mark.slow

TIMING_COLUMNS = {"history.csv": ["seconds"]}  # wall-clock fields, excluded from the comparison


def fresh_checkout(directory: Path) -> Path:
    """The working tree's files under version control (uncommitted edits and new files included)
    in ``directory``, with the tiny params."""
    # tracked files and new ones not ignored: what the next commit would hold
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source, target = REPO / name, directory / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    shutil.copy(TINY_PARAMS, directory / "params.yaml")
    return directory


@pytest.fixture(scope="module")
def two_checkouts(tmp_path_factory):
    first = fresh_checkout(tmp_path_factory.mktemp("first"))
    second = tmp_path_factory.mktemp("second_checkout") / "somewhere" / "else"
    second.mkdir(parents=True)
    fresh_checkout(second)
    runs = [subprocess.Popen(["snakemake", "--cores", "2"], cwd=folder, env=tool_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for folder in (first, second)]
    for folder, process in zip((first, second), runs):
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"snakemake in {folder} failed:\n{output[-4000:]}"
    return first, second


def _without_timing(path: Path) -> str:
    frame = pd.read_csv(path)
    return frame.drop(columns=TIMING_COLUMNS.get(path.name, []), errors="ignore").to_csv(index=False)


def test_two_checkouts_write_the_same_files_with_the_same_bytes(two_checkouts):
    first, second = two_checkouts
    files = output_files(first)
    assert files == output_files(second)
    # the contract's files are all there to compare (not an empty run)
    for kind in ("data/processed/", "results/bank/", "results/saliency/", "metrics.json", "model.pt",
                 "examples.nc", "results/tables/summary.csv", "results/tables/summary.md", "persistence.json", ".png"):
        assert any(kind in name for name in files), kind
    different = []
    for name in sorted(files):
        if Path(name).name in TIMING_COLUMNS:
            continue
        if digest(first / name) != digest(second / name):
            different.append(name)
    assert not different, f"same params and seed, different bytes: {different}"


def test_metrics_agree_in_every_numeric_field(two_checkouts):
    """The same check as the bytes, field by field, so that a difference names the metric."""
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith("metrics.json")]
    assert len(names) == 6
    for name in names:
        a, b = json.loads((first / name).read_text()), json.loads((second / name).read_text())
        numeric = {key for key, value in a.items() if isinstance(value, (int, float))}
        assert {"mse", "mae", "ssim", "psnr", "best_val_loss"} <= numeric
        assert {key: a[key] for key in numeric} == {key: b.get(key) for key in numeric}, name


def test_histories_agree_apart_from_wall_clock_seconds(two_checkouts):
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith("history.csv")]
    assert len(names) == 7  # six cells and the upstream ViT
    for name in names:
        assert "seconds" in pd.read_csv(first / name).columns
        assert _without_timing(first / name) == _without_timing(second / name), name


def test_netcdf_files_hold_no_paths_or_creation_times(two_checkouts):
    """Attributes (global and per variable) name neither the folder nor a date of writing."""
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith(".nc")]
    assert len(names) == 11  # processed, saliency, 3 banks, 6 cells' examples
    for folder in (first, second):
        for name in names:
            raw = (folder / name).read_bytes()
            for marker in (str(folder), str(first), str(second), "/tmp/", str(REPO)):
                assert marker.encode() not in raw, f"{name} holds the path {marker}"
            with xr.open_dataset(folder / name) as dataset:
                attrs = [dataset.attrs] + [variable.attrs for variable in dataset.variables.values()]
            for entry in attrs:  # (the bank's `history` is DistriXplorer's K, a number: not CF's)
                assert not {"date_created", "creation_date"} & set(entry), (name, entry)
                for key, value in entry.items():
                    if isinstance(value, str):
                        assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", value), (name, key, value)
                        assert "pytest-" not in value and not value.startswith("/"), (name, key, value)
