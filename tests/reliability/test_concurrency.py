"""Concurrency: two runs on one folder, two writers of one output, the numba cache (the DVC queue:
test_dvc_queue.py, a file of its own so that the test runner can run it beside these).

Real processes throughout: `snakemake`, `dvc` (its celery queue workers included) and `nuwa`.
A run that must be caught in the middle is frozen there (SIGSTOP to its process group) rather
than raced against, so that every case is decided by the order of events, not by timing.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import digest, make_workdir, tool_env

pytestmark = pytest.mark.slow

DEADLINE = 300  # seconds: generous bounds on waits, never asserted as durations


def run(command: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def wait_for(condition, what: str, process: subprocess.Popen | None = None, poll: float = 0.002):
    """Poll ``condition`` until it returns something true; fail if ``process`` ends first."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"the process ended ({process.returncode}) before {what}:\n{output[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"gave up waiting for {what}")


@contextlib.contextmanager
def background(command: list[str], cwd: Path, env: dict | None = None):
    """A process in its own process group, killed (with its children) on the way out."""
    process = subprocess.Popen(command, cwd=cwd, env=env or tool_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        if process.stdout:
            process.stdout.close()


def state(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``directory`` (.snakemake's bookkeeping included) with size and mtime."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


# -- two runs on one folder --------------------------------------------------------------------

def test_a_second_snakemake_on_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    directory = make_workdir(tmp_path)
    locks = directory / ".snakemake" / "locks"
    with background(["snakemake", "--cores", "1"], directory) as first:
        wait_for(lambda: locks.is_dir() and any(locks.iterdir()), "the first run holds the lock", first)
        wait_for(lambda: (directory / "logs").is_dir(), "the first run's first job started", first)
        os.killpg(first.pid, signal.SIGSTOP)  # frozen while it holds the lock: the folder stands still
        try:
            before = state(directory)
            second = run(["snakemake", "--cores", "1"], directory, check=False)
            after = state(directory)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    assert "Directory cannot be locked" in output and "--unlock" in output, output
    # nothing changed but the refused run's own log in .snakemake/log/
    new_logs = {name for name in set(after) - set(before) if name.startswith(".snakemake/log/")}
    assert {name: after[name] for name in set(after) - new_logs} == before, "the refused run changed files"
    # the first run was killed (SIGKILL: its lock stays); --unlock lets the next run go on
    assert any(locks.iterdir()), "a killed run's lock stays"
    run(["snakemake", "--unlock"], directory)
    assert not locks.is_dir() or not any(locks.iterdir())
    planned = run(["snakemake", "--cores", "1", "--dry-run"], directory).stdout
    assert "rule ingest" in planned or "ingest" in planned


def _dvc_workdir(directory: Path, params: dict | None = None) -> Path:
    make_workdir(directory, params)
    run(["git", "init", "-q"], directory)
    run(["git", "config", "user.email", "test@example.com"], directory)
    run(["git", "config", "user.name", "nuwa tests"], directory)
    run(["dvc", "init", "-q"], directory)
    run(["dvc", "config", "core.autostage", "false"], directory)
    return directory


def test_a_second_dvc_repro_on_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    directory = _dvc_workdir(tmp_path)
    with background(["dvc", "repro"], directory) as first:
        wait_for(lambda: (directory / "data" / "processed").is_dir(), "the first run's first stage started",
                 first)
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            before = state(directory)
            second = run(["dvc", "repro"], directory, check=False)
            after = state(directory)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
    output = second.stdout + second.stderr
    assert second.returncode != 0, output
    # DVC's repository lock, or its per-output lock naming the running process
    assert "Unable to acquire lock" in output or ("is busy" in output and f"PID {first.pid}" in output), output
    after = {name: value for name, value in after.items() if not name.startswith(".dvc/tmp/")}
    before = {name: value for name, value in before.items() if not name.startswith(".dvc/tmp/")}
    assert after == before, "the refused run changed files"


# -- two writers of one output ------------------------------------------------------------------

@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A workflow folder with the tiny dataset ingested (the bank's only input for 'random')."""
    directory = make_workdir(tmp_path_factory.mktemp("processed"))
    run(["nuwa", "ingest", "--dataset", "moving_glyphs", "--out", "data/processed/moving_glyphs.nc"], directory)
    return directory


def bank_command(out: str) -> list[str]:
    return ["nuwa", "bank", "--dataset", "moving_glyphs", "--variant", "random", "--seed", "0",
            "--data", "data/processed/moving_glyphs.nc", "--out", out]


def test_two_writers_of_one_output_both_finish_and_leave_one_whole_file(processed):
    """E.g. `snakemake` and `dvc repro` (whose locks do not see each other) in one folder: the
    second writer starts while the first is in the middle of writing the same file."""
    out = processed / "results" / "bank" / "same.nc"
    reference = processed / "results" / "bank" / "alone.nc"
    run(bank_command(str(reference.relative_to(processed))), processed)
    temporaries = lambda: list(out.parent.glob(f".{out.name}.*.tmp"))

    def writing():  # the temporary file exists and the NetCDF library has begun to fill it
        with contextlib.suppress(FileNotFoundError):
            return any(p.stat().st_size > 0 for p in temporaries())

    with background(bank_command("results/bank/same.nc"), processed) as first:
        wait_for(writing, "the first writer is writing its temporary file", first)
        os.killpg(first.pid, signal.SIGSTOP)  # frozen in the middle of writing
        try:
            second = run(bank_command("results/bank/same.nc"), processed, check=False)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        output, _ = first.communicate(timeout=DEADLINE)
    assert second.returncode == 0, second.stderr
    assert first.returncode == 0, f"the first writer failed after the second one wrote:\n{output[-3000:]}"
    assert digest(out) == digest(reference)
    assert not temporaries()
    # a writer killed mid-write leaves its temporary; the next writer (no live one left) removes it
    with background(bank_command("results/bank/same.nc"), processed) as killed:
        wait_for(writing, "the writer to be killed is writing", killed)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=DEADLINE)
    assert temporaries()
    run(bank_command("results/bank/same.nc"), processed)
    assert not temporaries() and digest(out) == digest(reference)


# -- numba's on-disk cache, shared by every process ---------------------------------------------

def _index_entries(cache: Path, function: str) -> list[tuple]:
    """(signature, data file) of each entry of numba's cache index of nuwa.bank_kernel.<function>."""
    entries = []
    for index in cache.rglob(f"bank_kernel.{function}-*.nbi"):
        with open(index, "rb") as stream:
            pickle.load(stream)  # numba's version
            _, overloads = pickle.loads(stream.read())
        entries += [(key[0], name) for key, name in overloads.items()]
    return entries


def test_the_kernel_compiles_one_signature_whatever_the_inputs_writability(tmp_path):
    """Each process adds the signatures it meets to numba's shared index, numbering data files
    in the order it met them: two processes meeting different signatures first, at once,
    could leave an index entry pointing at the other signature's code. One signature (the
    kernel's inputs normalised) leaves nothing to mix up."""
    env = dict(tool_env(), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    script = """
import numpy as np
from nuwa import bank, bank_kernel
rng = np.random.default_rng(0)
x = rng.random((2, 4, 1, 8, 8), dtype=np.float32)
causal = np.ones((2, 4, 2, 2), dtype=np.int8); causal[:, :, 0, 0] = 0
draws = bank.draw_interventions(rng, causal.shape, 2.0)
kwargs = dict(patch_size=4, history=2, history_decay=0.5, exclude_causal_neighbours=True)
writable = bank.apply_interventions(x, causal, draws, **kwargs)
x.setflags(write=False)
readonly = bank.apply_interventions(x, causal, draws, **kwargs)
assert np.array_equal(writable, readonly)
print(len(bank_kernel._intervene.signatures), len(bank_kernel._stream_copy.signatures))
"""
    counts = run(["python", "-c", script], tmp_path, env=env).stdout.split()
    assert counts == ["1", "2"], counts  # _stream_copy: a variable offset and a literal 0
    assert len(_index_entries(tmp_path / "numba", "_intervene")) == 1


def test_processes_compiling_into_an_empty_numba_cache_at_once_agree(processed, tmp_path):
    """Two banks compiled at the same moment into one empty cache; a third process then runs
    from that cache: the three files are identical and the index is whole."""
    env = dict(tool_env(), NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    runs = [subprocess.Popen(bank_command(f"results/bank/cold{i}.nc"), cwd=processed, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    for process in runs:
        output, _ = process.communicate(timeout=DEADLINE)
        assert process.returncode == 0, output
    entries = _index_entries(tmp_path / "numba", "_intervene")
    assert len(entries) == 1, entries
    run(bank_command("results/bank/warm.nc"), processed, env=env)
    folder = processed / "results" / "bank"
    assert digest(folder / "cold1.nc") == digest(folder / "cold2.nc") == digest(folder / "warm.nc")


# -- the DVC experiment queue -------------------------------------------------------------------
