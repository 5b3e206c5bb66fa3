import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

# pytest-xdist runs two workers on two cores: one thread each avoids oversubscription
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"


# Files in the order workers take them (seconds each in a whole `make test` run, two workers,
# 2026-12-04): longest first, so that no long file starts last and runs alone while the other
# worker idles. The first builds the suite's shared tiny run (`uninterrupted_tiny_run`), which
# the third and fourth use: the second needs none, so the other worker does not wait for it.
FILE_ORDER = (
    "test_workflow.py",  # 241
    "test_dvc_queue.py",  # 121
    "test_same_bytes.py",  # 136
    "test_slurm.py",  # 101
    "test_hostile_params.py",  # 46
    "test_concurrency.py",  # 32
    "test_bench.py",  # 30
    "test_resources.py",  # 27
    "test_backbones.py",  # 26
    "test_ingest_memory.py",  # 25
    "test_train_kill.py",  # 22
    "test_ddp.py",  # 21
)


def pytest_collection_modifyitems(config, items):
    """The files of FILE_ORDER first, in its order, then the rest in collection order:
    `--dist loadfile --no-loadscope-reorder` (``make test``) hands workers whole files in this
    order (xdist's own order, by number of tests per file, started the one-test DVC queue and
    Slurm files last)."""
    def rank(item) -> int:
        name = item.path.name
        return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)

    items.sort(key=rank)  # a stable sort keeps each file's tests, and the rest, in order


def fresh_checkout(directory: Path, params_text: str | None = None) -> Path:
    """The working tree's files under version control (uncommitted edits and new files included)
    in ``directory``, with the tiny params (or ``params_text``). Its profiles/default (a link to
    workflow/profiles/default, which sets rerun-incomplete) is what a user's rerun after a kill
    picks up."""
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
    (directory / "params.yaml").write_text(TINY_PARAMS.read_text() if params_text is None else params_text)
    assert (directory / "profiles" / "default" / "config.yaml").is_file(), "profiles/default missing"
    return directory


def start_snakemake(directory: Path, log) -> subprocess.Popen:
    """`snakemake --cores 2` in its own process group (a kill reaches its jobs too)."""
    return subprocess.Popen(["snakemake", "--cores", "2"], cwd=directory, env=tool_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def uninterrupted_run(directory: Path) -> tuple[float, float]:
    """Run the workflow to the end; its duration and Snakemake's start-up time (until the first
    job's log folder appears)."""
    started = time.monotonic()
    startup = None
    with open(directory / "snakemake.out", "w") as log:
        process = start_snakemake(directory, log)
        while process.poll() is None:
            if startup is None and (directory / "logs").exists():
                startup = time.monotonic() - started
            time.sleep(0.02)
    duration = time.monotonic() - started
    assert process.returncode == 0, (directory / "snakemake.out").read_text()
    return duration, startup or 0.0


@pytest.fixture(scope="session")
def uninterrupted_tiny_run(tmp_path_factory) -> tuple[Path, float, float]:
    """One uninterrupted `snakemake --cores 2` of the tiny config in a fresh checkout, built once
    for the whole suite: under pytest-xdist the first worker to ask builds it (under a file lock,
    in the temporary folder the workers share) and the others wait for it and reuse it. Read
    only: a test that changes a run works on a copy (:func:`copy_run`). Its folder, duration and
    Snakemake's start-up time."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each worker's own
    directory, done = shared / "uninterrupted_tiny_run", shared / "uninterrupted_tiny_run.json"
    with FileLock(str(shared / "uninterrupted_tiny_run.lock")):
        if not done.exists():  # not built, or a build that failed: (re)build it
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            duration, startup = uninterrupted_run(fresh_checkout(directory))
            done.write_text(json.dumps({"duration": duration, "startup": startup}))
    timing = json.loads(done.read_text())
    return directory, timing["duration"], timing["startup"]


def copy_run(source: Path, directory: Path) -> Path:
    """A copy of a finished workflow folder, modification times included, that Snakemake finds
    up to date (rules, params and inputs are recorded relative to the folder)."""
    shutil.copytree(source, directory, symlinks=True)
    return directory


@pytest.fixture
def tiny_params() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def tool_env() -> dict:
    """Environment for subprocesses: the venv's bin (nuwa, snakemake, dvc) first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("NUWA_THREADS", "1")
    return env


def make_workdir(directory: Path, params: dict | None = None) -> Path:
    """A copy of the workflow (Snakefile, rules, dvc.yaml) with the tiny params, as a user would have."""
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(REPO / name, directory / name)
    shutil.copytree(REPO / "workflow", directory / "workflow", symlinks=True)
    # the schema symlink points into the package; keep it resolvable in the copy
    target = directory / "workflow" / "schemas" / "params.schema.yaml"
    target.unlink()
    shutil.copy(REPO / "nuwa" / "schemas" / "params.schema.yaml", target)
    text = TINY_PARAMS.read_text() if params is None else yaml.safe_dump(params, sort_keys=False)
    (directory / "params.yaml").write_text(text)
    return directory


def output_files(directory: Path) -> set[str]:
    """The pipeline's outputs (data/ and results/) below a workflow folder, as relative paths."""
    return {str(p.relative_to(directory)) for root in ("data", "results") for p in (directory / root).rglob("*")
            if p.is_file() and p.name != ".gitignore"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TIMED_COLUMN = "seconds"  # wall clock in history.csv (train and pretrain): the only timing field


def comparable(path: Path) -> str:
    """What two runs of the same params must agree on: the file's digest; for a history.csv,
    its text without the wall-clock column."""
    if path.name == "history.csv":
        import pandas as pd

        frame = pd.read_csv(path)
        assert TIMED_COLUMN in frame.columns, f"{path}: expected a {TIMED_COLUMN!r} column"
        buffer = io.StringIO()
        frame.drop(columns=TIMED_COLUMN).to_csv(buffer, index=False)
        return buffer.getvalue()
    return digest(path)


def cli_fails_cleanly(argv: list[str], capsys, culprit: Path, *phrases: str, out: Path | None = None) -> str:
    """`nuwa.cli.main(argv)` exits 2 with one stderr line ``nuwa <stage>: error: <culprit>: ...``
    holding every phrase; with ``out``, nothing (no file, no temporary) is left in that folder."""
    from nuwa.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"nuwa {argv[0]}: error: {culprit}: "), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    if out is not None:
        left = [str(p) for p in out.rglob("*")] if out.exists() else []
        assert left == [], f"files written (or temporaries left) by a failed {argv[0]}: {left}"
    return lines[0]


def killed_at_loss_call(monkeypatch, call: int, run) -> None:
    """Run ``run()`` with ``nuwa.train.training_loss`` interrupted (KeyboardInterrupt, as a kill)
    at its ``call``-th call, check that the run stopped there, and put the real loss back."""
    import nuwa.train as train_module

    real_loss, calls = train_module.training_loss, {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_loss", dying_loss)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(train_module, "training_loss", real_loss)
