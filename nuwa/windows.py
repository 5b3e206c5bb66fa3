"""Sliding windows over a processed dataset, and the torch Dataset on top of them.

A window is identified by its start index in the time axis (``source_index``); every stage
carries that index, so masks and bank samples always meet their own source window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nuwa.ingest import SPLIT_CODES
from nuwa.io import DataFileError, check_finite, open_netcdf


@dataclass
class SeriesData:
    """A processed dataset in memory: field (time, channel, y, x) and what windows need."""

    field: np.ndarray  # physical units, float32
    split: np.ndarray  # int8 flag per time step
    mean: np.ndarray  # (channel,)
    std: np.ndarray  # (channel,)
    data_range: float
    name: str
    attrs: dict

    def normalise(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)

    def denormalise(self, values):
        mean = torch.as_tensor(self.mean)[:, None, None] if isinstance(values, torch.Tensor) else self.mean[:, None, None]
        std = torch.as_tensor(self.std)[:, None, None] if isinstance(values, torch.Tensor) else self.std[:, None, None]
        return values * std + mean


def load_series(path) -> SeriesData:
    dataset = open_netcdf(path, variables=("split", "norm_mean", "norm_std"))
    name = dataset.attrs.get("nuwa_variable")
    if name not in dataset.data_vars:
        raise DataFileError(f"{path}: attribute nuwa_variable={name!r} does not name a data variable")
    field = dataset[name]
    if tuple(field.dims) != ("time", "channel", "y", "x"):
        raise DataFileError(f"{path}: variable {name!r} has dims {tuple(field.dims)}, expected ('time', 'channel', 'y', 'x')")
    values = np.asarray(field.values, dtype=np.float32)
    check_finite(values, f"{path}: variable {name!r}")
    return SeriesData(field=values, split=dataset["split"].values.astype(np.int8),
                      mean=dataset["norm_mean"].values.astype(np.float32),
                      std=dataset["norm_std"].values.astype(np.float32),
                      data_range=float(dataset.attrs["data_range"]), name=name,
                      attrs={**dataset.attrs, "units": field.attrs.get("units", "1"),
                             "long_name": field.attrs.get("long_name", name)})


def window_starts(split_flags: np.ndarray, split: str, window_length: int, stride: int) -> np.ndarray:
    """Start indices of windows lying wholly inside the contiguous block of ``split``."""
    block = np.flatnonzero(split_flags == SPLIT_CODES[split])
    if block.size == 0:
        return np.zeros(0, dtype=np.int64)
    first, last = int(block[0]), int(block[-1])
    if block.size != last - first + 1:
        raise DataFileError(f"split {split!r} is not one contiguous block of time steps")
    return np.arange(first, last - window_length + 2, stride, dtype=np.int64)


class WindowDataset(torch.utils.data.Dataset):
    """Normalised (index, input, target) windows of one split; index = window start."""

    def __init__(self, series: SeriesData, split: str, input_frames: int, output_frames: int, stride: int):
        self.series = series
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.starts = window_starts(series.split, split, input_frames + output_frames, stride)
        self.normalised = torch.from_numpy(series.normalise(series.field))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, item: int):
        start = int(self.starts[item])
        middle = start + self.input_frames
        window = self.normalised
        return start, window[start:middle], window[middle:middle + self.output_frames]

    def inputs(self, starts: np.ndarray) -> np.ndarray:
        """Physical-unit inputs (N, T_in, C, H, W) for the given window starts."""
        index = np.asarray(starts)[:, None] + np.arange(self.input_frames)[None, :]
        return self.series.field[index]

    def targets_normalised(self, starts) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(starts))[:, None] + self.input_frames + torch.arange(self.output_frames)[None, :]
        return self.normalised[index]


def select_dataset(series: SeriesData, config: dict, split: str) -> WindowDataset:
    return WindowDataset(series, split, config["input_frames"], config["output_frames"], config["window_stride"])
