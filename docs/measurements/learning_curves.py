"""Ori's learning curves for each dataset x backbone of an experiment file: what its training
budget (train.steps) is chosen from (issue 21). Ori alone: never a variant of the method.

    python docs/measurements/learning_curves.py experiments/table1_cpu.yaml \
        --steps 250 500 1000 2000 4000 --out docs/measurements/2026-12-07-learning-curves

The learning rate follows a one-cycle schedule over the whole budget, so the validation loss
at step s of a 4,000-step run is not what a 500-step run reaches: each budget is its own run,
and the curve that chooses the budget is the best validation loss against the budget. Every
run also keeps its history (train and validation loss against step) and its test metrics,
beside the persistence baseline's on the same test windows.

The processed data, Ori's (empty) bank and the persistence baseline come from the workflow
itself (`snakemake --until`); each training run is the workflow's own command, `nuwa train`,
with the experiment's params and only train.steps changed. Runs that finished are skipped and
an interrupted one resumes from its checkpoint, so the script can be stopped and rerun.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from nuwa import grid
from nuwa.config import load_params
from nuwa.io import save_figure, write_csv, write_text

VARIANT, SEED, PERCENT = "ori", 0, 100


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); see {log}")


def prerequisites(experiment: str, datasets: list[str], task: str, cores: int, log: Path) -> None:
    """Processed data, Ori's bank and persistence for every dataset, by the workflow's own rules."""
    targets = []
    for dataset in datasets:
        targets += [grid.PROCESSED.format(dataset=dataset),
                    grid.BANK.format(dataset=dataset, variant=VARIANT, train_percent=PERCENT, seed=SEED),
                    grid.BASELINE.format(dataset=dataset, task=task, baseline="persistence")]
    run(["snakemake", "--cores", str(cores), "--configfile", experiment, "--config",
         'grid={"variants": ["ori"], "seeds": [0], "baselines": ["persistence"]}', "--", *targets], log)


def train_one(params_file: Path, dataset: str, task: str, backbone: str, steps: int, out_dir: Path, log: Path) -> dict:
    if not (out_dir / "metrics.json").exists():
        start = time.time()
        run(["nuwa", "train", "--params", str(params_file), "--threads", "1", "--dataset", dataset,
             "--task", task, "--train-percent", str(PERCENT), "--backbone", backbone, "--variant", VARIANT,
             "--seed", str(SEED), "--out-dir", str(out_dir)], log)
        (out_dir / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    persistence = json.loads(Path(grid.BASELINE.format(dataset=dataset, task=task, baseline="persistence"))
                             .read_text())
    wall = (out_dir / "wall_seconds.txt").read_text().strip() if (out_dir / "wall_seconds.txt").exists() else ""
    return {"dataset": dataset, "task": task, "backbone": backbone, "steps": steps, "best_step": metrics["best_step"],
            "best_val_loss": metrics["best_val_loss"], "test_mse": metrics["mse"],
            "persistence_mse": persistence["mse"], "skill_vs_persistence": 1 - metrics["mse"] / persistence["mse"],
            "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="an experiment file (experiments/*.yaml)")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="the budgets, one run each")
    parser.add_argument("--out", required=True, help="folder for the histories, the table and the log")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at once (default: 2, one per core)")
    parser.add_argument("--datasets", nargs="+", help="only these of the experiment's datasets (default: all)")
    args = parser.parse_args()

    out = Path(args.out)
    params = load_params(args.experiment)
    datasets = args.datasets or params["grid"]["datasets"]
    unknown = sorted(set(datasets) - set(params["grid"]["datasets"]))
    if unknown:
        parser.error(f"--datasets {unknown} not in grid.datasets of {args.experiment}: {params['grid']['datasets']}")
    # the experiment's first task (forecast, or a super-resolution task for Table 2)
    task = params["grid"].get("tasks", ["forecast"])[0]
    prerequisites(args.experiment, datasets, task, args.jobs, out / "log.txt")
    cells = []
    for steps in args.steps:
        budget = json.loads(json.dumps(params))
        budget["train"]["steps"] = steps
        budget.pop("extends", None)
        params_file = out / "params" / f"steps{steps}.yaml"
        params_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(yaml.safe_dump(budget, sort_keys=False), params_file)
        for dataset in datasets:
            for backbone in params["grid"]["backbones"]:
                cells.append((params_file, dataset, task, backbone, steps,
                              out / "runs" / f"steps{steps}" / dataset / backbone, out / "log.txt"))
    # the shortest budgets first: a stopped script leaves whole budgets, not a scatter of cells
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda cell: train_one(*cell), cells))
    import pandas as pd

    table = pd.DataFrame(rows)
    table.insert(0, "machine", f"{cpu_model()}, {len(open('/proc/cpuinfo').read().split('processor')) - 1} vCPUs")
    write_csv(table, out / "curves.csv")
    print(table.drop(columns="machine").to_string(index=False))
    save_figure(curves_figure(table), out / "curves.png", dpi=110)
    save_figure(histories_figure(table, out), out / "histories.png", dpi=100)


def histories_figure(table, out: Path):
    """Validation loss against step of every run: one panel per dataset x backbone, one line per budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    datasets, backbones = list(dict.fromkeys(table["dataset"])), list(dict.fromkeys(table["backbone"]))
    figure, axes = plt.subplots(len(datasets), len(backbones), figsize=(max(3.6 * len(backbones), 7.0), 2.6 * len(datasets)),
                                squeeze=False, constrained_layout=True)
    for (i, dataset), (j, backbone) in ((a, b) for a in enumerate(datasets) for b in enumerate(backbones)):
        axis = axes[i, j]
        for steps in sorted(set(table["steps"])):
            history = pd.read_csv(out / "runs" / f"steps{steps}" / dataset / backbone / "history.csv")
            history = history[history["val_loss"].notna()]
            axis.plot(history["step"], history["val_loss"], label=f"{steps}", linewidth=1)
        axis.set_title(f"{dataset} / {backbone}", fontsize=9)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        if i == len(datasets) - 1:
            axis.set_xlabel("optimiser step")
    axes[0, 0].set_ylabel("validation loss")
    axes[0, -1].legend(title="budget", fontsize=7)
    figure.suptitle("Ori's validation loss against step, one line per training budget")
    return figure


def curves_figure(table):
    """Per dataset: Ori's best validation loss (top) and its test skill against persistence
    (bottom: 1 - MSE / persistence's MSE, above 0 beats persistence) against the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(table["dataset"]))
    figure, axes = plt.subplots(2, len(datasets), figsize=(max(3.4 * len(datasets), 7.0), 5.6), squeeze=False,
                                constrained_layout=True)
    for column, dataset in enumerate(datasets):
        part = table[table["dataset"] == dataset]
        for backbone, rows in part.groupby("backbone", sort=False):
            rows = rows.sort_values("steps")
            axes[0, column].plot(rows["steps"], rows["best_val_loss"], marker="o", label=backbone)
            axes[1, column].plot(rows["steps"], rows["skill_vs_persistence"], marker="o", label=backbone)
        axes[0, column].set_title(dataset)
        axes[1, column].axhline(0, color="black", linewidth=0.8, linestyle="--")
        for row in (0, 1):
            axes[row, column].set_xscale("log")
            axes[row, column].set_xticks(sorted(set(table["steps"])), [str(s) for s in sorted(set(table["steps"]))])
            axes[row, column].minorticks_off()
            axes[row, column].grid(alpha=0.3)
        axes[1, column].set_xlabel("training budget (optimiser steps)")
    axes[0, 0].set_ylabel("best validation loss\n(normalised MSE, lower is better)")
    axes[1, 0].set_ylabel("test skill vs persistence\n(1 - MSE / MSE_persistence)")
    axes[0, -1].legend(title="Ori, seed 0")
    figure.suptitle("Ori's learning curves: one run per budget (one-cycle schedule over the budget)")
    return figure


if __name__ == "__main__":
    sys.exit(main())
