"""Workflow planning overhead: ``nuwa bench dag``.

Times ``snakemake --dry-run`` of our workflow (the Snakefile and workflow/rules of the
repository, copied into a temporary folder with the given parameter file, by default the
paper's full grid ``experiments/table1.yaml``) against a trivial Snakefile, written in the same run,
that plans the same number of jobs: one rule with a wildcard expanded to N - 2 targets, one
rule aggregating them and ``all``. The trivial workflow is Snakemake's own cost of planning N
jobs; the difference is ours (parsing and validating params.yaml, input functions, params,
the rules' dependencies).

Every dataset ``source`` of the parameter file is replaced by an empty placeholder folder in
the temporary copy: the DAG is the same, and a dry run must not read data anyway.

Both dry runs start from the same state (no outputs, a fresh ``.snakemake`` folder), run
alternately ``repeats`` times after one untimed run each (it counts the jobs and warms the
file caches), and the best is kept.

The rows report planning throughput (jobs per second of wall clock, and per CPU second of the
``snakemake`` process, user + system), so that ``ratio = value / reference_value =
trivial time / our time``; 1 is the floor Snakemake itself sets, the goal is >= 0.5 (our dry
run at most twice the trivial one). The seconds are printed to stderr.
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUMMARY = "snakemake --dry-run of our workflow (full grid) vs a trivial Snakefile with as many jobs (jobs/s)"

# a checkout's root: nuwa/bench/dag.py -> the folder holding Snakefile and workflow/
REPOSITORY = Path(__file__).resolve().parents[2]

TRIVIAL_SNAKEFILE = """\
# Trivial workflow with the same number of jobs as ours: Snakemake's own planning cost.
LEAVES = {leaves}


rule all:
    default_target: True
    input:
        "summary.txt",


rule summary:
    input:
        expand("leaf/{{i}}.txt", i=range(LEAVES)),
    output:
        "summary.txt",
    shell:
        "cat {{input}} > {{output}}"


rule leaf:
    output:
        "leaf/{{i}}.txt",
    shell:
        "echo {{wildcards.i}} > {{output}}"
"""


def add_arguments(parser) -> None:
    parser.add_argument("--params", type=Path,
                        help="parameter file planned (default: experiments/table1.yaml of the workflow folder)")
    parser.add_argument("--workflow", type=Path,
                        help="folder with Snakefile and workflow/ (default: this checkout, else the current folder)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed dry runs of each workflow, best kept (default 3), after one untimed run each")


def run(args, progress) -> list[dict]:
    return benchmark(params=args.params, workflow=args.workflow, repeats=args.repeats, progress=progress)


def workflow_root(workflow: Path | None = None) -> Path:
    if workflow is not None:
        root = Path(workflow)
    elif (REPOSITORY / "Snakefile").is_file():
        root = REPOSITORY
    else:
        root = Path.cwd()
    if not (root / "Snakefile").is_file() or not (root / "workflow").is_dir():
        raise FileNotFoundError(f"{root}: no Snakefile and workflow/ folder (give --workflow)")
    return root


def snakemake_executable() -> str:
    candidate = Path(sys.executable).parent / "snakemake"
    return str(candidate) if candidate.exists() else (shutil.which("snakemake") or "snakemake")


def copy_workflow(root: Path, params: dict, directory: Path) -> None:
    """Our workflow in ``directory`` with ``params`` as params.yaml; sources become placeholders."""
    import yaml

    shutil.copy(root / "Snakefile", directory / "Snakefile")
    # symlinks followed: workflow/schemas links into the package
    shutil.copytree(root / "workflow", directory / "workflow", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = dict(params, datasets={name: dict(entry) for name, entry in params["datasets"].items()})
    for name, entry in params["datasets"].items():
        if "source" in entry:
            placeholder = directory / "placeholders" / name
            placeholder.mkdir(parents=True)
            (placeholder / "PLACEHOLDER").write_text("a dry run reads no data\n")
            entry["source"] = f"placeholders/{name}"
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def write_trivial(directory: Path, jobs: int) -> None:
    (directory / "Snakefile").write_text(TRIVIAL_SNAKEFILE.format(leaves=max(1, jobs - 2)))


def planned_jobs(output: str) -> int:
    """The ``total`` of a dry run's job table."""
    match = re.search(r"^total\s+(\d+)\s*$", output, flags=re.M)
    if not match:
        raise RuntimeError(f"no job table in the dry run's output:\n{output[-2000:]}")
    return int(match.group(1))


def dry_run(directory: Path, env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the snakemake process, its output) of one dry run."""
    shutil.rmtree(directory / ".snakemake", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([snakemake_executable(), "--dry-run", "--cores", "1"], cwd=directory, env=env,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"snakemake --dry-run failed in {directory} ({result.returncode}):\n{output[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, output


def benchmark(params: Path | None = None, workflow: Path | None = None, repeats: int = 3,
              progress=None) -> list[dict]:
    import os

    from nuwa.config import load_params

    root = workflow_root(workflow)
    params_path = Path(params) if params is not None else root / "experiments" / "table1.yaml"
    settings = load_params(params_path)  # an experiment file: merged with the file it extends
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="nuwa-bench-dag-") as temporary:
        ours, trivial = Path(temporary) / "ours", Path(temporary) / "trivial"
        ours.mkdir()
        trivial.mkdir()
        copy_workflow(root, settings, ours)
        jobs = planned_jobs(dry_run(ours, env)[2])  # untimed: counts the jobs, warms the caches
        write_trivial(trivial, jobs)
        trivial_jobs = planned_jobs(dry_run(trivial, env)[2])
        if trivial_jobs != jobs:
            raise RuntimeError(f"the trivial Snakefile plans {trivial_jobs} jobs, ours {jobs}")
        if progress:
            progress(f"dag: {jobs} jobs planned from {params_path}")
        best = {"ours": [float("inf"), float("inf")], "trivial": [float("inf"), float("inf")]}
        for _ in range(max(1, repeats)):
            for name, directory in (("ours", ours), ("trivial", trivial)):  # alternately: same machine load
                wall, cpu, _ = dry_run(directory, env)
                best[name] = [min(best[name][0], wall), min(best[name][1], cpu)]
            if progress:
                progress(f"dag: ours {wall_cpu(best['ours'])}, trivial {wall_cpu(best['trivial'])} (best so far)")
    rows = []
    for index, clock in enumerate(("wall", "cpu")):
        ours_seconds, trivial_seconds = best["ours"][index], best["trivial"][index]
        rows.append({"benchmark": "dag", "case": f"snakemake --dry-run/{params_path.name}/{jobs} jobs/{clock}",
                     "value": jobs / ours_seconds, "unit": "jobs/s" if clock == "wall" else "jobs/cpu-s",
                     "reference": "trivial_snakefile", "reference_value": jobs / trivial_seconds,
                     "ratio": trivial_seconds / ours_seconds})
    return rows


def wall_cpu(pair) -> str:
    return f"{pair[0]:.2f} s wall / {pair[1]:.2f} s cpu"
