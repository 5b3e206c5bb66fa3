"""The README's Results tables, rendered from the committed results in docs/results/, so that every
number in those tables is one in a committed file and a republished result cannot leave them stale.

    python docs/results/readme_tables.py README.md docs/results/README.md     # rewrite the tables
    python docs/results/readme_tables.py --check README.md docs/results/README.md   # exit 1 if one differs

A table sits between ``<!-- results-table: NAME -->`` and ``<!-- /results-table -->``; NAME is one
of BLOCKS below. A dataset enters a table only once every training run of it in its experiment file
has finished (``runs.csv`` against the grid of ``experiments/<folder>.yaml``), so the README draws
no conclusion from a dataset still training; the comparison tables also require every seed of both
variants. The test suite runs ``--check`` (tests/test_results_readme.py). Run from the repository root.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pandas as pd

from nuwa import grid, paper
from nuwa.config import load_params

RESULTS = Path("docs/results")
# the experiment files in the order the README's state table lists them
EXPERIMENTS = ("table1_cpu", "generalisation_cpu", "ablations_cpu", "scarcity_cpu", "table2_cpu")
BEGIN = re.compile(r"^<!-- results-table: (\S+) -->$")
END = "<!-- /results-table -->"


@cache  # read-only here; each file is read by several tables
def experiment_params(name: str) -> dict:
    return load_params(f"experiments/{name}.yaml")


def runs_by_dataset(name: str) -> tuple[Counter, Counter]:
    """(finished, planned) training runs per dataset of one experiment file."""
    planned = Counter(cell.dataset for cell in grid.train_cells(experiment_params(name)))
    runs = RESULTS / name / "runs.csv"
    finished = Counter(pd.read_csv(runs)["dataset"]) if runs.exists() else Counter()
    return finished, planned


def complete_datasets(name: str) -> list[str]:
    """The datasets of an experiment whose every training run has finished, in the grid's order."""
    finished, planned = runs_by_dataset(name)
    return [dataset for dataset in planned if finished[dataset] >= planned[dataset]]


def comparison_table(name: str, csv: str, rows: list[str], keep, only_b: str | None = None) -> list[str]:
    """A layout table (nuwa.paper) of the comparisons in ``<name>/tables/<csv>`` over every test
    window, with the columns (datasets) ``keep`` accepts, each comparison over every seed; with
    ``only_b``, the comparisons against that variant, one row per variant."""
    frame = pd.read_csv(RESULTS / name / "tables" / csv)
    frame = frame[(frame["windows"] == "all") & frame["dataset"].map(keep)]
    if only_b:
        frame = frame[frame["b"] == only_b].rename(columns={"a": "variant"})
    seeds = len(experiment_params(name)["grid"]["seeds"])
    short = frame[frame["n_seeds"] < seeds]
    if not short.empty:
        raise SystemExit(f"{RESULTS / name / 'tables' / csv}: {len(short)} comparisons of finished datasets have "
                         f"fewer than {seeds} seeds (e.g. {short.iloc[0]['dataset']} {short.iloc[0]['comparison']}): "
                         "publish again")
    if frame.empty:
        return ["(no dataset of this experiment has finished yet)"]
    return paper.markdown_table(paper.layout(frame, rows, ["dataset"]))


def table1() -> list[str]:
    done = complete_datasets("table1_cpu")
    return comparison_table("table1_cpu", "table1.csv", ["backbone", "comparison"], done.__contains__)


def generalisation() -> list[str]:
    # a pair "trained → evaluated" is in once its training dataset has finished
    done = complete_datasets("generalisation_cpu")
    return comparison_table("generalisation_cpu", "generalisation.csv", ["backbone", "comparison"],
                            lambda pair: pair.split(" → ")[0] in done)


def ablations() -> list[str]:
    done = complete_datasets("ablations_cpu")
    return comparison_table("ablations_cpu", "ablations.csv", ["backbone", "variant"], done.__contains__,
                            only_b="ori")


def number(value: float) -> str:
    """Three significant digits, without an exponent for the hundreds and thousands of taxi counts."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def skill() -> list[str]:
    """Per finished dataset of table1: the baselines, each backbone's Ori and the best variant,
    as test MSE with the skill against persistence."""
    summary = pd.read_csv(RESULTS / "table1_cpu" / "tables" / "summary.csv")
    backbones = experiment_params("table1_cpu")["grid"]["backbones"]
    lines = ["| dataset | persistence MSE | optical flow (pysteps) | "
             + " | ".join(f"{backbone} Ori" for backbone in backbones) + " | best variant |",
             "|" + "---|" * (4 + len(backbones))]
    for dataset in complete_datasets("table1_cpu"):
        rows = summary[(summary["dataset"] == dataset) & (summary["task"] == "forecast")]
        baseline = rows.set_index("backbone")
        models = rows[rows["method"] != "baseline"]
        models = models[models["train_percent"] == 100]
        ori = models[models["variant"] == "ori"].set_index("backbone")
        best = models.loc[models["mse"].idxmin()]
        flow = baseline.loc["optical_flow"]
        cells = [dataset, number(baseline.loc["persistence", "mse"]),
                 f"{number(flow['mse'])} ({flow['skill']:+.2f})",
                 *(f"{number(ori.loc[b, 'mse'])} ({ori.loc[b, 'skill']:+.2f})" for b in backbones),
                 f"{best['backbone']} {best['variant']}, {number(best['mse'])} ({best['skill']:+.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def diagnostics() -> list[str]:
    """Per dataset of table1 with published diagnostics: the share of the highest-anomaly and
    highest-change patches that the masks in use call environmental, beside chance."""
    lines = ["| dataset | environmental share (chance) | of the highest-anomaly patches | of the highest-change patches |",
             "|---|---|---|---|"]
    for dataset in experiment_params("table1_cpu")["grid"]["datasets"]:
        path = RESULTS / "table1_cpu" / "diagnostics" / f"{dataset}.csv"
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        row = frame[frame["masks"].str.startswith("in use")].iloc[0]
        lines.append(f"| {dataset} | {100 * row['chance']:.0f} % | {100 * row['overlap_anomaly']:.0f} % "
                     f"| {100 * row['overlap_change']:.0f} % |")
    return lines


def state() -> list[str]:
    """Every experiment file: its backbones and variants, and its finished training runs per dataset."""
    lines = ["| experiment | backbones | variants × seeds | training runs finished |", "|---|---|---|---|"]
    for name in EXPERIMENTS:
        finished, planned = runs_by_dataset(name)
        params = experiment_params(name)
        per_dataset = ", ".join(f"{d} {'all ' + str(n) if finished[d] >= n else f'{finished[d]} of {n}'}"
                                for d, n in planned.items())
        runs = sum(min(finished[d], n) for d, n in planned.items())
        lines.append(f"| `{name}.yaml` | {', '.join(params['grid']['backbones'])} "
                     f"| {len(params['grid']['variants'])} × {len(params['grid']['seeds'])} "
                     f"| **{runs} of {sum(planned.values())}**: {per_dataset} |")
    return lines


BLOCKS = {"table1": table1, "generalisation": generalisation, "ablations": ablations, "skill": skill,
          "diagnostics": diagnostics, "state": state}


def render(text: str, source: str) -> tuple[str, list[str]]:
    """``text`` with every marked table rendered afresh, and the names of those that changed."""
    lines, out, changed, index = text.split("\n"), [], [], 0
    while index < len(lines):
        out.append(lines[index])
        match = BEGIN.match(lines[index])
        index += 1
        if not match:
            continue
        name = match.group(1)
        if name not in BLOCKS:
            raise SystemExit(f"{source}:{index}: unknown results table {name!r} (known: {', '.join(BLOCKS)})")
        end = next((i for i in range(index, len(lines)) if lines[i] == END), None)
        if end is None:
            raise SystemExit(f"{source}:{index}: results table {name!r} has no closing {END}")
        table = BLOCKS[name]()
        if lines[index:end] != table:
            changed.append(name)
        out += table
        index = end
    return "\n".join(out), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readmes", nargs="+", metavar="FILE",
                        help="Markdown files holding marked tables (README.md docs/results/README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    args = parser.parse_args()
    stale = 0
    for name in args.readmes:
        path = Path(name)
        text, changed = render(path.read_text(), name)
        if args.check:
            if changed:
                stale += 1
                print(f"{name}: results tables out of date with docs/results: {', '.join(changed)} "
                      f"(run: python docs/results/readme_tables.py {name})", file=sys.stderr)
            continue
        if changed:
            partial = path.with_name(path.name + ".partial")
            partial.write_text(text)
            partial.replace(path)  # atomic: an interrupted rewrite leaves the old file whole
        print(f"{name}: {len(changed)} results tables rewritten ({', '.join(changed) or 'none changed'})",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
