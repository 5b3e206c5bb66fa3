"""Where a run's time went: Snakemake's per-job benchmark files summed by rule.

    python workflow/scripts/profile_summary.py [logs/benchmarks]

Every rule writes logs/benchmarks/<rule>/...tsv (Snakemake's `benchmark:`: wall seconds,
CPU seconds, peak RSS of the job's processes). Prints a Markdown table, one row per rule:
jobs, summed wall seconds, share of the summed wall time, largest peak RSS.

Snakemake's `cpu_time` is left out: it samples a job's processes every second for 30 s and
every 30 s after that, and undercounts (a training job recorded with 15.5 CPU seconds in 37 s of
wall clock used 32 CPU seconds in 32 s when run alone). Jobs here run one thread each, as many
at a time as there are cores, so wall seconds are the cost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def summarise(folder: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        relative = path.relative_to(folder)
        rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem  # logs/benchmarks/tables.tsv
        rows.append({"rule": rule, "wall_s": float(table["s"].iloc[-1]), "max_rss_mb": float(table["max_rss"].iloc[-1])})
    if not rows:
        raise SystemExit(f"{folder}: no benchmark files (run the workflow first)")
    frame = pd.DataFrame(rows)
    summary = frame.groupby("rule").agg(jobs=("wall_s", "size"), wall_s=("wall_s", "sum"),
                                        max_rss_mb=("max_rss_mb", "max"))
    summary["wall_share"] = summary["wall_s"] / summary["wall_s"].sum()
    return summary.sort_values("wall_s", ascending=False)


if __name__ == "__main__":
    summary = summarise(Path(sys.argv[1] if len(sys.argv) > 1 else "logs/benchmarks"))
    try:
        print(summary.to_markdown(floatfmt=".3g"))
    except ImportError:  # pandas' Markdown needs tabulate
        print(summary.to_string())
