import numpy as np
import pandas as pd

from nuwa.tables import summarise, to_markdown


def test_mean_and_sample_std_over_seeds_and_a_persistence_row():
    records = [
        {"dataset": "d", "backbone": "simvp", "variant": "ori", "seed": 0, "mse": 1.0, "ssim": 0.5, "mix_fraction": 0.0,
         "bank_changed_cell_fraction": 0.0, "bank_mean_abs_change": 0.0},
        {"dataset": "d", "backbone": "simvp", "variant": "ori", "seed": 1, "mse": 3.0, "ssim": 0.7, "mix_fraction": 0.0,
         "bank_changed_cell_fraction": 0.0, "bank_mean_abs_change": 0.0},
        {"dataset": "d", "backbone": "simvp", "variant": "nuwa", "seed": 0, "mse": 0.5, "ssim": 0.9, "mix_fraction": 0.5,
         "bank_changed_cell_fraction": 0.125, "bank_mean_abs_change": 0.25},
    ]
    summary = summarise(records, {"d": {"mse": 4.0, "ssim": 0.1}}, {"ori": "none", "nuwa": "saliency"})
    ori = summary[(summary.variant == "ori")].iloc[0]
    assert ori["seeds"] == 2 and ori["mse"] == 2.0
    assert np.isclose(ori["mse_std"], np.std([1.0, 3.0], ddof=1))
    nuwa = summary[(summary.variant == "nuwa")].iloc[0]
    assert nuwa["seeds"] == 1 and pd.isna(nuwa["mse_std"])
    persistence = summary[summary.backbone == "persistence"].iloc[0]
    assert persistence["mse"] == 4.0 and persistence["method"] == "baseline"
    markdown = to_markdown(summary, {"mse": "per-pixel"})
    assert "| simvp | ori | 2 | 0 | 0 | 0 | 2 ± 1.4 |" in markdown
    # how strongly each variant perturbs stands beside its result
    assert "| simvp | nuwa | 1 | 0.5 | 0.125 | 0.25 | 0.5 |" in markdown
    assert "| persistence | - | 0 |  |  |  | 4 |" in markdown
