"""Copy what an experiment run has finished into docs/results/<name>/, with the provenance of
every training run: the commit it ran, the machine, the date and the wall time (issue 21).

Run from the checkout that ran the experiment (a clone with its own venv, started by a script
that appends `start <UTC time> commit <sha>` to experiment.log before each sitting):

    python docs/results/publish.py table1_cpu --experiment experiments/table1_cpu.yaml \
        --to /work/main/docs/results

A finished grid: it brings the tables and figures up to date (`snakemake`, after a dry run has
shown it would train nothing: a grid whose params changed since its runs is refused, not
retrained) and writes the Snakemake report. Arguments after `--` go to Snakemake, e.g. the
generalisation grid's `--rerun-triggers mtime input software-env code` (docs/results/README.md).
While another Snakemake holds the checkout (run_queue.sh running the next grid), a finished grid
is published as a running one is, without the report. A grid still running: the tables come from the
runs that have finished (`nuwa tables --finished-only`, which says how many under the summary's
title), and the figures of each dataset whose every run has finished are drawn by the workflow's
own commands (`nuwa figures`, `nuwa diagnostics`) straight into the results folder: no figure of
a dataset still training, and none another experiment of the same checkout left in
results/figures. Either way it copies the tables, this experiment's figures, the saliency
diagnostics (CSV), the report and `runs.csv` (one row per finished training run).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from base64 import urlsafe_b64encode
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


def job_end(path: Path) -> float:
    """When the Snakemake job that wrote ``path`` ended (its record under .snakemake/metadata, named
    as Snakemake's file persistence names it: the path, URL-safe base64); the file's own time
    only where no record exists. Not the file's time first: carry_times.py moves those at every
    sitting, which would date every run to the last one."""
    encoded = urlsafe_b64encode(str(path).encode()).decode()
    parts = [encoded[i:i + 254] for i in range(0, len(encoded), 254)]  # names over 255 bytes are split
    record = Path(".snakemake/metadata", *(["@" + part for part in parts[:-1]] + parts[-1:]))
    if record.exists():
        end = json.loads(record.read_text()).get("endtime")
        if end:
            return float(end)
    return path.stat().st_mtime


def run_rows(params: dict, log: Path) -> list[dict]:
    """A row per finished training run: its axes, commit, machine, finish date, wall time and result."""
    starts, machine, rows = sittings(log), cpu_model(), []
    for cell in grid.train_cells(params):
        metrics_file = Path(cell.file("metrics.json"))
        if not metrics_file.exists():
            continue
        metrics = json.loads(metrics_file.read_text())
        finished = dt.datetime.fromtimestamp(job_end(metrics_file), dt.timezone.utc)
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


# the figures stage's outputs of one dataset, by the option of `nuwa figures` that names each
FIGURES = {"--out-predictions": grid.PREDICTION_FIGURE, "--out-animation": grid.PREDICTION_ANIMATION,
           "--out-learning-curves": grid.LEARNING_CURVES_FIGURE, "--out-saliency": grid.SALIENCY_FIGURE,
           "--out-comparisons": grid.COMPARISON_FIGURE, "--out-lead-time": grid.LEAD_TIME_FIGURE}


def draw_figures(experiment: str, dataset: str, out: Path) -> None:
    """The figures stage's command for one dataset whose runs have all finished, into ``out/figures``."""
    command = ["nuwa", "figures", "--params", experiment, "--dataset", dataset]
    for option, template in FIGURES.items():
        command += [option, str(out / "figures" / Path(template.format(dataset=dataset)).name)]
    subprocess.run(command, check=True)


def diagnose(experiment: str, dataset: str, out: Path) -> None:
    """The saliency diagnostics of a dataset into ``out``: the workflow's files where it made them,
    else the diagnostics stage's command (once its saliency file exists)."""
    table, per_seed = grid.DIAGNOSTICS.format(dataset=dataset), grid.DIAGNOSTICS_PER_SEED.format(dataset=dataset)
    figure = grid.DIAGNOSTICS_FIGURE.format(dataset=dataset)
    if all(Path(path).exists() for path in (table, per_seed, figure)):
        shutil.copy(table, out / "diagnostics")
        shutil.copy(per_seed, out / "diagnostics")
        shutil.copy(figure, out / "figures")
    elif Path(grid.SALIENCY.format(dataset=dataset)).exists():
        subprocess.run(["nuwa", "diagnostics", "--params", experiment, "--dataset", dataset,
                        "--out", str(out / "diagnostics" / Path(table).name),
                        "--out-per-seed", str(out / "diagnostics" / Path(per_seed).name),
                        "--out-figure", str(out / "figures" / Path(figure).name)], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the results folder's name (docs/results/<name>)")
    parser.add_argument("--experiment", required=True, help="the experiment file the run used")
    parser.add_argument("--to", default="docs/results", help="where the results folder goes (default: docs/results)")
    parser.add_argument("snakemake_arguments", nargs="*", metavar="SNAKEMAKE_ARGUMENT",
                        help="after --: further arguments for Snakemake once the grid has finished")
    args = parser.parse_args()

    params = load_params(args.experiment)
    rows = run_rows(params, Path("experiment.log"))
    total = len(grid.train_cells(params))
    if not rows:
        raise SystemExit(f"{args.experiment}: no training run has finished yet: nothing to publish")
    report = Path("results/report.html")
    snakemake = ["snakemake", "--cores", "2", "--configfile", args.experiment, *args.snakemake_arguments]
    # the whole grid's Snakemake publication needs the checkout to itself: while another grid of
    # run_queue.sh holds it, a finished grid is published as a running one is, and its report waits
    whole = len(rows) == total and not any(Path(".snakemake/locks").glob("*"))
    if len(rows) == total and not whole:
        print(f"{args.experiment}: every run has finished, but another Snakemake holds this checkout: tables and "
              "figures by `nuwa`, the report at the next publication", file=sys.stderr)
    if whole:
        would_run = subprocess.run([*snakemake, "--dry-run", "--quiet", "rules"], capture_output=True, text=True,
                                   check=True).stdout
        trains = re.search(r"^train\s+(\d+)$", would_run, re.MULTILINE)
        if trains:
            raise SystemExit(f"{args.experiment}: every run has finished, but Snakemake would train {trains.group(1)} "
                             "cells again (its params or code changed since; `snakemake -n` says why). Publishing "
                             "trains nothing: resume the grid with run_experiment.sh, or pass the rerun triggers "
                             "the grid ran with after --")
    out = Path(args.to) / args.name
    # built beside and swapped in at the end: a publication that fails half-way leaves the last one whole
    build = out.with_name(out.name + ".partial")
    shutil.rmtree(build, ignore_errors=True)
    (build / "figures").mkdir(parents=True)
    (build / "diagnostics").mkdir()
    datasets = params["grid"]["datasets"]
    if not whole:
        subprocess.run(["nuwa", "tables", "--params", args.experiment, "--finished-only"], check=True)
        report.unlink(missing_ok=True)  # a report of the whole grid waits for the whole grid
        unfinished = {cell.dataset for cell in grid.train_cells(params) if not Path(cell.file("metrics.json")).exists()}
        for dataset in datasets:
            if dataset not in unfinished:
                draw_figures(args.experiment, dataset, build)
            diagnose(args.experiment, dataset, build)
    else:
        subprocess.run(snakemake, check=True)
        subprocess.run(["snakemake", "--configfile", args.experiment, "--report", str(report)], check=True)
        for dataset in datasets:
            for template in FIGURES.values():
                shutil.copy(template.format(dataset=dataset), build / "figures")
            diagnose(args.experiment, dataset, build)
        shutil.copy(report, build / "report.html")
    if len(params["grid"]["train_percents"]) > 1:  # the tables stage's scarcity figure, of this run's tables
        shutil.copy(grid.SCARCITY_FIGURE, build / "figures")
    shutil.copytree("results/tables", build / "tables")
    with open(build / "runs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    build.rename(out)
    print(f"{out}: {len(rows)} of {total} training runs finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
