"""Evaluation on the test split: one function for trained models and trivial baselines.

Metrics are computed on physical units (normalisation undone) with the conventions that
:mod:`nuwa.metrics` documents; ``METRIC_CONVENTIONS`` travels into every metrics.json.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import xarray as xr

from nuwa.metrics import METRIC_CONVENTIONS, MetricAccumulator  # noqa: F401 (re-exported)
from nuwa.windows import SeriesData, WindowDataset



@torch.no_grad()
def evaluate_forecaster(forecast: Callable[[torch.Tensor], torch.Tensor], windows: WindowDataset,
                        thresholds: list[float], batch_size: int = 32, example_count: int = 0,
                        attrs: dict | None = None,
                        fss_scales: tuple[int, ...] = ()) -> tuple[dict, dict[str, np.ndarray], xr.Dataset]:
    """Run ``forecast`` (normalised inputs -> normalised outputs) over every test window.

    Returns ``(metrics, examples, losses)``: the pooled metrics (:class:`MetricAccumulator`),
    the first ``example_count`` windows' inputs, truths and predictions (``fss_scales``: FSS at
    these window sizes for every threshold, when there are thresholds), and the losses of every
    test window at every lead (:func:`losses_dataset`; ``attrs`` are added to its attributes),
    from which :mod:`nuwa.compare` draws intervals over seeds and test windows. The mean of
    ``losses.mse`` over windows and leads is ``metrics["mse"]`` (every (window, lead) cell
    averages the same number of pixels), up to float64 rounding; likewise ``mae``.
    """
    series: SeriesData = windows.series
    # FSS scores thresholded events: a field without thresholds has none
    accumulator = MetricAccumulator(series.data_range, thresholds, tuple(fss_scales) if thresholds else ())
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, shuffle=False)
    examples: dict[str, list] = {"source_index": [], "inputs": [], "truth": [], "prediction": []}
    per_window: dict[str, list] = {"source_index": [], "mse": [], "mae": [], "target_mean": [], "target_max": []}
    for starts, inputs, targets in loader:
        prediction = series.denormalise(forecast(inputs)).numpy()
        truth = series.denormalise(targets).numpy()
        accumulator.update(prediction, truth)  # validates: finite, same shape, 5-D
        error = prediction.astype(np.float64) - truth.astype(np.float64)
        per_window["source_index"].append(np.asarray(starts, dtype=np.int64))
        per_window["mse"].append(np.mean(error * error, axis=(2, 3, 4)))
        per_window["mae"].append(np.mean(np.abs(error), axis=(2, 3, 4)))
        per_window["target_mean"].append(np.mean(truth, axis=(1, 2, 3, 4), dtype=np.float64))
        per_window["target_max"].append(np.max(truth, axis=(1, 2, 3, 4)).astype(np.float64))
        missing = example_count - len(examples["source_index"])
        if missing > 0:
            examples["source_index"].extend(starts[:missing].tolist())
            examples["inputs"].append(series.denormalise(inputs[:missing]).numpy())
            examples["truth"].append(truth[:missing])
            examples["prediction"].append(prediction[:missing])
    metrics = accumulator.compute()
    metrics["test_windows"] = len(windows)
    per_lead = _per_lead_scores(accumulator) if thresholds else None
    stacked = {key: (np.concatenate(value) if key != "source_index" else np.asarray(value, dtype=np.int64))
               for key, value in examples.items() if len(value)}
    losses = losses_dataset({key: np.concatenate(value) for key, value in per_window.items()}, series,
                            {"input_frames": int(windows.input_frames), "output_frames": int(windows.output_frames),
                             **(attrs or {})}, per_lead)
    return metrics, stacked, losses


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
    the test windows (scores of counts, not means of per-window scores)."""
    units = series.attrs.get("units", "1")
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
    units = series.attrs.get("units", "1")
    return xr.Dataset(
        {
            "inputs": (("example", "input_step", "channel", "y", "x"), examples["inputs"].astype(np.float32), {"units": units}),
            "truth": (("example", "lead", "channel", "y", "x"), examples["truth"].astype(np.float32), {"units": units}),
            "prediction": (("example", "lead", "channel", "y", "x"), examples["prediction"].astype(np.float32),
                           {"units": units}),
            "source_index": ("example", examples["source_index"],
                             {"long_name": "test window: index of its first time step in the processed dataset"}),
        },
        attrs=attrs,
    )
