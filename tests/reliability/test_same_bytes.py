"""Same params, same bytes: in two fresh checkouts (determinism), the second of which is killed
at random moments and rerun (crashes and kills). The first checkout's uninterrupted run of the
tiny workflow is the reference of both, and the second checkout's killed-and-rerun run is
compared with it once. The first run is the suite's shared one (conftest.py's
`uninterrupted_tiny_run`, which test_workflow.py copies), so this file pays for one run of its own.

Determinism. Each "checkout" is a copy of the working tree's tracked files (`git ls-files`: the
Snakefile, rules, profiles, dvc.yaml, ...) with the tiny params; the `nuwa` package both run is
the one installed in the venv (the same code, as two clones on one machine would have). The two
workflows run in folders whose absolute paths differ in name and length, in processes with
different hash seeds, one after the other (runs at the same time on shared caches and one
folder: test_concurrency.py). Every output is compared byte for byte (NetCDF, checkpoints,
JSON, CSV, Markdown, PNG) except the `seconds` column of the two `history.csv` kinds (wall-clock
time since the start of the run: the only timing field), which is compared with that column
left out. Uninterrupted runs in two folders are also compared by test_workflow.py (Snakemake's
and DVC's); `NUWA_KILLS=0` runs the second checkout here without kills, to tell a determinism
failure from a kill failure.

Kills. `snakemake --cores 2` killed with SIGKILL (its whole process group: Snakemake and every
running `nuwa` job) at 10 random moments across a run, then rerun, completes with every output
byte-identical to the uninterrupted run's; no half-written file is ever visible. The moments
are drawn from a seeded RNG (seed: $NUWA_KILL_SEED, default below) within the work still left,
estimated from the measured time of the uninterrupted run and the share of outputs still
missing; a failure prints the seed and the moments (seconds after each start), so it can be
replayed. After a SIGKILL, Snakemake's lock on the folder remains: the rerun says so and names
`snakemake --unlock`, which the test runs (as a user would) before rerunning.

The suite runs the tiny config (tests/data/tiny_params.yaml). By hand, on another config (e.g.
the default one, ~8 min uninterrupted here):

    NUWA_RELIABILITY_PARAMS=params.yaml pytest -q tests/reliability/test_same_bytes.py

(relative dataset `source` paths are taken relative to that file's folder).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch
import xarray as xr
import yaml

from conftest import REPO, comparable, digest, fresh_checkout, output_files, start_snakemake, tool_env, uninterrupted_run

pytestmark = pytest.mark.slow

# NUWA_KILLS=0 runs the second checkout uninterrupted: the determinism cases alone
KILLS = int(os.environ.get("NUWA_KILLS", "10"))
SEED = int(os.environ.get("NUWA_KILL_SEED", "7031"))
PNG_END = b"IEND\xaeB`\x82"
TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def _params() -> dict | None:
    path = os.environ.get("NUWA_RELIABILITY_PARAMS")
    if not path:
        return None  # the tiny config
    path = Path(path).resolve()
    params = yaml.safe_load(path.read_text())
    for entry in params["datasets"].values():
        source = entry.get("source")
        if source and not os.path.isabs(source):
            entry["source"] = str(path.parent / source)
    return params


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


def _checkout(directory: Path) -> Path:
    """A fresh checkout with the tiny params, or $NUWA_RELIABILITY_PARAMS."""
    params = _params()
    return fresh_checkout(directory, None if params is None else yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
    """The uninterrupted run, alone (its duration times the kills), in a first fresh checkout:
    on the tiny config, the suite's shared one (conftest's `uninterrupted_tiny_run`, which
    test_workflow.py copies)."""
    if _params() is None:
        return request.getfixturevalue("uninterrupted_tiny_run")
    directory = _checkout(tmp_path_factory.mktemp("first"))
    duration, startup = uninterrupted_run(directory)
    return directory, duration, startup


@pytest.fixture(scope="module")
def killed_and_rerun(reference, tmp_path_factory):
    """A second fresh checkout, at a longer path of other names, whose run is killed at KILLS
    random moments and rerun to the end (checked after every kill); its folder and the context
    line that names the seed and the moments."""
    expected_dir, duration, startup = reference
    directory = tmp_path_factory.mktemp("second_checkout") / "somewhere" / "else"
    directory.mkdir(parents=True)
    _checkout(directory)
    rng = random.Random(SEED)
    expected_count = len(output_files(expected_dir))
    delays: list[float] = []

    def context() -> str:
        return (f"NUWA_KILL_SEED={SEED} NUWA_KILLS={KILLS}: SIGKILL {', '.join(f'{d:.2f}' for d in delays)} s after "
                f"each run's first job started (uninterrupted run {duration:.1f} s, Snakemake start-up {startup:.2f} s)")

    killed = 0
    for attempt in range(KILLS):
        if attempt:
            _unlock(directory, first=attempt == 1, context=context())
        # a moment within the work left (estimated from the outputs still missing), so that the
        # kills spread across the whole run instead of the run ending before them
        left = 1 - len(output_files(directory)) / expected_count
        delays.append(rng.uniform(0.2, 1.0) * left * (duration - startup) / (KILLS - attempt))
        with open(directory / f"snakemake.{attempt}.out", "w") as log:
            process = start_snakemake(directory, log)
            # counted from this run's first job, not from a fixed start-up: a start-up slowed by
            # other work on the machine must not leave a whole run to finish before the kill
            _wait_for_first_job(process, directory / f"snakemake.{attempt}.out")
            try:
                process.wait(timeout=delays[-1])
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # Snakemake and all its running jobs
                process.wait()
                killed += 1
        output = (directory / f"snakemake.{attempt}.out").read_text()
        if process.returncode != -signal.SIGKILL:
            # the run ended before its moment: it must have completed
            assert process.returncode == 0, f"{context()}: run {attempt} failed:\n{output}"
            break
        deadline = time.monotonic() + 30
        while _group_alive(process.pid):
            assert time.monotonic() < deadline, f"{context()}: processes of killed run {attempt} survive"
            time.sleep(0.05)
        _check_complete(directory, f"{context()}; after kill {attempt + 1}")
    print(f"{context()}: {killed} kills landed")

    # rerun until complete (the default profile sets rerun-incomplete)
    if killed:
        _unlock(directory, first=killed == 1, context=context())
    for attempt in range(2):
        result = subprocess.run(["snakemake", "--cores", "2"], cwd=directory, env=tool_env(), capture_output=True,
                                text=True, timeout=max(900, 4 * duration))
        if result.returncode == 0:
            break
    assert result.returncode == 0, f"{context()}: the rerun failed:\n{result.stdout}\n{result.stderr}"
    _check_complete(directory, f"{context()}; after the rerun")
    return directory, killed, context()


@pytest.fixture(scope="module")
def two_checkouts(reference, killed_and_rerun):
    """The uninterrupted first checkout and the killed-and-rerun second one."""
    return reference[0], killed_and_rerun[0]


def _wait_for_first_job(process: subprocess.Popen, log: Path) -> None:
    """Until Snakemake's log shows a job starting (``rule NAME:``) or Snakemake ends."""
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if re.search(r"^\s*(?:local)?rule \w+:", log.read_text(errors="replace"), flags=re.M):
            return
        time.sleep(0.02)


def _unlock(directory: Path, first: bool, context: str) -> None:
    """After a SIGKILL, Snakemake's lock on the folder remains (it cannot tell a dead run from a
    live one) and a rerun stops with a message saying to run `snakemake --unlock`. The first time,
    the user's path: the rerun, its message, `snakemake --unlock`; later, the same removal of
    .snakemake/locks without the cost of two more Snakemake starts."""
    locks = directory / ".snakemake" / "locks"
    if not first:
        for lock in locks.glob("*"):
            lock.unlink()
        return
    result = subprocess.run(["snakemake", "--cores", "2"], cwd=directory, env=tool_env(), capture_output=True,
                            text=True, timeout=300)
    if result.returncode == 0:  # killed before it took the lock, and nothing left to do
        return
    assert "Directory cannot be locked" in result.stdout + result.stderr and "--unlock" in result.stderr, \
        f"{context}: {result.stdout}\n{result.stderr}"
    subprocess.run(["snakemake", "--unlock"], cwd=directory, env=tool_env(), capture_output=True, check=True,
                   timeout=300)
    assert not list(locks.glob("*"))


def _check_complete(directory: Path, context: str) -> None:
    """Every visible file under data/ and results/ is whole; anything else is a hidden temporary."""
    for root in ("data", "results"):
        for path in sorted((directory / root).rglob("*")):
            if not path.is_file() or path.name == ".gitignore":
                continue
            name = str(path.relative_to(directory))
            if path.name.startswith("."):
                assert TEMPORARY.fullmatch(path.name), f"{context}: unexpected hidden file {name}"
                continue
            try:
                if path.suffix == ".nc":
                    with xr.open_dataset(path, engine="netcdf4") as dataset:
                        dataset.load()
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif path.suffix == ".csv":
                    pd.read_csv(path)
                elif path.suffix == ".png":
                    assert path.read_bytes().endswith(PNG_END), "no IEND chunk at its end"
                elif path.suffix == ".gif":
                    assert path.read_bytes().endswith(b"\x3b"), "no GIF trailer at its end"
                elif path.suffix == ".pt":
                    torch.load(path, map_location="cpu", weights_only=True)
                elif path.suffix == ".md":
                    assert path.read_text(encoding="utf-8").endswith("\n"), "does not end with a newline"
                else:
                    raise AssertionError("no completeness check for this kind of file: add one")
            except Exception as exc:
                raise AssertionError(f"{context}: {name} is visible but not complete "
                                     f"({type(exc).__name__}: {exc})") from None


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
        if Path(name).name == "history.csv":
            continue
        if digest(first / name) != digest(second / name):
            different.append(name)
    assert not different, (f"same params and seed, different bytes: {different} (the second checkout was killed "
                           f"{KILLS} times and rerun: NUWA_KILLS=0 reruns these cases without kills)")


def _grid_size(directory: Path) -> tuple[int, int, int]:
    """(training runs, datasets, banks) of the params in ``directory``: the number of files to compare."""
    from nuwa import grid

    params = yaml.safe_load((directory / "params.yaml").read_text())
    datasets = len(params["grid"]["datasets"])
    return (len(grid.train_cells(params)), datasets,
            datasets * len(params["grid"]["variants"]) * len(params["grid"]["seeds"]))


def test_metrics_agree_in_every_numeric_field(two_checkouts):
    """The same check as the bytes, field by field, so that a difference names the metric."""
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith("metrics.json")]
    assert len(names) == _grid_size(first)[0]  # 6 in the tiny config
    for name in names:
        a, b = json.loads((first / name).read_text()), json.loads((second / name).read_text())
        numeric = {key for key, value in a.items() if isinstance(value, (int, float))}
        assert {"mse", "mae", "ssim", "psnr", "best_val_loss"} <= numeric
        assert {key: a[key] for key in numeric} == {key: b.get(key) for key in numeric}, name


def test_histories_agree_apart_from_wall_clock_seconds(two_checkouts):
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith("history.csv")]
    runs, datasets, _ = _grid_size(first)
    assert len(names) == runs + datasets  # training runs and upstream ViTs: 7 in the tiny config
    for name in names:
        assert comparable(first / name) == comparable(second / name), name


def test_netcdf_files_hold_no_paths_or_creation_times(two_checkouts):
    """Attributes (global and per variable) name neither the folder nor a date of writing."""
    first, second = two_checkouts
    names = [name for name in output_files(first) if name.endswith(".nc")]
    runs, datasets, banks = _grid_size(first)
    baselines = datasets * len(yaml.safe_load((first / "params.yaml").read_text())["grid"]["baselines"])
    # processed, saliency, banks, each run's examples and test losses, each baseline's losses: 19 in the tiny config
    assert len(names) == 2 * datasets + banks + 2 * runs + baselines
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


def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_bytes(reference, killed_and_rerun):
    """The kills landed mid-run (every visible file was complete after each: checked by the
    fixture), and the rerun's files are the uninterrupted run's, byte for byte."""
    if KILLS == 0:
        pytest.skip("NUWA_KILLS=0: the second checkout ran uninterrupted")
    expected_dir = reference[0]
    directory, killed, context = killed_and_rerun
    assert killed >= KILLS // 2, f"{context}: only {killed} kills landed mid-run"
    expected, got = output_files(expected_dir), output_files(directory)
    assert got == expected, f"{context}: files differ: extra {sorted(got - expected)}, missing {sorted(expected - got)}"
    differ = [name for name in sorted(expected) if comparable(directory / name) != comparable(expected_dir / name)]
    assert not differ, f"{context}: not byte-identical to the uninterrupted run: {differ}"
