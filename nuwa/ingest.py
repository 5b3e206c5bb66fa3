"""Stage 1, ingest: a registered dataset becomes ``data/processed/{dataset}.nc``.

The file holds the field with dims ``(time, channel, y, x)``, a ``split`` flag per time step
(train, val, test as contiguous blocks in that order, so no window of one split overlaps
another) and normalisation statistics computed on the training block only.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from nuwa.datasets import get_dataset
from nuwa.io import check_finite

SPLITS = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


def split_flags(n_times: int, fractions: dict) -> np.ndarray:
    """Contiguous blocks: the first ``train`` fraction of steps, then val, then the rest test."""
    n_train = int(n_times * fractions["train"])
    n_val = int(n_times * fractions["val"])
    flags = np.full(n_times, SPLIT_CODES["test"], dtype=np.int8)
    flags[:n_train] = SPLIT_CODES["train"]
    flags[n_train:n_train + n_val] = SPLIT_CODES["val"]
    return flags


def build_processed(field: xr.DataArray, config: dict, dataset_name: str) -> xr.Dataset:
    """Attach split flags, train-only statistics and CF attributes to a raw field."""
    expected = ("time", "channel", "y", "x")
    if tuple(field.dims) != expected:
        raise ValueError(f"dataset {dataset_name!r}: generator returned dims {tuple(field.dims)}, expected {expected}")
    values = np.asarray(field.values, dtype=np.float32)
    check_finite(values, f"dataset {dataset_name!r}")
    flags = split_flags(field.sizes["time"], config["split"])
    train = values[flags == SPLIT_CODES["train"]]
    mean = train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = train.std(axis=(0, 2, 3), dtype=np.float64)
    if (std == 0).any():
        constant = [str(c) for c, s in zip(field["channel"].values, std) if s == 0]
        raise ValueError(f"dataset {dataset_name!r}: channel(s) {', '.join(constant)} constant over the training "
                         "split (zero variance): cannot normalise")
    name = field.name or "field"
    dataset = xr.Dataset(
        {
            name: (expected, values, dict(field.attrs)),
            "split": ("time", flags, {
                "long_name": "data split of each time step",
                "flag_values": np.arange(len(SPLITS), dtype=np.int8),
                "flag_meanings": " ".join(SPLITS),
            }),
            "norm_mean": ("channel", mean.astype(np.float32),
                          {"long_name": "per-channel mean over the training split", "units": field.attrs.get("units", "1")}),
            "norm_std": ("channel", std.astype(np.float32),
                         {"long_name": "per-channel standard deviation over the training split",
                          "units": field.attrs.get("units", "1")}),
        },
        coords={c: field.coords[c] for c in field.coords},
    )
    for dim, long_name in (("y", "grid row"), ("x", "grid column")):
        if dim not in dataset.coords:
            dataset = dataset.assign_coords({dim: np.arange(field.sizes[dim], dtype=np.int32)})
        dataset[dim].attrs.setdefault("long_name", long_name)
        dataset[dim].attrs.setdefault("units", "1")
    if "time" not in dataset.coords:
        dataset = dataset.assign_coords(time=np.arange(field.sizes["time"], dtype=np.int32))
    if not np.issubdtype(dataset["time"].dtype, np.datetime64):
        dataset["time"].attrs.setdefault("long_name", "time step index")
        dataset["time"].attrs.setdefault("units", "1")
    if "channel" not in dataset.coords:
        dataset = dataset.assign_coords(channel=[f"channel_{i}" for i in range(field.sizes["channel"])])
    data_min = float(train.min())
    data_max = float(train.max())
    dataset.attrs = {
        "title": f"nuwa processed dataset {dataset_name}",
        "Conventions": "CF-1.10",
        "nuwa_dataset": dataset_name,
        "nuwa_kind": config["kind"],
        "nuwa_variable": name,
        "data_min": data_min,
        "data_max": data_max,
        # metrics (SSIM, PSNR) use the real range of the data, from the training split
        "data_range": max(data_max - data_min, 1e-12),
        "split_fractions": f"train={config['split']['train']} val={config['split']['val']} test={config['split']['test']}",
    }
    return dataset


def ingest(dataset_name: str, config: dict) -> xr.Dataset:
    generator = get_dataset(config["kind"])
    field = generator(config, int(config["seed"]))
    return build_processed(field, config, dataset_name)
