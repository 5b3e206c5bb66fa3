"""Evaluation on the test split: one function for trained models and trivial baselines.

Metrics are computed on physical units (normalisation undone) with the conventions that
:mod:`nuwa.metrics` documents; ``METRIC_CONVENTIONS`` travels into every metrics.json.

A field with never-observed pixels (:class:`nuwa.windows.SeriesData`'s ``observed``) is scored
over its observed pixels only: the pooled metrics (:mod:`nuwa.metrics`, ``observed``), the
per-window losses and the targets' mean and max alike; ``observed_pixels`` and ``grid_pixels``
are then added to the metrics, the losses' attributes, and ``observed(y, x)`` to the examples.
Without a mask every number is as before.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import xarray as xr

from nuwa.metrics import MASKED_METRIC_CONVENTIONS, METRIC_CONVENTIONS, MetricAccumulator  # noqa: F401 (re-exported)
from nuwa.superres import check_input_factor, coarsen
from nuwa.windows import SeriesData, WindowDataset



@torch.no_grad()
def evaluate_forecaster(forecast: Callable[[torch.Tensor], torch.Tensor], windows: WindowDataset,
                        thresholds: list[float], batch_size: int = 32, example_count: int = 0,
                        attrs: dict | None = None, fss_scales: tuple[int, ...] = (),
                        input_factor: int = 1) -> tuple[dict, dict[str, np.ndarray], xr.Dataset]:
    """Run ``forecast`` (normalised inputs -> normalised outputs) over every test window.

    Returns ``(metrics, examples, losses)``: the pooled metrics (:class:`MetricAccumulator`),
    the inputs, truths and predictions of ``example_count`` test windows spread evenly over the
    test split (:func:`example_positions`: the same windows for every model of a dataset; ``fss_scales``: FSS at
    these window sizes for every threshold, when there are thresholds), and the losses of every
    test window at every lead (:func:`losses_dataset`; ``attrs`` are added to its attributes),
    from which :mod:`nuwa.compare` draws intervals over seeds and test windows. The mean of
    ``losses.mse`` over windows and leads is ``metrics["mse"]`` (every (window, lead) cell
    averages the same number of pixels), up to float64 rounding; likewise ``mae``.

    ``input_factor`` > 1 (the super-resolution task, :mod:`nuwa.superres`): ``forecast`` is
    given the inputs block-averaged ``input_factor`` x ``input_factor`` and must return full-
    resolution outputs; metrics, losses and the examples' truths and predictions are at full
    resolution, the examples' inputs are the coarse ones (:func:`examples_dataset`).
    """
    series: SeriesData = windows.series
    check_input_factor(input_factor, *series.field.shape[-2:], where=f"field {series.name!r}: ")
    # FSS scores thresholded events: a field without thresholds has none
    observed = series.observed  # None: every pixel observed
    accumulator = MetricAccumulator(series.data_range, thresholds, tuple(fss_scales) if thresholds else (),
                                    observed=observed)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, shuffle=False)
    wanted = example_positions(example_count, len(windows))
    seen = 0  # windows before this batch (the loader keeps their order)
    examples: dict[str, list] = {"source_index": [], "inputs": [], "truth": [], "prediction": []}
    per_window: dict[str, list] = {"source_index": [], "mse": [], "mae": [], "target_mean": [], "target_max": []}
    for starts, inputs, targets in loader:
        inputs = coarsen(inputs, input_factor)  # factor 1: the inputs themselves
        prediction = series.denormalise(forecast(inputs)).numpy()
        truth = series.denormalise(targets).numpy()
        accumulator.update(prediction, truth)  # validates: finite, same shape, 5-D
        per_window["source_index"].append(np.asarray(starts, dtype=np.int64))
        if observed is None:
            error = prediction.astype(np.float64) - truth.astype(np.float64)
            per_window["mse"].append(np.mean(error * error, axis=(2, 3, 4)))
            per_window["mae"].append(np.mean(np.abs(error), axis=(2, 3, 4)))
            per_window["target_mean"].append(np.mean(truth, axis=(1, 2, 3, 4), dtype=np.float64))
            per_window["target_max"].append(np.max(truth, axis=(1, 2, 3, 4)).astype(np.float64))
        else:
            for key, value in masked_window_losses(prediction, truth, observed).items():
                per_window[key].append(value)
        rows = wanted[(wanted >= seen) & (wanted < seen + len(starts))] - seen
        seen += len(starts)
        if len(rows):
            examples["source_index"].extend(np.asarray(starts)[rows].tolist())
            examples["inputs"].append(series.denormalise(inputs[torch.as_tensor(rows)]).numpy())
            examples["truth"].append(truth[rows])
            examples["prediction"].append(prediction[rows])
    metrics = accumulator.compute()
    metrics["test_windows"] = len(windows)
    if observed is not None:
        metrics.update(observed_counts(observed))
    per_lead = _per_lead_scores(accumulator) if thresholds else None
    stacked = {key: (np.concatenate(value) if key != "source_index" else np.asarray(value, dtype=np.int64))
               for key, value in examples.items() if len(value)}
    losses = losses_dataset({key: np.concatenate(value) for key, value in per_window.items()}, series,
                            {"input_frames": int(windows.input_frames), "output_frames": int(windows.output_frames),
                             **(attrs or {})}, per_lead)
    return metrics, stacked, losses


def example_positions(count: int, windows: int) -> np.ndarray:
    """Positions of ``count`` example windows among ``windows`` test windows in time order, spread
    evenly (the middle of each of ``count`` equal blocks: one window is the middle one), so that the
    figures see the whole test period, not its first hours. They depend on nothing but the two
    numbers, so every backbone, variant and seed of a dataset keeps the same windows."""
    count = min(max(int(count), 0), int(windows))
    return np.floor((np.arange(count) + 0.5) * windows / max(count, 1)).astype(np.int64)


def observed_counts(observed: np.ndarray) -> dict[str, int]:
    """``observed_pixels`` (scored) and ``grid_pixels`` of a mask of observed pixels."""
    return {"observed_pixels": int(np.count_nonzero(observed)), "grid_pixels": int(np.asarray(observed).size)}


def masked_window_losses(prediction: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window losses over the observed pixels (bool (H, W)) of (B, T, C, H, W) physical fields:
    ``mse`` and ``mae`` (B, T), means over channels and observed pixels of each lead frame;
    ``target_mean`` and ``target_max`` (B,), over the observed pixels of the target frames. Values
    at never-observed pixels, of either field, change nothing."""
    error = prediction[..., observed].astype(np.float64) - truth[..., observed].astype(np.float64)  # (B, T, C, n)
    observed_truth = truth[..., observed]
    return {"mse": np.mean(error * error, axis=(2, 3)), "mae": np.mean(np.abs(error), axis=(2, 3)),
            "target_mean": np.mean(observed_truth, axis=(1, 2, 3), dtype=np.float64),
            "target_max": np.max(observed_truth, axis=(1, 2, 3)).astype(np.float64)}


def _per_lead_scores(accumulator: MetricAccumulator) -> dict:
    """CSI (lead, threshold) and FSS (lead, threshold, scale) pooled over the test windows."""
    from nuwa.metrics import fss_key, threshold_key

    per_step = accumulator.compute_per_step()
    thresholds, scales = accumulator.thresholds, accumulator.fss_scales
    scores = {"threshold": np.asarray(thresholds, dtype=np.float64), "scale": np.asarray(scales, dtype=np.int64),
              "csi": np.array([per_step[threshold_key("csi", thr)] for thr in thresholds], dtype=np.float64).T}
    if scales:
        scores["fss"] = np.array([[per_step[fss_key(thr, scale)] for scale in scales] for thr in thresholds],
                                 dtype=np.float64).transpose(2, 0, 1)
    return scores


def losses_dataset(per_window: dict[str, np.ndarray], series: SeriesData, attrs: dict,
                   per_lead: dict | None = None) -> xr.Dataset:
    """The test losses as a Dataset: ``mse(window, lead)`` and ``mae(window, lead)`` (float64,
    physical units: the mean over channels and pixels of one lead frame of one window),
    ``target_mean(window)`` and ``target_max(window)`` (mean and max of the window's target
    frames), coordinates ``source_index(window)`` (the window's first time step, int64; windows
    in time order) and ``lead`` (1 .. output frames). ``per_lead`` (a field with thresholds):
    ``csi(lead, threshold)`` and, with FSS scales, ``fss(lead, threshold, scale)``, pooled over
    the test windows (scores of counts, not means of per-window scores). A series with never-observed
    pixels (``series.observed``): every per-window value is over the observed pixels only (the
    attributes ``observed_pixels`` and ``grid_pixels`` say so); the per-lead scores are the masked ones."""
    units = series.attrs.get("units", "1")
    if series.observed is not None:
        attrs = {**attrs, **observed_counts(series.observed),
                 "pixels": "observed pixels only: never-observed ones are left out of every value"}
    leads = per_window["mse"].shape[1]
    dataset = xr.Dataset(
        {
            "mse": (("window", "lead"), per_window["mse"].astype(np.float64),
                    {"units": f"({units})^2", "long_name": "mean squared error over channels and pixels of the "
                                                             "lead frame"}),
            "mae": (("window", "lead"), per_window["mae"].astype(np.float64),
                    {"units": units, "long_name": "mean absolute error over channels and pixels of the lead frame"}),
            "target_mean": ("window", per_window["target_mean"].astype(np.float64),
                            {"units": units, "long_name": "mean of the window's target frames"}),
            "target_max": ("window", per_window["target_max"].astype(np.float64),
                           {"units": units, "long_name": "maximum of the window's target frames"}),
        },
        coords={
            "source_index": ("window", per_window["source_index"].astype(np.int64),
                             {"long_name": "test window: index of its first time step in the processed dataset"}),
            "lead": ("lead", np.arange(1, leads + 1, dtype=np.int64), {"long_name": "forecast lead (frames)"}),
        },
        attrs={"units": units, "split": "test", **attrs},
    )
    if per_lead is not None:
        dataset = dataset.assign_coords(threshold=("threshold", per_lead["threshold"], {"units": units}))
        dataset["csi"] = (("lead", "threshold"), per_lead["csi"],
                          {"long_name": "critical success index at >= threshold, pooled over the test windows"})
        if "fss" in per_lead:
            dataset = dataset.assign_coords(scale=("scale", per_lead["scale"], {"units": "pixels"}))
            dataset["fss"] = (("lead", "threshold", "scale"), per_lead["fss"],
                              {"long_name": "fractions skill score at >= threshold in scale x scale windows, "
                                            "pooled over the test windows (NaN: no event)"})
    return dataset


def persistence(inputs: torch.Tensor, output_frames: int) -> torch.Tensor:
    """The trivial baseline: repeat the last input frame."""
    return inputs[:, -1:].expand(-1, output_frames, -1, -1, -1)


def examples_dataset(examples: dict[str, np.ndarray], series: SeriesData, attrs: dict) -> xr.Dataset:
    """The examples of :func:`evaluate_forecaster` as a Dataset: ``inputs(example, input_step,
    channel, y, x)``, ``truth`` and ``prediction(example, lead, channel, y, x)`` in physical units
    (attribute ``units``), labelled with the processed file's coordinates (:func:`example_coords`):
    ``source_index(example)``, ``time(example, lead)`` (valid time of each forecast frame),
    ``forecast_reference_time(example)`` (the last input frame's), ``input_time(example,
    input_step)``, ``lead``, ``input_step``, ``channel``, ``y`` and ``x``. Coarse inputs (the
    super-resolution task: their frames smaller than the truth's) get dims of their own,
    ``input_y`` and ``input_x`` (block means of ``y`` and ``x``), and the dataset the attribute
    ``input_factor`` (truth size / input size). A series with never-observed pixels adds the
    coordinate ``observed(y, x)`` (1 observed, 0 never observed: what the metrics left out)."""
    units = series.attrs.get("units", "1")
    long_name = series.attrs.get("long_name", series.name)
    inputs, truth = examples["inputs"], examples["truth"]
    input_dims = ("example", "input_step", "channel", "y", "x")
    factor = 1
    if inputs.shape[-2:] != truth.shape[-2:]:
        input_dims = ("example", "input_step", "channel", "input_y", "input_x")
        factor = int(truth.shape[-1] // inputs.shape[-1])
        attrs = {**attrs, "input_factor": factor}
    coords = example_coords(series, np.asarray(examples["source_index"], dtype=np.int64), inputs.shape[1],
                            truth.shape[1], factor)
    if series.observed is not None:
        coords["observed"] = (("y", "x"), np.asarray(series.observed, dtype=np.int8),
                              {"long_name": "pixel observed (1) or never observed (0: left out of every metric)",
                               "flag_values": np.array([0, 1], dtype=np.int8),
                               "flag_meanings": "never_observed observed"})
    return xr.Dataset(
        {
            "inputs": (input_dims, inputs.astype(np.float32), {"units": units, "long_name": f"{long_name}: input"}),
            "truth": (("example", "lead", "channel", "y", "x"), truth.astype(np.float32),
                      {"units": units, "long_name": f"{long_name}: observed"}),
            "prediction": (("example", "lead", "channel", "y", "x"), examples["prediction"].astype(np.float32),
                           {"units": units, "long_name": f"{long_name}: forecast"}),
        },
        coords=coords,
        attrs=attrs,
    )


def example_coords(series: SeriesData, starts: np.ndarray, input_frames: int, output_frames: int,
                   factor: int = 1) -> dict:
    """Coordinates of example windows starting at ``starts`` (window start indices), from the
    processed file's (``series.coords``; a series without a time coordinate counts frames):
    ``time(example, lead)`` the valid time of each forecast frame, ``forecast_reference_time``
    the last input frame's, ``input_time(example, input_step)``, and ``lead`` = valid time −
    reference time (a timedelta for datetimes; where the windows' steps differ, frames 1..N) and
    ``input_step`` likewise (0: the last input); ``channel``, ``y`` and ``x``, and for coarse
    inputs (``factor`` > 1) ``input_y`` and ``input_x``, the block means of ``y`` and ``x``."""
    time, time_attrs = series.coords.get("time", (np.arange(len(series.field)),
                                                  {"long_name": "frame index", "units": "frame"}))
    # the processed file's description stays (it says, say, whether times are UTC)
    time_attrs = {**{key: value for key, value in time_attrs.items() if key != "long_name"},
                  **({"comment": f"processed time coordinate: {time_attrs['long_name']}"}
                     if "long_name" in time_attrs else {})}
    input_time = time[starts[:, None] + np.arange(input_frames)]
    valid = time[starts[:, None] + input_frames + np.arange(output_frames)]
    reference = input_time[:, -1]

    def offsets(times, frames):
        """Times since the reference, the same for every example; else (windows of different
        time steps, a pool of mixed steps) frames."""
        offset = times - reference[:, None]
        if offset.dtype == object:  # cftime dates (a 360-day or no-leap calendar): datetime.timedelta
            offset = offset.astype("timedelta64[us]")
        if len(starts) and (offset == offset[:1]).all():
            units = {} if np.issubdtype(offset.dtype, np.timedelta64) else {"units": time_attrs.get("units", "frame")}
            return offset[0], units
        return frames, {"units": "frame"}

    lead, lead_units = offsets(valid, np.arange(1, output_frames + 1, dtype=np.int64))
    step, step_units = offsets(input_time, np.arange(1 - input_frames, 1, dtype=np.int64))
    coords = {
        "source_index": ("example", starts, {"long_name": "test window: index of its first time step in the "
                                                          "processed dataset"}),
        "time": (("example", "lead"), valid, {**time_attrs, "long_name": "valid time of the forecast frame"}),
        "forecast_reference_time": ("example", reference, {
            **time_attrs, "long_name": "time of the last input frame (the forecast is issued then)",
            **({"standard_name": "forecast_reference_time"} if "standard_name" in time_attrs else {})}),
        "input_time": (("example", "input_step"), input_time, {**time_attrs, "long_name": "time of the input frame"}),
        "lead": ("lead", lead, {"long_name": "forecast lead: valid time minus forecast reference time",
                                "standard_name": "forecast_period", **lead_units}),
        "input_step": ("input_step", step, {"long_name": "input frame's time minus forecast reference time "
                                                         "(0: the last input)", **step_units}),
    }
    for dim in ("channel", "y", "x"):
        if dim in series.coords:
            values, dim_attrs = series.coords[dim]
            coords[dim] = (dim, values, dim_attrs)
            if factor > 1 and dim != "channel":
                coords[f"input_{dim}"] = (f"input_{dim}", np.asarray(values, dtype=np.float64).reshape(-1, factor)
                                          .mean(axis=1), {**dim_attrs, "comment": f"block mean of {factor} {dim} "
                                                                                  "values: the coarse inputs' pixels"})
    return coords
