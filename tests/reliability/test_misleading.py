"""Reliability, names and values that mislead, and a network address in params (issue 23).

- ``ingest.scheduler`` is an address dask.distributed connects to and exchanges pickles with: like
  the rest of a params file it is untrusted, so only a loopback address is used unless
  ``NUWA_ALLOW_REMOTE_SCHEDULER=1``; a remote one is refused at once, in one line, with no
  connection made. A real loopback scheduler still works, and the default ``local`` cluster's HTTP
  servers listen on loopback only.
- A metrics file (a run's metrics.json, a baseline's JSON) with a NaN, an infinity, a text or a
  list where the tables need a number is refused in one line naming the file, the key and the
  value; an FSS undefined by design (NaN: no event) shows as ``n/a`` in summary.md.
- ``snakemake --config`` errors quote the command line as it was typed.
- A split that leaves no window to score is refused at validation; a processed file whose split
  holds no test window for the params' window settings is refused by ``nuwa baseline`` in one line.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import TINY_PARAMS, make_workdir, tool_env

from nuwa import grid
from nuwa.cli import main
from nuwa.config import ParamsError, load_params
from nuwa.ingest import check_scheduler_address, dask_scheduler

ALLOWED = ("local, threads, or a loopback address: tcp://127.0.0.1:PORT, tcp://[::1]:PORT or "
           "tcp://localhost:PORT (also tls, ucx, ws, wss)")
RISK = ("and dask exchanges pickles with its scheduler: whoever listens there could run code here "
        f"(allowed: {ALLOWED}; for a remote cluster you trust, set NUWA_ALLOW_REMOTE_SCHEDULER=1)")
REMOTE = "tcp://192.0.2.1:8786"  # TEST-NET-1 (RFC 5737)
REMOTE_REFUSED = f"ingest.scheduler: {REMOTE!r}: 192.0.2.1 is not a loopback address, {RISK}"


def one_error_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def write_params(directory: Path, ingest: dict | None = None, **dataset) -> Path:
    """The tiny params (ingest on dask's threads unless ``ingest``), with ``dataset`` changed in
    datasets.moving_glyphs, as ``directory``/params.yaml."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"] = ingest or {"scheduler": "threads"}
    params["datasets"]["moving_glyphs"].update(dataset)
    directory.mkdir(exist_ok=True)
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# --- a network address in params --------------------------------------------------------------

@pytest.mark.parametrize("value", ["local", "threads", None, "tcp://127.0.0.1:8786", "tcp://127.8.9.10:1",
                                   "tcp://[::1]:8786", "tcp://localhost:8786", "tls://[::ffff:127.0.0.1]:8786",
                                   "127.0.0.1:8786", "inproc://192.0.2.1/1234/1"])
def test_loopback_and_in_process_schedulers_are_allowed(value, monkeypatch):
    monkeypatch.delenv("NUWA_ALLOW_REMOTE_SCHEDULER", raising=False)
    assert check_scheduler_address(value) is None


@pytest.mark.parametrize("value, message", [
    (REMOTE, REMOTE_REFUSED),
    ("tcp://0.0.0.0:8786", f"ingest.scheduler: 'tcp://0.0.0.0:8786': 0.0.0.0 is not a loopback address, {RISK}"),
    ("tls://[2001:db8::1]:8786",
     f"ingest.scheduler: 'tls://[2001:db8::1]:8786': 2001:db8::1 is not a loopback address, {RISK}"),
    ("tcp://scheduler:8786", "ingest.scheduler: 'tcp://scheduler:8786': host name 'scheduler' is not a loopback "
                             f"address (no name but localhost is looked up), {RISK}"),
    ("tcp://localhost.:8786", "ingest.scheduler: 'tcp://localhost.:8786': host name 'localhost.' is not a loopback "
                              f"address (no name but localhost is looked up), {RISK}"),
    ("unix:///tmp/dask.sock", "ingest.scheduler: 'unix:///tmp/dask.sock': 'unix' is not a transport of "
                              f"dask.distributed (allowed: {ALLOWED})"),
    ("tcp://127.0.0.1:8786@192.0.2.1:8786", "ingest.scheduler: 'tcp://127.0.0.1:8786@192.0.2.1:8786' is not an "
                                            f"address of the form tcp://HOST:PORT (allowed: {ALLOWED})"),
    ("tcp://127.0.0.1:70000", "ingest.scheduler: 'tcp://127.0.0.1:70000' is not an address of the form "
                              f"tcp://HOST:PORT (allowed: {ALLOWED})"),
])
def test_other_addresses_are_refused_in_one_line_naming_key_and_address(value, message, monkeypatch):
    monkeypatch.delenv("NUWA_ALLOW_REMOTE_SCHEDULER", raising=False)
    assert check_scheduler_address(value) == message


def test_localhost_that_resolves_elsewhere_is_refused(monkeypatch):
    monkeypatch.delenv("NUWA_ALLOW_REMOTE_SCHEDULER", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                                                  ("192.0.2.7", 0))])
    assert check_scheduler_address("tcp://localhost:8786") == \
        f"ingest.scheduler: 'tcp://localhost:8786': localhost resolves to 192.0.2.7, {RISK}"


@pytest.fixture
def no_connection(monkeypatch):
    """Any attempt to open a connection or a dask Client fails the test."""
    import distributed

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(distributed, "Client", refuse)
    monkeypatch.delenv("NUWA_ALLOW_REMOTE_SCHEDULER", raising=False)


def test_a_remote_scheduler_is_refused_at_once_without_a_connection(tmp_path, capsys, no_connection):
    """Before: `Client('tcp://192.0.2.1:8786', timeout='10s')`, a connection attempt (pickles
    exchanged with whatever answered), and after 10 s `cannot reach the dask scheduler`."""
    start = time.perf_counter()
    with pytest.raises(ParamsError) as refused:
        with dask_scheduler(REMOTE, source="params.yaml"):
            pass
    assert time.perf_counter() - start < 0.5
    assert str(refused.value) == f"params.yaml: {REMOTE_REFUSED}"
    params = write_params(tmp_path, ingest={"scheduler": REMOTE})
    line = one_error_line(capsys, ["ingest", "--params", str(params), "--dataset", "moving_glyphs",
                                   "--out", str(tmp_path / "data.nc")])
    # validation (nuwa.config) names the file first; ingest itself (the check that holds whatever
    # called it) names the key
    assert line in (f"nuwa ingest: error: {params}: {REMOTE_REFUSED}", f"nuwa ingest: error: {REMOTE_REFUSED}")
    assert not (tmp_path / "data.nc").exists()


def test_the_environment_variable_allows_a_remote_scheduler(monkeypatch):
    import distributed

    class FakeClient:  # records the address instead of connecting
        addresses = []

        def __init__(self, address, timeout):
            self.addresses.append(address)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(distributed, "Client", FakeClient)
    monkeypatch.setenv("NUWA_ALLOW_REMOTE_SCHEDULER", "1")
    assert check_scheduler_address(REMOTE) is None
    with dask_scheduler(REMOTE) as client:
        assert isinstance(client, FakeClient)
    assert FakeClient.addresses == [REMOTE]
    monkeypatch.setenv("NUWA_ALLOW_REMOTE_SCHEDULER", "yes")  # only 1 allows it
    assert check_scheduler_address(REMOTE) == REMOTE_REFUSED


def test_a_real_loopback_scheduler_runs_ingest(tmp_path, capsys, monkeypatch):
    """A dask.distributed scheduler on 127.0.0.1 (tcp, in this process so that its worker imports
    nuwa), named by IP and by localhost: ingest runs on it and writes the same file as threads."""
    import logging

    from distributed import LocalCluster

    monkeypatch.delenv("NUWA_ALLOW_REMOTE_SCHEDULER", raising=False)
    reference = tmp_path / "threads.nc"
    common = ["--dataset", "moving_glyphs"]
    assert main(["ingest", "--params", str(write_params(tmp_path)), *common, "--out", str(reference)]) == 0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.CRITICAL) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        for name, value in (("ip", address), ("localhost", address.replace("127.0.0.1", "localhost"))):
            out = tmp_path / f"{name}.nc"
            params = write_params(tmp_path / name, ingest={"scheduler": value})
            assert main(["ingest", "--params", str(params), *common, "--out", str(out)]) == 0
            with xr.open_dataset(out) as made, xr.open_dataset(reference) as expected:
                assert made.identical(expected)


def test_the_local_cluster_listens_on_loopback_only():
    """Before: its scheduler's and worker's HTTP servers listened on 0.0.0.0 and [::]."""
    import psutil

    def listening() -> set:
        return {c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}

    before = listening()  # sockets other tests of this process may hold
    with dask_scheduler("local"):
        opened = listening() - before
    assert opened and {address.ip for address in opened} <= {"127.0.0.1", "::1"}, opened


# --- metrics files the tables read ------------------------------------------------------------

@pytest.fixture
def results(tmp_path, monkeypatch):
    """The tiny grid's runs and baselines, made up in their real formats (tests/test_dvc_compare.py)."""
    from test_dvc_compare import fixture_results

    params = yaml.safe_load(TINY_PARAMS.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fixture_results(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    # what the train and baseline stages record in their losses files, which the tables check
    stamps = {cell.file("test_losses.nc"): {"dataset": cell.dataset, "task": cell.task,
                                            "train_percent": cell.train_percent, "backbone": cell.backbone,
                                            "variant": cell.variant, "seed": cell.seed}
              for cell in grid.train_cells(params)}
    stamps.update({grid.BASELINE_LOSSES.format(dataset="moving_glyphs", task="forecast", baseline=name):
                   {"dataset": "moving_glyphs", "task": "forecast", "baseline": name}
                   for name in params["grid"]["baselines"]})
    for path, attrs in stamps.items():
        with xr.open_dataset(path) as handle:
            losses = handle.load()
        losses.attrs.update({key: value for key, value in attrs.items() if key not in losses.attrs})
        losses.to_netcdf(path)
    return params


RUN = "results/runs/moving_glyphs/forecast/100pct/simvp/nuwa/seed0/metrics.json"
PERSISTENCE = "results/baselines/moving_glyphs/forecast/persistence.json"


def damage(path: str, key: str, value) -> None:
    metrics = json.loads(Path(path).read_text())
    metrics[key] = value
    Path(path).write_text(json.dumps(metrics))  # NaN / Infinity as Python's json writes them


@pytest.mark.parametrize("path, key, value, message", [
    # before: a blank cell, a blank skill, and the comparison rows as if nothing had happened
    (RUN, "mse", math.nan, "mse: nan is not allowed (allowed: a finite number)"),
    # before: `inf` in summary.md and a skill of -inf
    (RUN, "ssim", math.inf, "ssim: inf is not allowed (allowed: a finite number)"),
    (RUN, "fss_0.5_1", -math.inf, "fss_0.5_1: -inf is not allowed (allowed: a finite number, or NaN where FSS is "
                                  "undefined (no event at that threshold))"),
    # before: `nuwa tables: error: could not convert string to float: 'high'` (no file named)
    (PERSISTENCE, "ssim", "high", "ssim: 'high' has type str, expected a finite number"),
    # before: a TypeError traceback
    (PERSISTENCE, "csi_m", [0.1, 0.2], "csi_m: [0.1, 0.2] has type list, expected a finite number"),
    (PERSISTENCE, "mse", None, "mse: None has type NoneType, expected a finite number"),
    # before: a blank row
    (PERSISTENCE, "mse", math.nan, "mse: nan is not allowed (allowed: a finite number)"),
])
def test_tables_refuse_a_metric_that_is_not_a_finite_number(results, capsys, path, key, value, message):
    damage(path, key, value)
    assert one_error_line(capsys, ["tables"]) == f"nuwa tables: error: {path}: {message}"
    assert not Path(grid.SUMMARY_MD).exists()


@pytest.mark.parametrize("value, message", [
    ("0.5", "mse: '0.5' has type str, expected a finite number"),
    ([0.5], "mse: [0.5] has type list, expected a finite number"),
    (True, "mse: True has type bool, expected a finite number"),
])
def test_tables_refuse_a_run_metric_that_is_not_a_number(results, capsys, value, message):
    """Before: the run's metrics were filtered to numbers first (nuwa/cli.py), so a text or a
    list became a blank cell. Needs cmd_tables to read runs with nuwa.tables.read_metrics."""
    damage(RUN, "mse", value)
    assert one_error_line(capsys, ["tables"]) == f"nuwa tables: error: {RUN}: {message}"


def test_read_metrics_names_a_missing_mse(tmp_path):
    from nuwa.io import DataFileError
    from nuwa.tables import read_metrics

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"mae": 1.0, "dataset": "x", "per_step": {"mse": [1.0]}}))
    with pytest.raises(DataFileError) as refused:
        read_metrics(path)
    assert str(refused.value) == (f"{path}: no mse (expected in every metrics file: the stage that wrote it did not "
                                  "finish, or another program did)")
    path.write_text("[1.0]")
    with pytest.raises(DataFileError) as refused:
        read_metrics(path)
    assert str(refused.value) == f"{path}: list at the top level, expected a JSON object of metrics"


def test_an_undefined_fss_shows_as_n_a_with_a_note(results, capsys):
    """FSS is NaN by design when neither forecast nor truth has an event at its threshold
    (nuwa.metrics, as pysteps): kept, and shown as a marked n/a. Before: a blank cell."""
    for cell in grid.train_cells(results):
        damage(cell.file("metrics.json"), "fss_0.5_1", math.nan if cell.backbone == "simvp" else 0.25)
    for name in results["grid"]["baselines"]:
        damage(grid.BASELINE.format(dataset="moving_glyphs", task="forecast", baseline=name), "fss_0.5_1", 0.5)
    assert main(["tables"]) == 0
    markdown = Path(grid.SUMMARY_MD).read_text()
    rows = [line for line in markdown.splitlines()  # the summary's rows (not the comparisons')
            if line.startswith(("| simvp |", "| convlstm |")) and line.split(" | ")[1] in results["grid"]["variants"]]
    assert len(rows) == 6 and all(line.endswith("| n/a |") == line.startswith("| simvp |") for line in rows), rows
    assert ("- `n/a`: no value: an FSS with no event at its threshold in forecast or truth (undefined, NaN in the "
            "metrics files, as in pysteps), or a metric a baseline's file does not hold.") in markdown
    summary = pd.read_csv(grid.SUMMARY_CSV)
    assert summary.loc[summary["backbone"] == "simvp", "fss_0.5_1"].isna().all()
    assert np.isfinite(summary.loc[summary["backbone"] == "convlstm", "fss_0.5_1"]).all()


# --- names: snakemake --config ------------------------------------------------------------------

def test_a_command_line_override_error_quotes_the_command_line_as_typed(tmp_path):
    """Before: `--config train={'steps': '1.5'} (over params.yaml): train.steps: 1.5 has type
    float, ...`: Snakemake's parsed values, quoted as if 1.5 had been written as text."""
    make_workdir(tmp_path)
    result = subprocess.run(["snakemake", "--dry-run", "--cores", "1", "--config", 'train={"steps": 1.5}'],
                            cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=120)
    said = result.stdout + result.stderr  # Snakemake prints the exception on stdout
    assert result.returncode != 0
    # the rest of the line is validation's (tests/reliability/test_hostile_params.py)
    assert any(line.startswith('--config train={"steps": 1.5} (over params.yaml): train.steps: 1.5 has type float')
               for line in said.splitlines()), said


# --- a split with no window to score ------------------------------------------------------------

@pytest.mark.parametrize("split, message", [
    ({"train": 1.0, "val": 0.0, "test": 0.0},
     "datasets.moving_glyphs.split.test: 0.0 is out of range (allowed: > 0 and < 1)"),
    ({"train": 0.98, "val": 0.01, "test": 0.01},
     "datasets.moving_glyphs: no window fits in the val and test splits (every split needs at least one): 160 "
     "frames (length 160) split into 156 / 1 / 3 (train / val / test) give 75 / 0 / 0 windows of input_frames + "
     "output_frames = 4 + 4 = 8 frames, window_stride 2; to fix: lower input_frames or output_frames (each split's "
     "block needs at least 8 consecutive frames), or raise split.val and split.test to at least 0.05 (8 of 160 "
     "frames, taking it from the others), or raise length"),
])
def test_a_split_with_every_window_in_training_is_refused_at_validation(tmp_path, split, message):
    path = write_params(tmp_path, split=split)
    with pytest.raises(ParamsError) as refused:
        load_params(path)
    assert str(refused.value) == f"{path}: {message}"


@pytest.fixture
def other_windows(tmp_path):
    """A processed file ingested with split 0.8 / 0.1 / 0.1 (16 test frames), and params that
    score with input_frames 8 + output_frames 10 (18 frames: no test window in that file)."""
    data = tmp_path / "data.nc"
    ingested = write_params(tmp_path / "a", split={"train": 0.8, "val": 0.1, "test": 0.1})
    assert main(["ingest", "--params", str(ingested), "--dataset", "moving_glyphs", "--out", str(data)]) == 0
    scored = write_params(tmp_path / "b", input_frames=8, output_frames=10)
    out = tmp_path / "out"
    argv = ["baseline", "--params", str(scored), "--dataset", "moving_glyphs", "--task", "forecast", "--baseline",
            "persistence", "--data", str(data), "--out", str(out / "persistence.json"), "--losses-out",
            str(out / "losses.nc")]
    return data, out, argv


def baseline_error(capsys, argv) -> str:
    """The one error line of `nuwa baseline` (a note on an old file's missing hash aside)."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and
             not line.startswith("nuwa: note: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_baseline_refuses_a_file_ingested_with_other_settings(other_windows, capsys):
    """Before: `nuwa baseline: error: no batches were added: call update() before compute()`
    (nuwa.metrics, no file named). Ingest records its params entry's hash in the file, and every
    stage compares it with its own params (nuwa.windows.check_processed_identity)."""
    data, out, argv = other_windows
    line = baseline_error(capsys, argv)
    assert line.startswith(f"nuwa baseline: error: {data}: attribute nuwa_params_sha256 is "), line
    assert line.endswith("made with another version of that entry; rerun nuwa ingest --dataset moving_glyphs"), line
    assert not out.exists()


def test_baseline_refuses_an_old_file_without_a_test_window(other_windows, capsys):
    """The same file as made before ingest recorded the hash (accepted on its name and grid): no
    test window fits. Needs the check in cmd_baseline (the report of issue 23)."""
    data, out, argv = other_windows
    with xr.open_dataset(data) as handle:
        old = handle.load()
    del old.attrs["nuwa_params_sha256"]
    old.to_netcdf(data)
    assert baseline_error(capsys, argv) == (
        f"nuwa baseline: error: {data}: its test split has 16 frames, no window of input_frames + output_frames = "
        "8 + 10 = 18 consecutive frames (datasets.moving_glyphs): ingest the file again with these params (nuwa "
        "ingest says which settings leave a split without a window)")
    assert not out.exists()
