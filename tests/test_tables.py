import numpy as np
import pandas as pd

from nuwa.tables import comparison_table, summarise, to_markdown


def test_mean_and_sample_std_over_seeds_and_a_persistence_row():
    records = [
        {"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": "simvp", "variant": "ori", "seed": 0, "mse": 1.0, "ssim": 0.5, "mix_fraction": 0.0,
         "bank_changed_cell_fraction": 0.0, "bank_mean_abs_change": 0.0},
        {"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": "simvp", "variant": "ori", "seed": 1, "mse": 3.0, "ssim": 0.7, "mix_fraction": 0.0,
         "bank_changed_cell_fraction": 0.0, "bank_mean_abs_change": 0.0},
        {"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": "simvp", "variant": "nuwa", "seed": 0, "mse": 0.5, "ssim": 0.9, "mix_fraction": 0.5,
         "bank_changed_cell_fraction": 0.125, "bank_mean_abs_change": 0.25},
    ]
    summary = summarise(records, {("d", "forecast"): {"persistence": {"mse": 4.0, "ssim": 0.1}, "optical_flow": {"mse": 3.0}}},
                        {"ori": "none", "nuwa": "saliency"})
    ori = summary[(summary.variant == "ori")].iloc[0]
    assert ori["seeds"] == 2 and ori["mse"] == 2.0
    assert np.isclose(ori["mse_std"], np.std([1.0, 3.0], ddof=1))
    nuwa = summary[(summary.variant == "nuwa")].iloc[0]
    assert nuwa["seeds"] == 1 and pd.isna(nuwa["mse_std"])
    persistence = summary[summary.backbone == "persistence"].iloc[0]
    assert persistence["mse"] == 4.0 and persistence["method"] == "baseline" and persistence["skill"] == 0
    assert summary[summary.backbone == "optical_flow"].iloc[0]["skill"] == 0.25  # 1 - 3/4
    assert ori["skill"] == 0.5 and ori["beats_persistence"]
    markdown = to_markdown(summary, {"mse": "per-pixel"})
    assert "| simvp | ori | 2 | 0 | 0 | 0 | 0.5 | 2 ± 1.4 |" in markdown
    # how strongly each variant perturbs stands beside its result, and its skill against persistence
    assert "| simvp | nuwa | 1 | 0.5 | 0.125 | 0.25 | 0.875 | 0.5 |" in markdown
    assert "| persistence | - | 0 |  |  |  | 0 | 4 |" in markdown
    assert "| optical_flow | - | 0 |  |  |  | 0.25 | 3 |" in markdown


def test_an_ori_that_does_not_beat_persistence_is_marked():
    records = [{"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": "simvp", "variant": "ori", "seed": 0, "mse": 5.0}]
    summary = summarise(records, {("d", "forecast"): {"persistence": {"mse": 4.0}}}, {"ori": "none"})
    markdown = to_markdown(summary, {})
    assert "| simvp | ori | 1 |  |  |  | -0.25 † | 5 |" in markdown
    assert "does not beat persistence" in markdown


def test_comparison_rows_and_the_verdict_line_under_a_dataset():
    import xarray as xr

    rng = np.random.default_rng(0)
    windows = 40

    def losses(offset):
        mse = 1.0 + offset + 0.01 * rng.standard_normal((windows, 2))
        return xr.Dataset({"mse": (("window", "lead"), mse), "mae": (("window", "lead"), np.sqrt(mse)),
                           "target_mean": ("window", np.arange(windows, dtype=float)),
                           "target_max": ("window", np.arange(windows, dtype=float))},
                          coords={"source_index": ("window", np.arange(windows) * 2), "lead": [1, 2]})

    runs = {("d", "forecast", 100, b, v, 0): losses(offset) for b, clear in (("simvp", True), ("convlstm", False))
            for v, offset in (("ori", 0.0), ("nuwa", -0.5 if clear else 0.0))}
    table = comparison_table(runs, [["nuwa", "ori"], ["nuwa", "random"]], {"d": 2}, confidence=0.95, resamples=500,
                             extreme_quantile=0.9)
    assert set(table["comparison"]) == {"nuwa - ori"}  # random is not in the grid: left out
    everything = table[table["windows"] == "all"].set_index("backbone")
    assert everything.loc["simvp", "verdict"] == "better"
    assert everything.loc["convlstm", "verdict"] == "no detectable difference"
    assert (table[table["windows"] == "extreme"]["n_windows"] == 4).all()
    records = [{"dataset": "d", "task": "forecast", "train_percent": 100, "backbone": b, "variant": v, "seed": 0, "mse": float(runs[("d", "forecast", 100, b, v, 0)]["mse"].mean())}
               for b in ("simvp", "convlstm") for v in ("ori", "nuwa")]
    summary = summarise(records, {("d", "forecast"): {"persistence": {"mse": 4.0}}}, {"ori": "none", "nuwa": "saliency"})
    markdown = to_markdown(summary, {}, table)
    assert "- nuwa - ori, all windows: better 1, worse 0, no detectable difference 1, too few to tell 0" in markdown


def test_no_comparison_in_the_grid_gives_a_header_that_reads_back(tmp_path):
    """A grid without +Nuwa (e.g. ori and random only): comparisons.csv is a header, and the
    figures stage reads it and draws a figure that says there is nothing to compare."""
    import matplotlib.pyplot as plt
    import xarray as xr

    from nuwa.figures import comparison_figure

    run = xr.Dataset({"mse": (("window", "lead"), np.ones((4, 1))), "mae": (("window", "lead"), np.ones((4, 1))),
                      "target_mean": ("window", np.arange(4.0)), "target_max": ("window", np.arange(4.0))},
                     coords={"source_index": ("window", np.arange(4)), "lead": [1]})
    table = comparison_table({("d", "forecast", 100, "simvp", "ori", 0): run,
                              ("d", "forecast", 100, "simvp", "random", 0): run}, [["nuwa", "ori"]],
                             {"d": 1}, confidence=0.95, resamples=100, extreme_quantile=0.9)
    assert len(table) == 0 and "verdict" in table.columns
    table.to_csv(tmp_path / "comparisons.csv", index=False)
    figure = comparison_figure(pd.read_csv(tmp_path / "comparisons.csv"), "d")
    plt.close(figure)
