"""Stage 6, tables: every cell's test metrics, mean ± std over seeds, beside persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd

REPORTED = ("mse", "mae", "mse_frame", "mae_frame", "ssim", "psnr")
# How hard each variant intervenes, beside every result (means over seeds): the share of a batch
# taken from the bank, the share of (step, patch) cells of the bank whose bytes changed, and the
# mean absolute change in training-std units. Comparing variants means comparing these too.
PERTURBATION = ("mix_fraction", "bank_changed_cell_fraction", "bank_mean_abs_change")


def summarise(records: list[dict], baselines: dict[str, dict], variant_methods: dict[str, str]) -> pd.DataFrame:
    """``records``: one dict per run (dataset, backbone, variant, seed, metrics...).

    Returns one row per (dataset, backbone, variant) with ``<metric>`` = mean and
    ``<metric>_std`` = sample std over seeds (NaN for one seed), plus a persistence row per dataset.
    """
    frame = pd.DataFrame(records)
    metric_names = [m for m in REPORTED if m in frame] + sorted(c for c in frame if c.startswith("csi_"))
    rows = []
    for (dataset, backbone, variant), group in frame.groupby(["dataset", "backbone", "variant"], sort=False):
        row = {"dataset": dataset, "backbone": backbone, "variant": variant,
               "method": variant_methods.get(variant, ""), "seeds": len(group)}
        for column in PERTURBATION:
            row[column] = float(group[column].mean()) if column in group else float("nan")
        for metric in metric_names:
            values = group[metric].to_numpy(dtype=float)
            row[metric] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        rows.append(row)
    for dataset, metrics in baselines.items():
        row = {"dataset": dataset, "backbone": "persistence", "variant": "-", "method": "baseline", "seeds": 0,
               **{column: float("nan") for column in PERTURBATION}}
        for metric in metric_names:
            row[metric] = float(metrics.get(metric, float("nan")))
            row[f"{metric}_std"] = float("nan")
        rows.append(row)
    ordered = ["dataset", "backbone", "variant", "method", "seeds", *PERTURBATION]
    for metric in metric_names:
        ordered += [metric, f"{metric}_std"]
    return pd.DataFrame(rows)[ordered]


def to_markdown(summary: pd.DataFrame, conventions: dict[str, str]) -> str:
    metric_names = [c for c in summary.columns if c not in ("dataset", "backbone", "variant", "method", "seeds",
                                                            *PERTURBATION) and not c.endswith("_std")]
    lines = []
    for dataset, group in summary.groupby("dataset", sort=False):
        lines += [f"## {dataset}", "", "| backbone | variant | seeds | mix | changed | abs change | "
                  + " | ".join(metric_names) + " |", "|---|---|---|---|---|---|" + "---|" * len(metric_names)]
        for _, row in group.iterrows():
            cells = ["" if pd.isna(row[column]) else f"{row[column]:.3g}" for column in PERTURBATION]
            for metric in metric_names:
                mean, std = row[metric], row[f"{metric}_std"]
                cells.append("" if pd.isna(mean) else (f"{mean:.4g}" if pd.isna(std) else f"{mean:.4g} ± {std:.2g}"))
            lines.append(f"| {row['backbone']} | {row['variant']} | {row['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Conventions", ""] + [f"- `{name}`: {text}" for name, text in conventions.items()]
    lines.append("- `mix`: share of each training batch taken from the bank; `changed`: share of the bank's (step, "
                 "patch) cells whose bytes the augmentation changed; `abs change`: mean |augmented - original| over "
                 "the bank's pixels, in units of the training std.")
    lines.append("- lower is better for mse/mae; higher is better for ssim, psnr, csi. "
                 "Values are means over seeds, ± the sample standard deviation when there are several.")
    return "# NuwaDynamics results (test split)\n\n" + "\n".join(lines) + "\n"
