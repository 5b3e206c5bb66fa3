import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

# pytest-xdist runs two workers on two cores: one thread each avoids oversubscription
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = REPO / "tests" / "data" / "tiny_params.yaml"


# the files that take minutes, longest first (seconds measured in a whole `make test` run, two
# workers: 249, 215, 106, 102)
LONGEST_FILES = ("test_workflow.py", "test_same_bytes.py", "test_dvc_queue.py", "test_slurm.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the other files holding end-to-end (`slow`) tests, then the
    rest in collection order: `--dist loadfile --no-loadscope-reorder` (``make test``) hands
    workers whole files in this order, so the minutes-long files start at once instead of ending
    the run on one worker while the other idles (xdist's own order, by number of tests per file,
    started the one-test DVC queue and Slurm files last)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        if item.path.name in LONGEST_FILES:
            return 0, LONGEST_FILES.index(item.path.name)
        return (1 if item.path in slow_files else 2), 0

    items.sort(key=rank)  # a stable sort keeps each file's tests, and the rest, in order


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
