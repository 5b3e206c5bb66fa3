"""Crashes and kills: `snakemake --cores 2` killed with SIGKILL (its whole process group: Snakemake
and every running `nuwa` job) at 10 random moments across a run, then rerun, completes with
every output byte-identical to an uninterrupted run's; no half-written file is ever visible.

The moments are drawn from a seeded RNG (seed: $NUWA_KILL_SEED, default below) within the work
still left, estimated from the measured time of the uninterrupted run and the share of outputs
still missing; a failure prints the seed and the moments (seconds after each start), so it can
be replayed. After a SIGKILL, Snakemake's lock on the folder remains: the rerun says so and
names `snakemake --unlock`, which the test runs (as a user would) before rerunning.
The suite runs the tiny config (tests/data/tiny_params.yaml). By hand, on another config (e.g.
the default one, ~8 min uninterrupted here):

    NUWA_RELIABILITY_PARAMS=params.yaml pytest -q tests/reliability/test_kills.py

(relative dataset `source` paths are taken relative to that file's folder).

Compared bytes: every file under data/ and results/, except the wall-clock column `seconds` of
the `history.csv` files (training and pretraining time so far, which a resumed run measures
differently); those files are compared with that column dropped. metrics.json holds no time.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
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

from conftest import REPO, digest, make_workdir, output_files, tool_env

pytestmark = pytest.mark.slow

KILLS = 10
SEED = int(os.environ.get("NUWA_KILL_SEED", "7031"))
PNG_END = b"IEND\xaeB`\x82"
TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")
TIMED_COLUMN = "seconds"  # wall clock in history.csv (train and pretrain)


def _params() -> dict | None:
    path = os.environ.get("NUWA_RELIABILITY_PARAMS")
    if not path:
        return None  # make_workdir's tiny config
    path = Path(path).resolve()
    params = yaml.safe_load(path.read_text())
    for entry in params["datasets"].values():
        source = entry.get("source")
        if source and not os.path.isabs(source):
            entry["source"] = str(path.parent / source)
    return params


def _workdir(directory: Path) -> Path:
    """make_workdir plus the checkout's profiles/ (Snakemake finds a workflow's default profile
    only at profiles/default beside the Snakefile; it links to workflow/profiles/default, which
    sets rerun-incomplete: a rerun after a kill rebuilds the killed jobs' outputs)."""
    make_workdir(directory, _params())
    assert (REPO / "profiles" / "default" / "config.yaml").is_file(), "profiles/default missing from the checkout"
    shutil.copytree(REPO / "profiles", directory / "profiles", symlinks=True)
    return directory


def _start(directory: Path, log) -> subprocess.Popen:
    return subprocess.Popen(["snakemake", "--cores", "2"], cwd=directory, env=tool_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its outputs, its duration, and Snakemake's start-up time (until the
    first job's log folder appears), over which the kill moments are spread."""
    directory = _workdir(tmp_path_factory.mktemp("uninterrupted"))
    started = time.monotonic()
    startup = None
    with open(directory / "snakemake.out", "w") as log:
        process = _start(directory, log)
        while process.poll() is None:
            if startup is None and (directory / "logs").exists():
                startup = time.monotonic() - started
            time.sleep(0.02)
    duration = time.monotonic() - started
    assert process.returncode == 0, (directory / "snakemake.out").read_text()
    return directory, duration, startup or 0.0


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
                elif path.suffix == ".pt":
                    torch.load(path, map_location="cpu", weights_only=True)
                elif path.suffix == ".md":
                    assert path.read_text(encoding="utf-8").endswith("\n"), "does not end with a newline"
                else:
                    raise AssertionError("no completeness check for this kind of file: add one")
            except Exception as exc:
                raise AssertionError(f"{context}: {name} is visible but not complete "
                                     f"({type(exc).__name__}: {exc})") from None


def _comparable(path: Path) -> str:
    if path.name == "history.csv":
        frame = pd.read_csv(path)
        assert TIMED_COLUMN in frame.columns, f"{path}: expected a {TIMED_COLUMN!r} column"
        buffer = io.StringIO()
        frame.drop(columns=TIMED_COLUMN).to_csv(buffer, index=False)
        return buffer.getvalue()
    return digest(path)


def test_sigkill_at_random_moments_then_rerun_gives_the_uninterrupted_bytes(reference, tmp_path):
    expected_dir, duration, startup = reference
    rng = random.Random(SEED)
    expected_count = len(output_files(expected_dir))
    delays: list[float] = []

    def context() -> str:
        return (f"NUWA_KILL_SEED={SEED}: SIGKILL after {', '.join(f'{d:.2f}' for d in delays)} s of each run "
                f"(uninterrupted run {duration:.1f} s, Snakemake start-up {startup:.2f} s)")

    directory = _workdir(tmp_path)
    killed = 0
    for attempt in range(KILLS):
        if attempt:
            _unlock(directory, first=attempt == 1, context=context())
        # a moment within the work left (estimated from the outputs still missing), so that the
        # kills spread across the whole run instead of the run ending before them
        left = 1 - len(output_files(directory)) / expected_count
        delays.append(startup + rng.uniform(0.2, 1.0) * left * (duration - startup) / (KILLS - attempt))
        with open(directory / f"snakemake.{attempt}.out", "w") as log:
            process = _start(directory, log)
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
    assert killed >= KILLS // 2, f"{context()}: only {killed} kills landed mid-run"

    # rerun until complete (the default profile sets rerun-incomplete)
    _unlock(directory, first=killed == 1, context=context())
    for attempt in range(2):
        result = subprocess.run(["snakemake", "--cores", "2"], cwd=directory, env=tool_env(), capture_output=True,
                                text=True, timeout=max(900, 4 * duration))
        if result.returncode == 0:
            break
    assert result.returncode == 0, f"{context()}: the rerun failed:\n{result.stdout}\n{result.stderr}"
    _check_complete(directory, f"{context()}; after the rerun")

    expected, got = output_files(expected_dir), output_files(directory)
    assert got == expected, f"{context()}: files differ: extra {sorted(got - expected)}, missing {sorted(expected - got)}"
    differ = [name for name in sorted(expected) if _comparable(directory / name) != _comparable(expected_dir / name)]
    assert not differ, f"{context()}: not byte-identical to the uninterrupted run: {differ}"
