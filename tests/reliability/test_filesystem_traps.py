"""Reliability, filesystem traps: symbolic link loops under a ``**`` source pattern, a pattern that
matches too much, an output path that is a folder, under a file or in a read-only folder, and an
output that is one of the stage's inputs. Each is one line (exit 2) naming the path, and nothing is
written or overwritten; link loops are walked once and the stage runs.

Before: Python's glob followed the loops (221,099 paths to one file in 10 s), so ingest, `nuwa
datasets` and Snakemake's DAG build (``nuwa.stages.dataset_source``) hung; the output cases were
tracebacks, after the stage had computed (and written its first outputs); ``--out`` equal to an
input overwrote the input with exit 0.

Tests run as root here, where a folder's mode does not stop writes: a read-only folder is made
immutable (``chattr +i``) under root, ``chmod 555`` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import TINY_PARAMS

import nuwa.globbing
from nuwa.cli import main


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a link loop walked without end?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` not writable, even by root (immutable: chattr +i)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root, and chattr +i (an immutable folder) is not available here")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = None
    try:
        yield folder
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            folder.chmod(0o755)


def one_error_line(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- symbolic link loops and the cap on matches -------------------------------------------------------

def gridded_file(path: Path, hours: int = 12, start: str = "2021-01-01") -> Path:
    values = np.random.default_rng(hours).normal(280, 5, (hours, 4, 4)).astype(np.float32)
    times = pd.date_range(start, periods=hours, freq="h")
    xr.Dataset({"t2m": (("time", "latitude", "longitude"), values, {"units": "K"})},
               coords={"time": times, "latitude": [50.0, 47.5, 45.0, 42.5], "longitude": np.arange(4.0)}
               ).to_netcdf(path)
    return path


def gridded_params(tmp_path: Path, source: str) -> Path:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"] = {"mine": {
        "kind": "gridded", "source": source, "variables": ["t2m"], "time_step": "1h", "height": 4, "width": 4,
        "input_frames": 1, "output_frames": 1, "window_stride": 1, "patch_size": 1,
        "split": {"train": 0.5, "val": 0.25, "test": 0.25}, "csi_thresholds": [1.0], "seed": 0}}
    params["grid"]["datasets"] = ["mine"]
    params["ingest"] = {"scheduler": "threads"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def looped_tree(tmp_path: Path) -> tuple[Path, Path]:
    """src/a/era5.nc, with two links that lead back up: src/a/b/up -> src, src/a/self -> src/a."""
    (tmp_path / "src" / "a" / "b").mkdir(parents=True)
    era5 = gridded_file(tmp_path / "src" / "a" / "era5.nc")
    (tmp_path / "src" / "a" / "b" / "up").symlink_to("../..")
    (tmp_path / "src" / "a" / "self").symlink_to(".")
    return tmp_path / "src", era5


def test_symlink_loops_under_a_double_star_pattern_are_walked_once(tmp_path, capsys):
    """ingest, `nuwa datasets` and the DAG's input function (before: all three hung)."""
    from nuwa.config import load_params
    from nuwa.globbing import find_paths
    from nuwa.stages import dataset_source

    src, era5 = looped_tree(tmp_path)
    pattern = f"{src}/**/*.nc"
    params = gridded_params(tmp_path, pattern)
    out = tmp_path / "processed" / "mine.nc"
    with time_limit(60):
        started = time.monotonic()
        assert find_paths(pattern) == [str(era5)]
        assert dataset_source(load_params(params), {"dataset": "mine"}) == [str(era5)]  # Snakemake's DAG build
        capsys.readouterr()
        assert main(["datasets", "--params", str(params)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "mine")
        assert row.split()[-1] == "yes", row
        assert main(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out)]) == 0
        assert time.monotonic() - started < 30
    with xr.open_dataset(out) as processed:  # the one file, once (a repeat would repeat its times)
        assert processed.sizes["time"] == 12


def test_find_paths_matches_like_glob_without_loops(tmp_path):
    """Same matches as glob.glob where there is no loop: names, hidden files, links to files."""
    import glob

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / ".hidden").mkdir()
    for name in ("d/x.nc", "d/e/y.nc", "d/e/z.txt", "d/.h.nc", "d/.hidden/w.nc", "top.nc"):
        (tmp_path / name).write_text("")
    (tmp_path / "d" / "link.nc").symlink_to("x.nc")  # another name of one file: listed (radar copies do this)
    for pattern in ("**/*.nc", "d/**/*.nc", "d/*/*.nc", "d/[xl]*.nc", "**/e/*", "d/.*.nc", "*.nc", "d/**"):
        full = f"{tmp_path}/{pattern}"
        expected = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        assert nuwa.globbing.find_paths(full) == expected, pattern
    assert nuwa.globbing.find_paths("**/*.nc", root=str(tmp_path / "d")) == sorted(
        str(tmp_path / "d" / name) for name in ("e/y.nc", "link.nc", "x.nc"))


def test_a_pattern_past_the_cap_on_matches_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nuwa.globbing, "MAX_MATCHES", 3)
    (tmp_path / "src").mkdir()
    for day in range(5):
        gridded_file(tmp_path / "src" / f"day{day}.nc", start=f"2021-01-0{day + 1}")
    pattern = f"{tmp_path}/src/**/*.nc"
    params = gridded_params(tmp_path, pattern)
    out = tmp_path / "processed"
    message = f"{pattern}: the pattern matches more than 3 paths; narrow it"
    assert one_error_line(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(out / "mine.nc")],
                          capsys) == f"nuwa ingest: error: {message}"
    assert not out.exists()
    assert one_error_line(["datasets", "--params", str(params)], capsys) == f"nuwa datasets: error: {message}"


# -- outputs that cannot be written, or would overwrite an input ----------------------------------------

@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny params and its processed dataset."""
    root = tmp_path_factory.mktemp("traps")
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"] = {"scheduler": "threads"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["ingest", "--params", str(root / "params.yaml"), "--dataset", "moving_glyphs",
                 "--out", str(root / "data.nc")]) == 0
    return root / "params.yaml", root / "data.nc"


def baseline_argv(processed, out: Path, losses: Path, data: Path | None = None) -> list[str]:
    params, default_data = processed
    return ["baseline", "--params", str(params), "--dataset", "moving_glyphs", "--baseline", "persistence",
            "--data", str(data or default_data), "--out", str(out), "--losses-out", str(losses)]


@pytest.mark.parametrize("case", ["folder", "under-a-file", "read-only"])
def test_an_output_that_cannot_be_written_is_one_line_before_anything_runs(processed, tmp_path, capsys, case):
    """Before: a traceback (IsADirectoryError, FileExistsError, PermissionError), after computing the
    metrics and writing the losses file."""
    losses = tmp_path / "losses.nc"
    if case == "folder":
        out = tmp_path / "metrics.json"
        out.mkdir()
        expected = f"{out}: cannot write: it is a folder"
    elif case == "under-a-file":
        (tmp_path / "notes.txt").write_text("a file\n")
        out = tmp_path / "notes.txt" / "metrics.json"
        expected = f"{out}: cannot write: {tmp_path / 'notes.txt'} is a file, not a folder"
    else:
        (tmp_path / "locked").mkdir()
        out = tmp_path / "locked" / "metrics.json"
        expected = f"{out}: cannot write: folder {tmp_path / 'locked'} is not writable (permission denied)"
    before = sorted(tmp_path.rglob("*"))
    context = read_only(tmp_path / "locked") if case == "read-only" else contextlib.nullcontext()
    with context:
        assert one_error_line(baseline_argv(processed, out, losses), capsys) == f"nuwa baseline: error: {expected}"
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: not even the losses, no temporary


@pytest.mark.parametrize("case", ["folder", "read-only"])
def test_the_writers_report_a_refusal_met_while_writing_in_one_line(tmp_path, case):
    """The atomic writers (nuwa.io), for a path that became unwritable after the stage's checks."""
    from nuwa.io import OutputWriteError, write_json

    if case == "folder":
        target = tmp_path / "metrics.json"
        target.mkdir()
        expected = f"{target}: cannot write: it is a folder"
        context = contextlib.nullcontext()
    else:
        (tmp_path / "locked").mkdir()
        target = tmp_path / "locked" / "metrics.json"
        strerror = os.strerror(1 if os.geteuid() == 0 else 13)  # EPERM (immutable) / EACCES (mode)
        expected = f"{target}: cannot write: folder {tmp_path / 'locked'} is not writable ({strerror})"
        context = read_only(tmp_path / "locked")
    with context, pytest.raises(OutputWriteError) as raised:
        write_json({"a": 1}, target)
    assert str(raised.value) == expected
    assert [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_out_equal_to_an_input_is_refused_and_the_input_kept(processed, tmp_path, capsys):
    """Before: `nuwa baseline --out data.nc` (its --data) exited 0 having replaced the processed
    file with the metrics JSON."""
    data = tmp_path / "data.nc"
    data.write_bytes(processed[1].read_bytes())
    before = digest(data)
    line = one_error_line(baseline_argv(processed, data, tmp_path / "losses.nc", data=data), capsys)
    assert line == (f"nuwa baseline: error: {data}: output --out is the input --data: refusing to overwrite an "
                    "input; give --out another path")
    link = tmp_path / "link.nc"  # the same file through a symbolic link
    link.symlink_to(data)
    line = one_error_line(baseline_argv(processed, tmp_path / "m.json", link, data=data), capsys)
    assert line == (f"nuwa baseline: error: {link}: output --losses-out is the input --data ({data}): refusing to "
                    "overwrite an input; give --losses-out another path")
    same = tmp_path / "both.nc"
    line = one_error_line(baseline_argv(processed, same, same, data=data), capsys)
    assert line == (f"nuwa baseline: error: {same}: given as two outputs, --out and --losses-out: the second "
                    "would overwrite the first")
    assert digest(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.nc", "link.nc"]


def test_an_output_onto_a_default_input_path_is_refused(processed, tmp_path, capsys, monkeypatch):
    """`nuwa saliency --out data/processed/moving_glyphs.nc`: its --data by default."""
    monkeypatch.chdir(tmp_path)
    data = Path("data/processed/moving_glyphs.nc")
    data.parent.mkdir(parents=True)
    data.write_bytes(processed[1].read_bytes())
    before = digest(data)
    line = one_error_line(["saliency", "--params", str(processed[0]), "--dataset", "moving_glyphs",
                           "--out", str(data)], capsys)
    assert line == (f"nuwa saliency: error: {data}: output --out is the input --data: refusing to overwrite an "
                    "input; give --out another path")
    assert digest(data) == before


def test_ingest_out_onto_its_source_file_is_refused(tmp_path, capsys):
    """Before: ingest replaced the source NetCDF with the processed file (exit 0); a test did it."""
    source = gridded_file(tmp_path / "era5.nc")
    before = digest(source)
    params = gridded_params(tmp_path, str(source))
    line = one_error_line(["ingest", "--params", str(params), "--dataset", "mine", "--out", str(source)], capsys)
    assert line == (f"nuwa ingest: error: {source}: output --out is the input source: refusing to overwrite an "
                    "input; give --out another path")
    # a file of the source folder (or of a pattern's matches) likewise
    folder_params = gridded_params(tmp_path, str(tmp_path))
    line = one_error_line(["ingest", "--params", str(folder_params), "--dataset", "mine", "--out", str(source)],
                          capsys)
    assert line == (f"nuwa ingest: error: {source}: output --out is a file of the input folder source "
                    f"({tmp_path}): refusing to overwrite an input; give --out another path")
    assert digest(source) == before
