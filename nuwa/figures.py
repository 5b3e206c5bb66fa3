"""Figures: prediction strips (input / truth / Ori / +Nuwa) and saliency overlays.

:func:`mask_figure` is the pure core of ``nuwa show-mask`` and of the saliency figure of
``nuwa figures``: the saliency file holds importance only, so the environmental patches drawn
are those a bank actually used (its ``causal`` variable, made with that variant's ratio).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from nuwa.errors import DataFileError  # noqa: E402 (nuwa.io.DataFileError is this class)

ENVIRONMENT_EDGE = "cyan"


def prediction_strip(examples: dict[str, xr.Dataset], dataset_name: str, example: int = 0, channel: int = 0):
    """Rows: input frames, truth, then one row per variant's prediction (same test window)."""
    first = next(iter(examples.values()))
    inputs = first["inputs"].values[example, :, channel]
    truth = first["truth"].values[example, :, channel]
    rows = [("input", inputs), ("truth", truth)]
    rows += [(name, data["prediction"].values[example, :, channel]) for name, data in examples.items()]
    columns = max(len(r[1]) for r in rows)
    low = min(float(np.min(r[1])) for r in rows)
    high = max(float(np.max(r[1])) for r in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns, 1.25 * len(rows)), squeeze=False)
    for row, (label, frames) in enumerate(rows):
        for column in range(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(frames):
                axis.imshow(frames[column], vmin=low, vmax=high, cmap="viridis")
            else:
                axis.axis("off")
            if column == 0:
                axis.set_ylabel(label, fontsize=8)
    source = int(first["source_index"].values[example])
    figure.suptitle(f"{dataset_name}: test window starting at t={source}", fontsize=9)
    figure.tight_layout()
    return figure


def saliency_overlay(frames: np.ndarray, importance: np.ndarray, causal: np.ndarray | None, patch_size: int,
                     title: str = "", step_labels: list[str] | None = None):
    """Input frames (T, H, W) with importance as a heat map and environmental patches outlined.

    ``causal`` (T, Py, Px), 1 causal / 0 environmental, or None: no outlines.
    """
    steps = frames.shape[0]
    figure, axes = plt.subplots(2, steps, figsize=(1.5 * steps, 3.2), squeeze=False)
    for step in range(steps):
        top, bottom = axes[0, step], axes[1, step]
        top.imshow(frames[step], cmap="gray")
        heat = np.kron(importance[step], np.ones((patch_size, patch_size)))
        bottom.imshow(frames[step], cmap="gray")
        bottom.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        environmental = np.argwhere(causal[step] == 0) if causal is not None else ()
        for (row, col) in environmental:
            for axis in (top, bottom):
                axis.add_patch(Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                                         fill=False, edgecolor=ENVIRONMENT_EDGE, linewidth=0.8))
        top.set_title(step_labels[step] if step_labels else f"step {step}", fontsize=8)
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("input +\nenvironmental" if causal is not None else "input", fontsize=7)
    axes[1, 0].set_ylabel("importance", fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _source(dataset: xr.Dataset, given: str | None, default: str) -> str:
    return given or dataset.encoding.get("source") or default


def mask_figure(importance: xr.Dataset, series_field: np.ndarray, sample: int, bank: xr.Dataset | None = None,
                copy: int = 0, title_prefix: str = "", *, channel: int = 0, source: str | None = None,
                bank_source: str | None = None):
    """One window's input frames, its importance heat map and, given a bank, the environmental
    patches that bank used for (``source_index == sample``, ``copy``) outlined in cyan.

    ``importance``: the saliency file (``importance(sample, step, patch_y, patch_x)``, attr
    ``patch_size``); ``series_field``: the processed field (time, channel, y, x); ``sample``: a
    window start index (a value of the saliency file's ``sample``, not a position). Without a
    bank nothing is outlined and the title says so. A sample absent from the saliency file or
    the bank, or a bank whose patch grid differs, is a :class:`DataFileError` naming the file
    (``source``/``bank_source``, else the dataset's ``encoding["source"]``) and the valid range.
    Returns the matplotlib figure (the caller saves and closes it).
    """
    source = _source(importance, source, "saliency dataset")
    sample = int(sample)
    samples = np.asarray(importance["sample"].values)
    if samples.size == 0:
        raise DataFileError(f"{source}: no samples (empty saliency file)")
    if sample not in samples:
        raise DataFileError(f"{source}: no sample {sample} (samples are window start indices "
                            f"{int(samples.min())}..{int(samples.max())})")
    entry = importance["importance"].sel(sample=sample).values
    steps = entry.shape[0]
    field = np.asarray(series_field)
    if sample + steps > field.shape[0]:
        raise DataFileError(f"{source}: window t={sample} needs frames {sample}..{sample + steps - 1}, the processed "
                            f"field has {field.shape[0]} (a saliency file of another dataset?)")
    frames = field[sample:sample + steps, channel]
    dataset_name = importance.attrs.get("nuwa_dataset", "")
    head = f"{title_prefix}{dataset_name}: window t={sample}"
    causal = labels = None
    if bank is None:
        title = f"{head}, importance only (no bank given: no environmental patches outlined)"
    else:
        bank_source = _source(bank, bank_source, "bank dataset")
        sources = np.asarray(bank["source_index"].values)
        copies = np.asarray(bank["copy"].values)
        if sources.size == 0:
            raise DataFileError(f"{bank_source}: the bank has no augmented windows "
                                f"(method {bank.attrs.get('method', '?')!r}); it holds no mask to draw")
        rows = np.flatnonzero((sources == sample) & (copies == int(copy)))
        if rows.size == 0:
            raise DataFileError(f"{bank_source}: no augmented window for sample {sample} copy {int(copy)} (its samples "
                                f"are window start indices {int(sources.min())}..{int(sources.max())}, copies "
                                f"{int(copies.min())}..{int(copies.max())})")
        row = int(rows[0])
        causal = np.asarray(bank["causal"].isel(bank_sample=row).values)
        if causal.shape != entry.shape:
            raise DataFileError(f"{bank_source}: causal has (step, patch_y, patch_x) = {causal.shape}, the saliency "
                                f"file {source} has {entry.shape} (a bank of another dataset or patch size?)")
        if "intervened" in bank.variables:
            intervened = np.asarray(bank["intervened"].isel(bank_sample=row).values)
            labels = [f"step {s}" + (" (mixed)" if intervened[s] else "") for s in range(steps)]
        variant = bank.attrs.get("variant", "?")
        ratio = bank.attrs.get("environment_ratio")
        ratio_text = f", environment ratio {float(ratio):g}" if ratio is not None else ""
        title = f"{head}, bank {variant} copy {int(copy)}{ratio_text} (cyan = environmental)"
    return saliency_overlay(frames, entry, causal, int(importance.attrs["patch_size"]), title=title,
                            step_labels=labels)


def diagnostics_figure(table, dataset_name: str):
    """Saliency diagnostics of one dataset (:func:`nuwa.diagnostics.diagnose`'s table), one group per row.

    Top: the overlap of the environmental patches with the ``k`` largest-anomaly and
    largest-change patches of each step (error bars: sd over seeds where given), the dashed line
    at chance (``k / L``, ρ when ρ·L is whole); middle: Spearman's correlation of importance with
    anomaly and with change; bottom, where the table has it: the IoU of the masks of two
    pretraining seeds (dashed: two random masks, ``iou_chance``). Rows are labelled
    ``objective [layers]``. Returns the matplotlib figure (the caller saves and closes it).
    """
    if len(table) == 0:
        raise ValueError(f"{dataset_name}: the diagnostics table is empty")
    labels = [f"{row.objective}\n[{row.layers}]" for row in table.itertuples()]
    positions = np.arange(len(table))
    width = 0.38
    has_iou = "seed_iou" in table and bool(np.isfinite(table["seed_iou"].to_numpy(dtype=float)).any())
    panels = 3 if has_iou else 2
    figure, axes = plt.subplots(panels, 1, figsize=(max(4.5, 1.5 + 0.75 * len(table)), 2.3 * panels + 0.4),
                                sharex=True, squeeze=False)
    axes = axes[:, 0]

    def sd(column):
        return table[column].to_numpy(dtype=float) if column in table else None

    overlap_axis = axes[0]
    for offset, column, colour in ((-width / 2, "overlap_anomaly", "tab:red"),
                                   (width / 2, "overlap_change", "tab:blue")):
        overlap_axis.bar(positions + offset, table[column].to_numpy(dtype=float), width, yerr=sd(f"{column}_sd"),
                         color=colour, capsize=2, label=column.replace("overlap_", "top-k "))
    chances = np.unique(np.round(table["chance"].to_numpy(dtype=float), 6)) if "chance" in table else \
        np.unique(np.round(table["ratio"].to_numpy(dtype=float), 6))
    for index, chance in enumerate(chances):
        overlap_axis.axhline(chance, color="black", linestyle="--", linewidth=1,
                             label="chance (k / L)" if index == 0 else None)
    overlap_axis.set_ylim(0, 1.15)
    overlap_axis.set_ylabel("share environmental", fontsize=8)
    overlap_axis.set_title("share of the k largest-anomaly / largest-change patches that are environmental",
                           fontsize=9)

    correlation_axis = axes[1]
    for offset, column, colour in ((-width / 2, "spearman_anomaly", "tab:red"),
                                   (width / 2, "spearman_change", "tab:blue")):
        correlation_axis.bar(positions + offset, table[column].to_numpy(dtype=float), width, color=colour,
                             label=column.replace("spearman_", ""))
    correlation_axis.axhline(0, color="black", linewidth=0.8)
    correlation_axis.set_ylim(-1, 1.3)
    correlation_axis.set_ylabel("Spearman ρ", fontsize=8)
    correlation_axis.set_title("rank correlation of importance with anomaly / change (per step, averaged)",
                               fontsize=9)

    if has_iou:
        iou_axis = axes[2]
        iou_axis.bar(positions, table["seed_iou"].to_numpy(dtype=float), 2 * width, color="tab:gray")
        if "iou_chance" in table:
            for index, chance in enumerate(np.unique(np.round(table["iou_chance"].to_numpy(dtype=float), 6))):
                iou_axis.axhline(chance, color="black", linestyle="--", linewidth=1,
                                 label="two random masks" if index == 0 else None)
            iou_axis.legend(fontsize=6, loc="upper right")
        iou_axis.set_ylim(0, 1.15)
        iou_axis.set_ylabel("IoU (environmental)", fontsize=8)
        iou_axis.set_title("stability: masks of the first two pretraining seeds", fontsize=9)
    axes[-1].set_xticks(positions)
    axes[-1].set_xticklabels(labels, fontsize=7)
    for axis in axes:
        axis.tick_params(axis="y", labelsize=7)
        axis.set_yticks([tick for tick in axis.get_yticks() if -1 <= tick <= 1])
    for axis in axes[:2]:
        axis.legend(fontsize=6, loc="upper right", ncol=3)
    ratio = table["ratio"].iloc[0] if "ratio" in table else None
    ratio_text = f", ρ = {float(ratio):g}" if ratio is not None else ""
    figure.suptitle(f"{dataset_name}: saliency diagnostics (training windows{ratio_text})", fontsize=9)
    figure.tight_layout()
    return figure


# --- comparisons and lead time --------------------------------------------------------------

#: Marker styling of a comparison's verdict (:data:`nuwa.compare.VERDICTS`).
VERDICT_STYLES = {
    "better": {"color": "tab:green", "marker": "o", "filled": True},
    "worse": {"color": "tab:red", "marker": "s", "filled": True},
    "no detectable difference": {"color": "tab:blue", "marker": "D", "filled": True},
    "too few windows and seeds to tell": {"color": "tab:gray", "marker": "o", "filled": False},
}
_OTHER_VERDICT = {"color": "black", "marker": "x", "filled": True}
_BASELINE_COLOURS = ("black", "dimgray", "darkgray", "silver")
_BASELINE_DASHES = ("--", "-.", ":", (0, (5, 2, 1, 2)))


def _count_text(values) -> str:
    """``"3"``, or ``"2-3"`` where the rows differ."""
    numbers = sorted({int(v) for v in values if v == v})
    if not numbers:
        return "?"
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"


def _message_figure(title: str, message: str):
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, transform=axis.transAxes)
    figure.suptitle(title, fontsize=9)
    return figure


def comparison_figure(comparisons, dataset_name: str, windows: str = "all"):
    """Paired comparisons A - B of one dataset and window set (:func:`nuwa.tables.comparison_table`).

    One row per (backbone, comparison): the mean difference as a % of B's test loss,
    ``100 * mean_difference / mean_b``, with the interval ``100 * [low, high] / mean_b`` as a
    whisker, a vertical line at 0 (negative: A better), markers by verdict; a comparison with too
    few windows and seeds for a verdict is drawn hollow and grey, with a note. Rows of the
    ``mse`` metric are drawn where the table has them (else its first metric) and, where it has a
    ``lead`` column, the rows averaged over the leads (``lead`` empty). A dataset / window set
    with no comparison gives a figure that says so. Returns the matplotlib figure (the caller
    saves and closes it).
    """
    frame = comparisons[(comparisons["dataset"] == dataset_name) & (comparisons["windows"] == windows)]
    metric = "mse"
    if "metric" in frame and len(frame):
        metrics = list(dict.fromkeys(frame["metric"]))
        metric = "mse" if "mse" in metrics else str(metrics[0])
        frame = frame[frame["metric"] == metric]
    if "lead" in frame and frame["lead"].isna().any():
        frame = frame[frame["lead"].isna()]
    if len(frame) == 0:
        return _message_figure(f"{dataset_name}: {windows} test windows",
                               f"no comparison for {dataset_name} on the {windows!r} test windows")

    mean_b = frame["mean_b"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = 100.0 * frame["mean_difference"].to_numpy(dtype=float) / mean_b
        low = 100.0 * frame["low"].to_numpy(dtype=float) / mean_b
        high = 100.0 * frame["high"].to_numpy(dtype=float) / mean_b
    verdicts = frame["verdict"].astype(str).to_numpy()
    labels = [f"{row.backbone}: {row.comparison}" for row in frame.itertuples()]
    positions = np.arange(len(frame))

    figure, axis = plt.subplots(figsize=(6.5, 1.2 + 0.38 * len(frame)))
    axis.axvline(0.0, color="black", linewidth=0.8, gid="zero")
    for verdict in dict.fromkeys(verdicts):
        style = VERDICT_STYLES.get(verdict, _OTHER_VERDICT)
        rows = np.flatnonzero(verdicts == verdict)
        hollow = not style["filled"]
        axis.hlines(positions[rows], low[rows], high[rows], color=style["color"], linewidth=1.5,
                    linestyles="dashed" if hollow else "solid", gid="interval")
        axis.plot(centre[rows], positions[rows], linestyle="none", marker=style["marker"], markersize=6,
                  color=style["color"], markerfacecolor="none" if hollow else style["color"],
                  label=f"{verdict} ({len(rows)})", gid="difference")
    axis.set_yticks(positions)
    axis.set_yticklabels(labels, fontsize=7)
    axis.set_ylim(len(frame) - 0.5, -0.5)  # first row on top
    axis.tick_params(axis="x", labelsize=7)
    axis.set_xlabel(f"A − B, % of B's test {metric.upper()} (negative: A better)", fontsize=8)
    axis.legend(fontsize=6, loc="best")
    seeds = _count_text(frame["n_seeds"]) if "n_seeds" in frame else "?"
    count = _count_text(frame["n_windows"]) if "n_windows" in frame else "?"
    axis.set_title(f"{dataset_name}: {windows} test windows ({seeds} seed{'' if seeds == '1' else 's'}, "
                   f"{count} window{'' if count == '1' else 's'})", fontsize=9)
    if any(not VERDICT_STYLES.get(v, _OTHER_VERDICT)["filled"] for v in verdicts):
        figure.text(0.01, 0.005, "hollow grey, dashed: too few windows and seeds to tell (no verdict; the "
                    "interval is shown, not tested)", fontsize=6, color="tab:gray", ha="left", va="bottom")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


HIGHER_IS_BETTER = ("csi", "fss", "ssim", "psnr")  # metric name prefixes; the others are errors


def lead_time_figure(lead_time, dataset_name: str, metric: str | Sequence[str] = "mse"):
    """Test ``metric`` (one name or several: one row of panels each) against lead time for one
    dataset (the ``lead_time.csv`` table: dataset, backbone, variant, seed, lead, mse, mae, and
    ``csi_*`` / ``fss_*`` columns for thresholded fields).

    One panel per backbone, one line per variant averaged over its seeds; the baselines (variant
    ``-``, backbone = the baseline's name) are drawn dashed in black / grey in every panel. Each
    row's label says which direction is better. A dataset with no rows gives a figure that says
    so; a ``metric`` not in the table is a ValueError. Returns the matplotlib figure (the caller
    saves and closes it).
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for name in metrics:
        if name not in lead_time.columns:
            columns = ", ".join(map(str, lead_time.columns))
            raise ValueError(f"no column {name!r} in the lead-time table (columns: {columns})")
    title = ", ".join(name.upper() for name in metrics)
    frame = lead_time[lead_time["dataset"] == dataset_name]
    if len(frame) == 0:
        return _message_figure(f"{dataset_name}: test {title} by lead time",
                               f"no lead-time rows for {dataset_name}")
    baseline_rows = frame["variant"].astype(str) == "-"
    baselines, models = frame[baseline_rows], frame[~baseline_rows]
    backbones = list(dict.fromkeys(models["backbone"])) or ["baselines"]
    variants = list(dict.fromkeys(models["variant"]))
    colours = {variant: plt.get_cmap("tab10")(index % 10) for index, variant in enumerate(variants)}

    def mean_curve(part, name):
        curve = part.groupby("lead", sort=True)[name].mean()
        return curve.index.to_numpy(dtype=float), curve.to_numpy(dtype=float)

    figure, axes = plt.subplots(len(metrics), len(backbones), figsize=(1.0 + 3.2 * len(backbones),
                                                                       0.4 + 2.6 * len(metrics)),
                                sharey="row", squeeze=False)
    for row, name in enumerate(metrics):
        for axis, backbone in zip(axes[row], backbones):
            part = models[models["backbone"] == backbone]
            for variant in dict.fromkeys(part["variant"]):
                rows = part[part["variant"] == variant]
                seeds = rows["seed"].nunique()
                leads, values = mean_curve(rows, name)
                axis.plot(leads, values, color=colours[variant], marker="o", markersize=2.5, linewidth=1.3,
                          label=f"{variant} ({seeds} seed{'s' if seeds != 1 else ''})", gid=f"variant:{variant}")
            for index, baseline in enumerate(dict.fromkeys(baselines["backbone"])):
                leads, values = mean_curve(baselines[baselines["backbone"] == baseline], name)
                axis.plot(leads, values, color=_BASELINE_COLOURS[index % len(_BASELINE_COLOURS)],
                          linestyle=_BASELINE_DASHES[index % len(_BASELINE_DASHES)], linewidth=1.1,
                          label=str(baseline), gid=f"baseline:{baseline}")
            axis.set_title(str(backbone), fontsize=8)
            axis.set_xlabel("lead time (steps)", fontsize=8)
            axis.tick_params(labelsize=7)
            if row == 0:
                axis.legend(fontsize=6, loc="best")
        better = "higher" if name.split("_")[0] in HIGHER_IS_BETTER else "lower"
        axes[row][0].set_ylabel(f"test {name.upper()}\n(mean over seeds; {better} is better)", fontsize=8)
    figure.suptitle(f"{dataset_name}: test {title} by lead time (dashed: baselines)", fontsize=9)
    figure.tight_layout()
    return figure


def scarcity_figure(comparisons):
    """The gain against the share of training windows (data scarcity): one panel per (dataset,
    task, backbone), one line per comparison A − B: the relative difference of the test MSE in per
    cent of B against the train percent, with its interval as error bars (all test windows).
    Below 0: A has the lower error. A grid with one train percent gives a figure that says so."""
    part = comparisons[comparisons["windows"] == "all"] if len(comparisons) else comparisons
    if len(part) == 0 or part["train_percent"].nunique() < 2:
        return _message_figure("Data scarcity", "only one train percent in this grid (grid.train_percents)")
    panels = list(dict.fromkeys(zip(part["dataset"], part["task"], part["backbone"])))
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.0 + 3.4 * columns, 0.6 + 2.8 * rows), squeeze=False)
    comparisons_seen = list(dict.fromkeys(part["comparison"]))
    colours = {name: plt.get_cmap("tab10")(index % 10) for index, name in enumerate(comparisons_seen)}
    for axis, (dataset, task, backbone) in zip(axes.flat, panels):
        mine = part[(part["dataset"] == dataset) & (part["task"] == task) & (part["backbone"] == backbone)]
        for name, rows_of in mine.groupby("comparison", sort=False):
            rows_of = rows_of.sort_values("train_percent")
            base = rows_of["mean_b"].to_numpy(dtype=float)
            centre = 100 * rows_of["mean_difference"].to_numpy(dtype=float) / base
            low = 100 * rows_of["low"].to_numpy(dtype=float) / base
            high = 100 * rows_of["high"].to_numpy(dtype=float) / base
            axis.errorbar(rows_of["train_percent"].to_numpy(dtype=float), centre, yerr=[centre - low, high - centre],
                          color=colours[name], marker="o", markersize=3, capsize=2, linewidth=1.2, label=name,
                          gid=f"comparison:{name}")
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_xscale("log")
        percents = sorted(mine["train_percent"].unique())
        axis.set_xticks(percents, [f"{p:g}" for p in percents])
        axis.set_title(f"{dataset} ({task}), {backbone}", fontsize=8)
        axis.set_xlabel("training windows used (%)", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    axes[0][0].set_ylabel("A − B, % of B's test MSE\n(below 0: A better; 95 % interval)", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="best")
    figure.suptitle("Data scarcity: each comparison against the share of training windows", fontsize=9)
    figure.tight_layout()
    return figure
