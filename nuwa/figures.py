"""Figures: prediction strips (input / truth / Ori / +Nuwa) and saliency overlays."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


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


def saliency_overlay(frames: np.ndarray, importance: np.ndarray, causal: np.ndarray, patch_size: int, title: str = ""):
    """Input frames (T, H, W) with importance as a heat map and environmental patches outlined."""
    steps = frames.shape[0]
    figure, axes = plt.subplots(2, steps, figsize=(1.5 * steps, 3.2), squeeze=False)
    for step in range(steps):
        top, bottom = axes[0, step], axes[1, step]
        top.imshow(frames[step], cmap="gray")
        heat = np.kron(importance[step], np.ones((patch_size, patch_size)))
        bottom.imshow(frames[step], cmap="gray")
        bottom.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        for (row, col) in np.argwhere(causal[step] == 0):
            for axis in (top, bottom):
                axis.add_patch(Rectangle((col * patch_size - 0.5, row * patch_size - 0.5), patch_size, patch_size,
                                         fill=False, edgecolor="cyan", linewidth=0.8))
        top.set_title(f"step {step}", fontsize=8)
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("input +\nenvironmental", fontsize=7)
    axes[1, 0].set_ylabel("importance", fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
