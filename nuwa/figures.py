"""Figures: predictions (maps, errors, an animation), learning curves, saliency overlays, comparisons.

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


# --- predictions: maps with units, timestamps and lead times --------------------------------

#: Units (the data's ``units`` attribute) drawn in pysteps' precipitation colour map, as pysteps names them.
PYSTEPS_UNITS = {"mm h-1": "mm/h", "mm/h": "mm/h", "mm hr-1": "mm/h", "mm h**-1": "mm/h", "mm": "mm", "dBZ": "dBZ",
                 "dbz": "dBZ"}
ERROR_CMAP = "RdBu_r"  # diverging: blue where the forecast is too low, red where too high


def field_style(units: str, low: float, high: float) -> dict:
    """How a field is drawn: ``cmap``, ``norm`` and the colour bar's ``ticks``, ``ticklabels`` and
    ``extend``. Precipitation (mm/h, mm, dBZ) in pysteps' own colour map and levels (values under
    its first level transparent, as pysteps draws them); any other field in viridis from ``low``
    to ``high``."""
    from matplotlib.colors import Normalize

    pysteps_units = PYSTEPS_UNITS.get(str(units).strip())
    if pysteps_units is not None:
        import contextlib
        import io
        import warnings

        with contextlib.redirect_stdout(io.StringIO()):  # pysteps announces its configuration file on import
            from pysteps.visualization.precipfields import get_colormap
        with warnings.catch_warnings():  # pysteps builds the map with Colormap.set_over etc., pending deprecation
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            cmap, norm, levels, labels = get_colormap("depth" if pysteps_units == "mm" else "intensity",
                                                      pysteps_units, "pysteps")
        return {"cmap": cmap, "norm": norm, "ticks": levels, "ticklabels": labels, "extend": "max"}
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # grey: never-observed pixels
    return {"cmap": cmap, "norm": Normalize(low, high if high > low else low + 1), "ticks": None, "ticklabels": None,
            "extend": "neither"}


def error_style(limit: float) -> dict:
    """Error maps (prediction − truth): a diverging map centred at 0 with symmetric limits ±``limit``."""
    from matplotlib.colors import Normalize

    cmap = plt.get_cmap(ERROR_CMAP).with_extremes(bad="lightgrey")
    limit = float(limit) if np.isfinite(limit) and limit > 0 else 1.0
    return {"cmap": cmap, "norm": Normalize(-limit, limit), "ticks": None, "ticklabels": None, "extend": "neither"}


def _is_time(values) -> bool:
    values = np.asarray(values)
    if values.dtype == object and values.size:  # cftime dates of a non-standard calendar
        return hasattr(values.flat[0], "calendar")
    return np.issubdtype(values.dtype, np.datetime64)


def _day(value) -> str:
    """The date of a time value: numpy datetime64 or a cftime date (360-day, no-leap calendars)."""
    return value.strftime("%Y-%m-%d") if hasattr(value, "calendar") else str(np.datetime64(value, "D"))


def time_text(value, attrs: dict | None = None, short: bool = False) -> str:
    """A time coordinate's value as a forecaster writes it: ``2010-08-26 05:40 UTC`` (UTC where the
    data's time coordinate says so; ``short``: ``05:40``), or ``frame 1234`` for a frame index."""
    attrs = attrs or {}
    if _is_time(value):
        import pandas as pd

        stamp = value if hasattr(value, "calendar") else pd.Timestamp(value)
        zone = " UTC" if any("UTC" in str(text) for text in attrs.values()) else ""
        return stamp.strftime("%H:%M" if short else "%Y-%m-%d %H:%M") + ("" if short else zone)
    units = str(attrs.get("units", "frame"))
    return f"{units if units not in ('', '1') else 't'} {int(value)}"


def lead_text(value, attrs: dict | None = None) -> str:
    """A lead (or input offset) as ``+10 min``, ``+2 h``, ``-1 d``, or ``+3 frames`` for frame counts; ``0``."""
    sign = "-" if value < value * 0 else "+"
    if np.issubdtype(np.asarray(value).dtype, np.timedelta64):
        seconds = abs(float(value / np.timedelta64(1, "s")))
        for size, name in ((86400, "d"), (3600, "h"), (60, "min")):
            if seconds >= size and seconds % size == 0:
                return f"{sign}{int(seconds // size)} {name}"
        return "0" if seconds == 0 else f"{sign}{seconds:g} s"
    count = abs(int(value))
    units = str((attrs or {}).get("units", "frame"))
    units = "step" if units in ("", "1") else units
    return "0" if count == 0 else f"{sign}{count} {units}{'s' if count != 1 and not units.endswith('s') else ''}"


def most_signal_window(examples: xr.Dataset, channel: int = 0) -> int:
    """The example whose target frames vary most (standard deviation over leads and pixels; for
    rain, the window with the most structured rain): the one the prediction figures show. Ties:
    the first (deterministic)."""
    truth = np.asarray(examples["truth"].values[:, :, channel], dtype=np.float64)
    return int(np.argmax([np.nanstd(window) for window in truth]))


def _check_same_windows(examples: dict) -> np.ndarray:
    """The example windows' start indices, the same in every examples file (else a DataFileError)."""
    names = list(examples)
    first = np.asarray(examples[names[0]]["source_index"].values)
    for name in names[1:]:
        other = np.asarray(examples[name]["source_index"].values)
        if other.shape != first.shape or (other != first).any():
            raise DataFileError(f"examples of {_model_name(name)} hold test windows {other.tolist()}, those of "
                                f"{_model_name(names[0])} {first.tolist()}: rerun the train stage of the older one")
    return first


def _model_name(key) -> str:
    return " / ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _masked(values: np.ndarray, examples: xr.Dataset) -> np.ndarray:
    """``values`` (..., y, x) as float with never-observed pixels (``observed`` = 0) set to NaN: drawn grey."""
    values = np.asarray(values, dtype=np.float64)
    if "observed" in examples.coords and values.shape[-2:] == examples["observed"].shape:
        values = np.where(np.asarray(examples["observed"].values, dtype=bool), values, np.nan)
    return values


def _origin(examples: xr.Dataset) -> str:
    """``lower`` where ``y`` is a northward coordinate that increases (latitude, projected metres),
    so that north is up; ``upper`` (row 0 on top, as images and most radar grids are stored) otherwise."""
    if "y" not in examples.coords or examples.sizes.get("y", 0) < 2:
        return "upper"
    y = examples["y"]
    northward = y.attrs.get("standard_name") in ("latitude", "projection_y_coordinate") or \
        str(y.attrs.get("units", "")) in ("degrees_north", "degree_north", "m", "km")
    values = np.asarray(y.values, dtype=np.float64)
    return "lower" if northward and values[-1] > values[0] else "upper"


def _colorbar(figure, image, cax, style: dict, label: str, orientation: str = "vertical"):
    bar = figure.colorbar(image, cax=cax, orientation=orientation, extend=style["extend"],
                          ticks=style["ticks"], spacing="uniform")
    if style["ticklabels"] is not None:
        labels = list(style["ticklabels"])
        if orientation == "horizontal" and len(labels) > 9:  # side by side they would overlap: every other one
            labels = [text if index % 2 == 0 else "" for index, text in enumerate(labels)]
        bar.set_ticks(style["ticks"], labels=labels)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return bar


def _units(examples: xr.Dataset) -> tuple[str, str, str]:
    """(units, what, in_units) of the field: the data's ``units`` attribute, the name before its
    ':', and `` (units)`` for colour bar labels (nothing for a dimensionless field, units ``1``)."""
    attrs = examples["truth"].attrs
    units = str(attrs.get("units", "1"))
    return units, str(attrs.get("long_name", "value")).split(":")[0], "" if units in ("1", "") else f" ({units})"


def _channel_note(examples: xr.Dataset, channel: int) -> str:
    """``, channel inflow (1 of 2)`` for a field of several channels (one is drawn), else nothing."""
    count = examples.sizes.get("channel", 1)
    if count < 2:
        return ""
    name = examples["channel"].values[channel] if "channel" in examples.coords else channel
    return f", channel {name} ({channel + 1} of {count})"


def _frame_times(examples: xr.Dataset, window: int) -> dict:
    """Labels of one window's frames: ``inputs`` and ``leads`` (per frame, two lines: offset and
    time), ``issued`` (the forecast reference time), from the examples' coordinates; files written
    before examples had coordinates get step numbers and the window's start index."""
    t_in, t_out = examples.sizes["input_step"], examples.sizes["lead"]
    if "time" not in examples.coords:
        start = int(examples["source_index"].values[window])
        return {"inputs": [f"input {s + 1}" for s in range(t_in)], "leads": [f"+{k + 1}" for k in range(t_out)],
                "issued": f"test window starting at t={start}"}
    attrs = examples["time"].attrs
    valid = examples["time"].values[window]
    inputs = examples["input_time"].values[window]
    short = _is_time(valid) and len({_day(v) for v in (*inputs, *valid)}) == 1
    issued = time_text(examples["forecast_reference_time"].values[window], attrs)
    return {"inputs": [f"{lead_text(o, examples['input_step'].attrs)}\n{time_text(t, attrs, short=short)}"
                       for o, t in zip(examples["input_step"].values, inputs)],
            "leads": [f"{lead_text(o, examples['lead'].attrs)}\n{time_text(t, attrs, short=short)}"
                      for o, t in zip(examples["lead"].values, valid)],
            "issued": f"forecast issued {issued} (the last input frame)"}


def prediction_figure(examples: dict, title: str, window: int | None = None, channel: int = 0):
    """One test window's forecasts by every model, with their errors.

    ``examples``: examples datasets (:func:`nuwa.evaluate.examples_dataset`) keyed by model, e.g.
    ``(backbone, variant)``, all holding the same test windows (else a DataFileError). ``window``:
    the example shown (default: :func:`most_signal_window`). Columns are frames: the inputs,
    then lead times, titled with the offset from the forecast reference time and the valid time.
    Top block: the inputs, the truth and each model's prediction on one colour scale (pysteps'
    precipitation map for rain, :func:`field_style`), a colour bar in the data's units; bottom
    block: each model's error, prediction − truth, in a diverging map centred at 0 with limits
    symmetric over every model (the same scale for all, so rows compare). Images carry
    ``gid`` ``truth:lead{k}``, ``prediction:{model}:lead{k}`` and ``error:{model}:lead{k}``.
    Returns the matplotlib figure (the caller saves and closes it).
    """
    from matplotlib.gridspec import GridSpec

    _check_same_windows(examples)
    models = list(examples)
    first = examples[models[0]]
    window = most_signal_window(first, channel) if window is None else int(window)
    truth = _masked(first["truth"].values[window, :, channel], first)
    inputs = np.asarray(first["inputs"].values[window, :, channel], dtype=np.float64)
    if inputs.shape[-2:] == truth.shape[-2:]:
        inputs = _masked(inputs, first)
    predictions = {m: _masked(examples[m]["prediction"].values[window, :, channel], first) for m in models}
    errors = {m: predictions[m] - truth for m in models}
    values = [inputs, truth, *predictions.values()]
    low = min(float(np.nanmin(v)) for v in values)
    high = max(float(np.nanmax(v)) for v in values)
    units, what, in_units = _units(first)
    style = field_style(units, low, high)
    limit = max(float(np.nanmax(np.abs(e))) for e in errors.values())
    errors_style = error_style(limit)
    labels = _frame_times(first, window)
    origin = _origin(first)

    t_in, t_out = inputs.shape[0], truth.shape[0]
    columns = max(t_in, t_out)
    # rows: inputs, a gap for the lead-time titles, truth and predictions (one colour scale), a
    # gap, the errors (another); None marks a gap
    rows = [("input", inputs, "input"), None, ("truth", truth, "truth")]
    rows += [(_model_name(m), predictions[m], f"prediction:{_model_name(m)}") for m in models]
    rows += [None] + [(f"{_model_name(m)}\nerror", errors[m], f"error:{_model_name(m)}") for m in models]
    heights = [0.42 if row is None else 1.0 for row in rows]
    panel, left, right, top, bottom = 1.15, 0.95, 0.85, 0.75, 0.1  # inches
    width = left + right + panel * (columns + 0.08) * 1.08
    height = top + bottom + panel * sum(heights) * 1.06
    figure = plt.figure(figsize=(width, height))
    grid = GridSpec(len(rows), columns + 1, figure=figure, width_ratios=[1] * columns + [0.08],
                    height_ratios=heights, hspace=0.06, wspace=0.08, left=left / width, right=1 - right / width,
                    top=1 - top / height, bottom=bottom / height)
    images = {}  # one image of each colour scale, for its colour bar
    for row, entry in enumerate(rows):
        if entry is None:
            continue
        label, frames, kind = entry
        drawn = errors_style if kind.startswith("error:") else style
        for column in range(columns):
            axis = figure.add_subplot(grid[row, column])
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(frames):
                axis.axis("off")
                continue
            gid = f"{kind}:lead{column + 1}" if kind != "input" else f"input:step{column + 1}"
            images[drawn is errors_style] = axis.imshow(frames[column], cmap=drawn["cmap"], norm=drawn["norm"],
                                                        origin=origin, interpolation="nearest", gid=gid)
            if kind in ("input", "truth"):
                axis.set_title(labels["inputs" if kind == "input" else "leads"][column], fontsize=6.5, pad=2)
            if column == 0:
                axis.set_ylabel(label, fontsize=7)
    gap = rows.index(None, 2)
    _colorbar(figure, images[False], figure.add_subplot(grid[:gap, columns]), style, f"{what}{in_units}")
    _colorbar(figure, images[True], figure.add_subplot(grid[gap + 1:, columns]), errors_style,
              f"prediction − truth{in_units}\nred: too high, blue: too low")
    figure.suptitle(f"{title}{_channel_note(first, channel)}\n{labels['issued']}; columns: inputs, then lead times",
                    fontsize=8.5, y=1 - 0.12 / height, va="top")
    return figure


def prediction_animation(examples: dict, title: str, window: int | None = None, channel: int = 0):
    """An animation over the lead times of one test window (:func:`prediction_figure`'s): per
    frame, the truth and every model's prediction (``examples`` keyed by ``(backbone, variant)``:
    one row per backbone, one column per variant) and below each row its errors (prediction − truth, diverging,
    symmetric limits over every model and lead), two colour bars in the data's units. Returns
    ``(figure, animation)``: the matplotlib figure and its ``FuncAnimation``, one frame per lead
    (:func:`nuwa.io.save_animation` writes it as a GIF; the caller closes the figure)."""
    from matplotlib.animation import FuncAnimation
    from matplotlib.gridspec import GridSpec

    _check_same_windows(examples)
    models = list(examples)
    first = examples[models[0]]
    window = most_signal_window(first, channel) if window is None else int(window)
    truth = _masked(first["truth"].values[window, :, channel], first)
    predictions = {m: _masked(examples[m]["prediction"].values[window, :, channel], first) for m in models}
    backbones = list(dict.fromkeys(backbone for backbone, _ in models))
    variants = list(dict.fromkeys(variant for _, variant in models))
    low = min(float(np.nanmin(v)) for v in (truth, *predictions.values()))
    high = max(float(np.nanmax(v)) for v in (truth, *predictions.values()))
    units, what, in_units = _units(first)
    style = field_style(units, low, high)
    limit = max(float(np.nanmax(np.abs(p - truth))) for p in predictions.values())
    errors_style = error_style(limit)
    labels = _frame_times(first, window)
    origin = _origin(first)

    rows, columns = 2 * len(backbones), 1 + len(variants)
    figure = plt.figure(figsize=(0.4 + 1.45 * columns, 1.3 + 1.45 * rows), dpi=80)
    grid = GridSpec(rows + 1, 2, figure=figure, height_ratios=[1] * rows + [0.08], hspace=0.35)
    cells = grid[:rows, :].subgridspec(rows, columns, hspace=0.3, wspace=0.06)
    updates = []  # (image, frames (lead, y, x))
    for index, backbone in enumerate(backbones):
        for column in range(columns):
            for offset, is_error in ((0, False), (1, True)):
                axis = figure.add_subplot(cells[2 * index + offset, column])
                axis.set_xticks([])
                axis.set_yticks([])
                key = (backbone, variants[column - 1]) if column else None
                if (column == 0 and is_error) or (column and key not in predictions):
                    axis.axis("off")
                    continue
                if column == 0:
                    frames, kind, heading = truth, "truth", "truth"
                else:
                    frames = predictions[key] - truth if is_error else predictions[key]
                    kind = ("error:" if is_error else "prediction:") + _model_name(key)
                    heading = variants[column - 1] + (" error" if is_error else "")
                drawn = errors_style if is_error else style
                image = axis.imshow(frames[0], cmap=drawn["cmap"], norm=drawn["norm"], origin=origin,
                                    interpolation="nearest", gid=kind)
                updates.append((image, frames))
                axis.set_title(heading, fontsize=7, pad=2)
                if column == 0 or (column == 1 and is_error):
                    axis.set_ylabel(backbone, fontsize=7)
    value_image = next(image for image, _ in updates if image.get_gid() == "truth")
    error_image = next((image for image, _ in updates if str(image.get_gid()).startswith("error:")), value_image)
    _colorbar(figure, value_image, figure.add_subplot(grid[rows, 0]), style, f"{what}{in_units}", "horizontal")
    _colorbar(figure, error_image, figure.add_subplot(grid[rows, 1]), errors_style,
              f"prediction − truth{in_units}", "horizontal")
    heading = figure.suptitle("", fontsize=8)
    leads = [text.replace("\n", ", valid ") for text in labels["leads"]]

    def draw(lead: int):
        for image, frames in updates:
            image.set_data(frames[lead])
        heading.set_text(f"{title}{_channel_note(first, channel)}\n{labels['issued']}\nlead {leads[lead]}")
        return [image for image, _ in updates] + [heading]

    draw(0)
    figure.subplots_adjust(left=0.06, right=0.97, top=1 - 0.85 / (1.3 + 1.45 * rows), bottom=0.07)
    return figure, FuncAnimation(figure, draw, frames=truth.shape[0], blit=False, repeat=True)


def learning_curves_figure(histories: dict, dataset_name: str):
    """Training and validation loss against the optimiser step for every run of one dataset.

    ``histories``: each run's ``history.csv`` (columns step, train_loss, val_loss; val_loss NaN
    between evaluations) keyed by ``(task, train_percent, backbone, variant, seed)``. One panel
    per (task, train percent, backbone), one colour per variant, one line per seed: the training
    loss thin (a running mean: the batch losses are noisy), the validation loss with markers at
    its evaluations and a star at its minimum (the checkpoint kept). Log-scaled loss axis.
    Returns the matplotlib figure (the caller saves and closes it)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not histories:
        return _message_figure(f"{dataset_name}: learning curves", f"no training runs of {dataset_name}")
    panels = list(dict.fromkeys(key[:3] for key in histories))
    variants = list(dict.fromkeys(key[3] for key in histories))
    colours = {variant: plt.get_cmap("tab10")(index % 10) for index, variant in enumerate(variants)}
    # variants' validation curves often lie on one another (the paired design): markers tell them apart
    markers = {variant: "osD^vP<>"[index % 8] for index, variant in enumerate(variants)}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    width = max(7.5, 1.0 + 4.0 * columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width, 1.3 + 3.0 * rows), squeeze=False)
    longest = max(len(history) for history in histories.values())
    smooth = max(1, longest // 25)
    for axis, panel in zip(axes.flat, panels):
        for key, history in histories.items():
            if key[:3] != panel:
                continue
            variant, seed = key[3], key[4]
            steps = history["step"].to_numpy(dtype=float)
            train = history["train_loss"].rolling(smooth, min_periods=1).mean().to_numpy(dtype=float)
            axis.plot(steps, train, color=colours[variant], linewidth=0.8, alpha=0.55,
                      gid=f"train:{variant}:seed{seed}")
            evaluated = history[history["val_loss"].notna()]
            val_steps, val = evaluated["step"].to_numpy(dtype=float), evaluated["val_loss"].to_numpy(dtype=float)
            axis.plot(val_steps, val, color=colours[variant], linewidth=1.4, marker=markers[variant], markersize=3,
                      markerfacecolor="none", gid=f"val:{variant}:seed{seed}")
            if len(val):
                best = int(np.argmin(val))
                axis.plot(val_steps[best], val[best], color=colours[variant], marker="*", markersize=8,
                          markeredgecolor="black", markeredgewidth=0.5, linestyle="none")
        task, percent, backbone = panel
        seeds = sorted({key[4] for key in histories if key[:3] == panel})
        axis.set_title(f"{backbone} ({task}, {percent} %; seed{'s' if len(seeds) > 1 else ''} "
                       f"{', '.join(map(str, seeds))})", fontsize=8)
        axis.set_yscale("log")
        # ticks at 1, 2, 5 per decade, more where the curves span little, written plainly (0.2, not 2 × 10⁻¹)
        low, high = axis.get_ylim()
        subs = tuple(range(1, 10)) if high <= 4 * low else (1, 2, 3, 5) if high <= 30 * low else (1, 2, 5)
        axis.yaxis.set_major_locator(LogLocator(subs=subs))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("optimiser step", fontsize=8)
        axis.tick_params(which="both", labelsize=6.5)
        axis.grid(True, which="major", linewidth=0.3, alpha=0.5)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for row in axes:
        row[0].set_ylabel("MSE of the normalised field\n(lower is better)", fontsize=8)
    handles = [Line2D([], [], color=colours[v], linewidth=1.4, marker=markers[v], markersize=3, markerfacecolor="none",
                      label=v) for v in variants]
    handles += [Line2D([], [], color="grey", linewidth=0.8, alpha=0.55,
                       label=f"train (mean of {smooth} steps)" if smooth > 1 else "train"),
                Line2D([], [], color="grey", linewidth=1.4, label="validation (markers: evaluations)"),
                Line2D([], [], color="grey", marker="*", markersize=8, markeredgecolor="black", linestyle="none",
                       label="best validation (kept)")]
    columns_of_legend = min(len(handles), max(2, int(width / 1.7)))
    legend_rows = -(-len(handles) // columns_of_legend)
    figure.legend(handles=handles, fontsize=7, loc="lower center", ncol=columns_of_legend, frameon=False)
    figure.suptitle(f"{dataset_name}: training and validation loss of every run\n(training loss: the batch's, "
                    "augmented windows included)", fontsize=9)
    figure.tight_layout(rect=(0, (0.08 + 0.2 * legend_rows) / (1.3 + 3.0 * rows), 1, 1))
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
