"""Figures: prediction strips (input / truth / Ori / +Nuwa) and saliency overlays.

:func:`mask_figure` is the pure core of ``nuwa show-mask`` and of the saliency figure of
``nuwa figures``: the saliency file holds importance only, so the environmental patches drawn
are those a bank actually used (its ``causal`` variable, made with that variant's ratio).
"""

from __future__ import annotations

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
