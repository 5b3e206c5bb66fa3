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
                        thresholds: list[float], batch_size: int = 32,
                        example_count: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Run ``forecast`` (normalised inputs -> normalised outputs) over every test window."""
    series: SeriesData = windows.series
    accumulator = MetricAccumulator(series.data_range, thresholds)
    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, shuffle=False)
    examples: dict[str, list] = {"source_index": [], "inputs": [], "truth": [], "prediction": []}
    for starts, inputs, targets in loader:
        prediction = series.denormalise(forecast(inputs)).numpy()
        truth = series.denormalise(targets).numpy()
        accumulator.update(prediction, truth)
        missing = example_count - len(examples["source_index"])
        if missing > 0:
            examples["source_index"].extend(starts[:missing].tolist())
            examples["inputs"].append(series.denormalise(inputs[:missing]).numpy())
            examples["truth"].append(truth[:missing])
            examples["prediction"].append(prediction[:missing])
    metrics = accumulator.compute()
    metrics["test_windows"] = len(windows)
    stacked = {key: (np.concatenate(value) if key != "source_index" else np.asarray(value, dtype=np.int64))
               for key, value in examples.items() if len(value)}
    return metrics, stacked


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
