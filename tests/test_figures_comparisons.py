"""comparison_figure and lead_time_figure: relative differences with intervals, and loss by lead time."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from nuwa.compare import TOO_FEW
from nuwa.figures import comparison_figure, lead_time_figure

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS_CSV = ROOT / "results" / "tables" / "comparisons.csv"
LEAD_TIME_CSV = ROOT / "results" / "tables" / "lead_time.csv"


def comparison_row(backbone, comparison, mean_difference, low, high, verdict, windows="all", dataset="toy",
                   mean_b=0.5, n_seeds=3, n_windows=40):
    a, b = comparison.split(" - ")
    return {"dataset": dataset, "backbone": backbone, "comparison": comparison, "a": a, "b": b, "metric": "mse",
            "windows": windows, "lead": np.nan, "n_seeds": n_seeds, "n_windows": n_windows, "block": 4,
            "mean_a": mean_b + mean_difference, "mean_b": mean_b, "mean_difference": mean_difference, "low": low,
            "high": high, "relative_difference": mean_difference / mean_b, "verdict": verdict, "units": 30}


@pytest.fixture
def comparisons():
    return pd.DataFrame([
        comparison_row("simvp", "nuwa - ori", -0.05, -0.08, -0.02, "better"),
        comparison_row("simvp", "nuwa - random", 0.04, 0.01, 0.07, "worse", mean_b=0.4),
        comparison_row("convlstm", "nuwa - ori", 0.01, -0.02, 0.03, "no detectable difference", mean_b=0.25),
        comparison_row("convlstm", "nuwa - random", -0.01, -0.03, 0.02, TOO_FEW, mean_b=0.2),
        # other window set / dataset: not drawn
        comparison_row("simvp", "nuwa - ori", -0.05, -0.06, -0.04, "better", windows="extreme", n_windows=8),
        comparison_row("simvp", "nuwa - ori", 0.2, 0.1, 0.3, "worse", dataset="other"),
    ])


def by_gid(axis, gid):
    return [artist for artist in axis.get_children() if artist.get_gid() == gid]


def drawn_rows(axis):
    """{y: (x of the point, marker, face colour, edge colour)} and {y: (whisker low, whisker high)}."""
    points, whiskers = {}, {}
    for line in by_gid(axis, "difference"):
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            points[float(y)] = (float(x), line.get_marker(), line.get_markerfacecolor(), line.get_markeredgecolor())
    for collection in by_gid(axis, "interval"):
        for segment in collection.get_segments():
            (x0, y0), (x1, y1) = segment
            assert y0 == y1
            whiskers[float(y0)] = (min(x0, x1), max(x0, x1))
    return points, whiskers


def test_comparison_figure_one_point_and_whisker_per_row(comparisons):
    figure = comparison_figure(comparisons, "toy")
    try:
        axis = figure.axes[0]
        points, whiskers = drawn_rows(axis)
        selected = comparisons[(comparisons["dataset"] == "toy") & (comparisons["windows"] == "all")]
        assert len(points) == len(whiskers) == len(selected) == 4
        labels = [tick.get_text() for tick in axis.get_yticklabels()]
        assert labels == [f"{r.backbone}: {r.comparison}" for r in selected.itertuples()]
        for position, row in enumerate(selected.itertuples()):
            assert points[position][0] == pytest.approx(100 * row.mean_difference / row.mean_b)
            assert whiskers[position] == pytest.approx((100 * row.low / row.mean_b, 100 * row.high / row.mean_b))
    finally:
        plt.close(figure)


def test_comparison_figure_zero_line_title_and_label(comparisons):
    figure = comparison_figure(comparisons, "toy")
    try:
        axis = figure.axes[0]
        zero = by_gid(axis, "zero")
        assert len(zero) == 1 and list(zero[0].get_xdata()) == [0, 0]
        title = axis.get_title()
        assert "toy" in title and "all" in title and "3 seeds" in title and "40 windows" in title
        assert axis.get_xlabel() == "A − B, % of B's test MSE (negative: A better)"
    finally:
        plt.close(figure)


def test_comparison_figure_styles_verdicts_apart_and_marks_too_few_hollow(comparisons):
    figure = comparison_figure(comparisons, "toy")
    try:
        points, _ = drawn_rows(figure.axes[0])
        styles = [(marker, tuple(np.atleast_1d(face)) if not isinstance(face, str) else face, str(edge))
                  for _, marker, face, edge in (points[y] for y in range(4))]
        assert len(set(styles)) == 4  # better / worse / no difference / too few all look different
        _, _, face, edge = points[3]  # the TOO_FEW row
        assert face == "none" and edge == "tab:gray"
        texts = " ".join(t.get_text() for t in figure.texts)
        assert "too few windows and seeds" in texts
        legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
        assert sorted(legend) == sorted(["better (1)", "worse (1)", "no detectable difference (1)", f"{TOO_FEW} (1)"])
    finally:
        plt.close(figure)


def test_comparison_figure_no_note_without_too_few_and_window_set_selection(comparisons):
    figure = comparison_figure(comparisons, "toy", windows="extreme")
    try:
        points, whiskers = drawn_rows(figure.axes[0])
        assert len(points) == len(whiskers) == 1
        assert whiskers[0] == pytest.approx((-12.0, -8.0))
        assert "extreme" in figure.axes[0].get_title() and "8 windows" in figure.axes[0].get_title()
        assert not figure.texts
    finally:
        plt.close(figure)


@pytest.mark.parametrize("dataset, windows", [("absent", "all"), ("toy", "nonsense")])
def test_comparison_figure_empty_selection_says_so(comparisons, dataset, windows):
    for frame in (comparisons, comparisons.iloc[:0]):
        figure = comparison_figure(frame, dataset, windows=windows)
        try:
            texts = " ".join(t.get_text() for axis in figure.axes for t in axis.texts)
            assert "no comparison" in texts and dataset in texts
            assert not any(by_gid(axis, "difference") for axis in figure.axes)
        finally:
            plt.close(figure)


def lead_rows(dataset="toy", leads=(1, 2, 3)):
    rows = []
    for backbone in ("simvp", "convlstm"):
        for v, variant in enumerate(("ori", "nuwa")):
            for seed in (0, 1):
                for lead in leads:
                    rows.append({"dataset": dataset, "backbone": backbone, "variant": variant, "seed": str(seed),
                                 "lead": lead, "mse": 0.1 * lead + 0.01 * v + 0.001 * seed, "mae": 0.2 * lead})
    for b, baseline in enumerate(("persistence", "optical_flow")):
        for lead in leads:
            rows.append({"dataset": dataset, "backbone": baseline, "variant": "-", "seed": "-", "lead": lead,
                         "mse": 0.5 + 0.1 * lead + b, "mae": 1.0})
    return rows


@pytest.fixture
def lead_time():
    return pd.DataFrame(lead_rows() + lead_rows(dataset="other"))


def test_lead_time_figure_one_panel_per_backbone_lines_per_variant_plus_baselines(lead_time):
    figure = lead_time_figure(lead_time, "toy")
    try:
        assert [axis.get_title() for axis in figure.axes] == ["simvp", "convlstm"]
        for axis in figure.axes:
            lines = axis.get_lines()
            assert len(lines) == 2 + 2  # ori, nuwa + persistence, optical_flow
            gids = [line.get_gid() for line in lines]
            assert gids == ["variant:ori", "variant:nuwa", "baseline:persistence", "baseline:optical_flow"]
            by = dict(zip(gids, lines))
            # averaged over the two seeds
            assert list(by["variant:nuwa"].get_xdata()) == [1, 2, 3]
            assert by["variant:nuwa"].get_ydata() == pytest.approx([0.1 * lead + 0.01 + 0.0005 for lead in (1, 2, 3)])
            assert by["baseline:optical_flow"].get_ydata() == pytest.approx([1.5 + 0.1 * lead for lead in (1, 2, 3)])
            for gid in ("baseline:persistence", "baseline:optical_flow"):
                assert by[gid].get_linestyle() != "-"
                assert by[gid].get_color() in ("black", "dimgray", "darkgray", "silver")
            for gid in ("variant:ori", "variant:nuwa"):
                assert by[gid].get_linestyle() == "-"
            assert axis.get_legend() is not None
        assert "MSE" in figure.axes[0].get_ylabel()
        assert "toy" in figure._suptitle.get_text()
    finally:
        plt.close(figure)


def test_lead_time_figure_other_metric_and_errors(lead_time):
    figure = lead_time_figure(lead_time, "toy", metric="mae")
    try:
        line = figure.axes[0].get_lines()[0]
        assert line.get_ydata() == pytest.approx([0.2, 0.4, 0.6])
        assert "MAE" in figure.axes[0].get_ylabel()
    finally:
        plt.close(figure)
    with pytest.raises(ValueError, match="rmse"):
        lead_time_figure(lead_time, "toy", metric="rmse")
    figure = lead_time_figure(lead_time, "absent")
    try:
        assert "no lead-time rows" in " ".join(t.get_text() for axis in figure.axes for t in axis.texts)
    finally:
        plt.close(figure)


def test_lead_time_figure_only_baselines_gives_one_panel(lead_time):
    frame = lead_time[lead_time["variant"] == "-"]
    figure = lead_time_figure(frame, "toy")
    try:
        assert len(figure.axes) == 1 and len(figure.axes[0].get_lines()) == 2
    finally:
        plt.close(figure)


@pytest.mark.skipif(not (COMPARISONS_CSV.exists() and LEAD_TIME_CSV.exists()),
                    reason="no results/tables/comparisons.csv or lead_time.csv (run the default grid)")
def test_real_tables_draw(tmp_path):
    comparisons = pd.read_csv(COMPARISONS_CSV)
    lead_time = pd.read_csv(LEAD_TIME_CSV)
    for dataset in dict.fromkeys(comparisons["dataset"]):
        for windows in ("all", "extreme"):
            selected = comparisons[(comparisons["dataset"] == dataset) & (comparisons["windows"] == windows)
                                   & (comparisons["metric"] == "mse")]
            if "lead" in selected:
                selected = selected[selected["lead"].isna()]
            figure = comparison_figure(comparisons, dataset, windows)
            try:
                points, whiskers = drawn_rows(figure.axes[0])
                assert len(points) == len(whiskers) == len(selected)
                figure.savefig(tmp_path / f"comparison_{dataset}_{windows}.png")
            finally:
                plt.close(figure)
    for dataset in dict.fromkeys(lead_time["dataset"]):
        part = lead_time[lead_time["dataset"] == dataset]
        backbones = part.loc[part["variant"].astype(str) != "-", "backbone"].unique()
        baselines = part.loc[part["variant"].astype(str) == "-", "backbone"].unique()
        figure = lead_time_figure(lead_time, dataset)
        try:
            assert len(figure.axes) == max(1, len(backbones))
            for axis, backbone in zip(figure.axes, backbones):
                variants = part.loc[part["backbone"] == backbone, "variant"].unique()
                assert len(axis.get_lines()) == len(variants) + len(baselines)
            figure.savefig(tmp_path / f"lead_time_{dataset}.png")
        finally:
            plt.close(figure)


def test_lead_time_figure_several_metrics_one_row_each_with_its_direction(lead_time):
    from nuwa.cli import lead_time_metrics

    table = lead_time.assign(**{"csi_0.5": 0.9 - 0.1 * lead_time["lead"], "csi_2": 0.1,
                                "fss_0.5_1": 0.5, "fss_0.5_9": 0.7, "fss_2_9": 0.2})
    table.loc[table["dataset"] == "other", ["csi_0.5", "csi_2", "fss_0.5_1", "fss_0.5_9", "fss_2_9"]] = np.nan
    # the lowest threshold's CSI and its FSS at the largest scale; a field without thresholds: MSE only
    assert lead_time_metrics(table, "toy") == ["mse", "csi_0.5", "fss_0.5_9"]
    assert lead_time_metrics(table, "other") == ["mse"]
    figure = lead_time_figure(table, "toy", ["mse", "csi_0.5", "fss_0.5_9"])
    try:
        assert len(figure.axes) == 3 * 2  # rows: metrics; columns: backbones
        labels = [axis.get_ylabel() for axis in figure.axes if axis.get_ylabel()]
        assert len(labels) == 3
        assert "MSE" in labels[0] and "lower is better" in labels[0]
        assert "CSI_0.5" in labels[1] and "higher is better" in labels[1]
        assert "FSS_0.5_9" in labels[2] and "higher is better" in labels[2]
        csi_nuwa = next(line for line in figure.axes[2].get_lines() if line.get_gid() == "variant:nuwa")
        assert csi_nuwa.get_ydata() == pytest.approx([0.8, 0.7, 0.6])
    finally:
        plt.close(figure)
