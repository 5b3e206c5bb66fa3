"""The paper's tables in the paper's layout (nuwa.paper), built from real paired comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from nuwa import grid, paper
from nuwa.tables import comparison_table, summarise

TASKS = {"forecast": {"kind": "forecast"}, "sr4": {"kind": "super_resolution", "factor": 4}}


def losses(offset, rng, windows=40):
    mse = 1.0 + offset + 0.01 * rng.standard_normal((windows, 2))
    return xr.Dataset({"mse": (("window", "lead"), mse), "mae": (("window", "lead"), np.sqrt(mse)),
                       "target_mean": ("window", np.arange(windows, dtype=float)),
                       "target_max": ("window", np.arange(windows, dtype=float))},
                      coords={"source_index": ("window", np.arange(windows) * 2), "lead": [1, 2]})


def comparisons_of_a_grid():
    """pollutant x {forecast, sr4} x {50, 100} % x simvp x {ori, nuwa, random}, one seed: +Nuwa
    clearly better than Ori in the forecast at 100 %, the same elsewhere."""
    rng = np.random.default_rng(0)
    runs = {}
    for task in ("forecast", "sr4"):
        for percent in (50, 100):
            clear = task == "forecast" and percent == 100
            for variant, offset in (("ori", 0.0), ("nuwa", -0.5 if clear else 0.0), ("random", 0.0)):
                runs[("pollutant", task, percent, "simvp", variant, 0)] = losses(offset, rng)
    table = comparison_table(runs, [["nuwa", "ori"], ["nuwa", "random"]], {"pollutant": 1}, confidence=0.95,
                             resamples=300, extreme_quantile=0.9)
    records = [{"dataset": d, "task": t, "train_percent": p, "backbone": b, "variant": v, "seed": s,
                "mse": float(value["mse"].mean()), "ssim": 0.9 if v == "ori" else 0.92}
               for (d, t, p, b, v, s), value in runs.items()]
    summary = summarise(records, {("pollutant", t): {"persistence": {"mse": 4.0}} for t in TASKS},
                        {"ori": "none", "nuwa": "saliency", "random": "random"})
    return table, summary


def test_the_paper_tables_are_the_grid_module_s():
    assert tuple(paper.TABLES) == grid.PAPER_TABLES


def test_table1_rows_are_backbone_and_comparison_columns_datasets():
    comparisons, _ = comparisons_of_a_grid()
    part, table = paper.table1(comparisons, TASKS)
    assert set(part["task"]) == {"forecast"} and set(part["train_percent"]) == {100}
    assert list(table.columns) == ["pollutant"]
    cell = table.loc[("simvp", "nuwa - ori"), "pollutant"]
    assert cell.endswith("better") and "→" in cell and "%" in cell
    assert table.loc[("simvp", "nuwa - random"), "pollutant"].endswith("better")
    markdown = paper.markdown_grid(table, "Table 1", paper.HOW_TO_READ, "none")
    assert "| backbone | comparison | pollutant |" in markdown and "| simvp | nuwa - ori |" in markdown


def test_table2_scarcity_and_ablations():
    comparisons, _ = comparisons_of_a_grid()
    _, two = paper.table2(comparisons, TASKS)
    assert list(two.columns) == [("pollutant", "sr4")]
    assert two.loc[("simvp", "nuwa - ori"), ("pollutant", "sr4")].endswith("no diff.")
    _, scarce = paper.scarcity(comparisons, TASKS)
    assert list(scarce.columns) == [50, 100]
    row = scarce.loc[("pollutant", "forecast", "simvp", "nuwa - ori")]
    assert row[100].endswith("better") and row[50].endswith("no diff.")
    _, ablation = paper.ablations(comparisons, TASKS)
    assert list(ablation.index) == [("simvp", "nuwa")]  # only comparisons against Ori
    # one train percent: no scarcity table, and its page says so
    one = comparisons[comparisons["train_percent"] == 100]
    part, empty = paper.scarcity(one, TASKS)
    assert part.empty and empty.empty
    assert "Only one train percent" in paper.markdown_grid(empty, "x", "y", paper.TABLES["scarcity"][2])


def test_paper_vs_ours_puts_the_claims_beside_our_comparisons():
    comparisons, summary = comparisons_of_a_grid()
    text = paper.paper_vs_ours(comparisons, summary, {"pollutant": {"kind": "pollutant"}}, TASKS)
    row = next(line for line in text.splitlines() if line.startswith("| 1 | simvp | PD |"))
    assert "5.48 → 3.24" in row and "-40.9 %" in row and "our pollutant simulator for PD" in row
    assert row.rstrip().endswith("| better |")
    # the SSIM claim of Table 2 on TaxiBJ has no counterpart here
    assert "| 2 (6→6) | simvp | TaxiBJ | 98.67 → 99.12 | +0.5 % | (not in this grid) |" in text
    assert "1 of the paper's claims have a counterpart" in text
    pd.testing.assert_frame_equal(comparisons, comparisons_of_a_grid()[0])  # the tables change nothing


def test_the_scarcity_figure_draws_each_comparison_against_the_percent():
    import matplotlib.pyplot as plt

    from nuwa.figures import scarcity_figure

    comparisons, _ = comparisons_of_a_grid()
    figure = scarcity_figure(comparisons)
    try:
        panels = [axis for axis in figure.axes if axis.get_title()]
        assert [axis.get_title() for axis in panels] == ["pollutant (forecast), simvp", "pollutant (sr4), simvp"]
        lines = {line.get_gid(): line for line in panels[0].get_lines() if line.get_gid()}
        assert set(lines) == {"comparison:nuwa - ori", "comparison:nuwa - random"}
        x, y = lines["comparison:nuwa - ori"].get_data()
        assert list(x) == [50, 100] and y[1] < -40 < y[0]  # -50 % at 100 %, about 0 at 50 %
    finally:
        plt.close(figure)
    one = scarcity_figure(comparisons[comparisons["train_percent"] == 100])
    try:
        assert "only one train percent" in " ".join(t.get_text() for axis in one.axes for t in axis.texts)
    finally:
        plt.close(one)
