"""Copy what an experiment run has finished into docs/results/<name>/, with the provenance of
every training run: the commit it ran, the machine, the date and the wall time (issue 21).

Run from the checkout that ran the experiment (a clone with its own venv, started by a script
that appends `start <UTC time> commit <sha>` to experiment.log before each sitting):

    python docs/results/publish.py table1_cpu --experiment experiments/table1_cpu.yaml \
        --to /work/main/docs/results

A finished grid: it brings the tables and figures up to date (`snakemake`, which trains
nothing then) and writes the Snakemake report. A grid still running: the tables come from the
runs that have finished (`nuwa tables --finished-only`, which says how many under the summary's
title) and the figures that exist are copied as they are. Either way it copies the tables, the
figures, the report and `runs.csv` (one row per finished training run).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

from nuwa import grid
from nuwa.config import load_params


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cores = open("/proc/cpuinfo").read().count("processor\t:")
            return f"{line.split(':', 1)[1].strip()}, {cores} vCPUs"
    return "unknown"


def sittings(log: Path) -> list[tuple[dt.datetime, str]]:
    """(start time, commit) of each sitting of the run, from experiment.log."""
    rows = []
    for line in log.read_text().splitlines() if log.exists() else ():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "start" and parts[2] == "commit":
            rows.append((dt.datetime.fromisoformat(parts[1].replace("Z", "+00:00")), parts[3]))
    return sorted(rows)


def run_rows(params: dict, log: Path) -> list[dict]:
    """A row per finished training run: its axes, commit, machine, finish date, wall time and result."""
    starts, machine, rows = sittings(log), cpu_model(), []
    for cell in grid.train_cells(params):
        metrics_file = Path(cell.file("metrics.json"))
        if not metrics_file.exists():
            continue
        metrics = json.loads(metrics_file.read_text())
        finished = dt.datetime.fromtimestamp(metrics_file.stat().st_mtime, dt.timezone.utc)
        commit = next((sha for when, sha in reversed(starts) if when <= finished), "unknown")
        benchmark = Path("logs/benchmarks/train") / (str(cell.run_dir).removeprefix("results/runs/") + ".tsv")
        wall = ""
        if benchmark.exists():
            with open(benchmark) as handle:
                wall = next(csv.DictReader(handle, delimiter="\t"))["s"]
        rows.append({**{axis: getattr(cell, axis) for axis in grid.AXES}, "commit": commit, "machine": machine,
                     "finished_utc": finished.strftime("%Y-%m-%dT%H:%M:%SZ"), "wall_seconds": wall,
                     "steps": metrics.get("steps"), "best_step": metrics.get("best_step"), "mse": metrics.get("mse")})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the results folder's name (docs/results/<name>)")
    parser.add_argument("--experiment", required=True, help="the experiment file the run used")
    parser.add_argument("--to", default="docs/results", help="where the results folder goes (default: docs/results)")
    args = parser.parse_args()

    params = load_params(args.experiment)
    rows = run_rows(params, Path("experiment.log"))
    total = len(grid.train_cells(params))
    if not rows:
        raise SystemExit(f"{args.experiment}: no training run has finished yet: nothing to publish")
    report = Path("results/report.html")
    if len(rows) < total:
        subprocess.run(["nuwa", "tables", "--params", args.experiment, "--finished-only"], check=True)
        report.unlink(missing_ok=True)  # a report of the whole grid waits for the whole grid
    else:
        subprocess.run(["snakemake", "--cores", "2", "--configfile", args.experiment], check=True)
        subprocess.run(["snakemake", "--configfile", args.experiment, "--report", str(report)], check=True)
    out = Path(args.to) / args.name
    if out.exists():
        shutil.rmtree(out)
    (out / "figures").mkdir(parents=True)
    shutil.copytree("results/tables", out / "tables")
    for figure in sorted(Path("results/figures").glob("*")):
        shutil.copy(figure, out / "figures" / figure.name)
    if report.exists():
        shutil.copy(report, out / "report.html")
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{out}: {len(rows)} of {total} training runs finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
