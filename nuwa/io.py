"""Every file the pipeline writes goes through here: atomically, and read back with clear errors.

Writes go to a temporary file in the destination folder, are fsync'ed and then renamed over
the destination, so a killed job never leaves a half-written result where a rerun or a
reader would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr


class DataFileError(ValueError):
    """An input file is missing, unreadable or not what the stage expects."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    # mkstemp creates the file private (0600); give results the permissions of a normal file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


NETCDF_CHUNK_BYTES = 2 * 2**20  # target size of one compressed HDF5 chunk


def netcdf_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """HDF5 chunk shape: whole trailing dims, as many leading steps as fit ~2 MiB.

    Fixed from the shape alone (not from how the data were computed), so the bytes written
    are the same however a dask array was chunked; and every streamed slab of leading steps
    fills whole HDF5 chunks, which keeps the HDF5 chunk cache (and memory) small.
    """
    step_bytes = itemsize * int(np.prod(shape[1:], dtype=np.int64))
    leading = max(1, min(shape[0], NETCDF_CHUNK_BYTES // max(step_bytes, 1)))
    return (int(leading), *map(int, shape[1:]))


def write_netcdf(dataset: xr.Dataset, path: str | Path) -> None:
    encoding = {}
    for name, variable in dataset.data_vars.items():
        if variable.dtype.kind == "f":
            # zlib keeps banks small; fixed settings keep the bytes reproducible
            encoding[name] = {"zlib": True, "complevel": 1, "shuffle": True}
            if variable.ndim >= 2 and all(variable.shape):
                encoding[name]["chunksizes"] = netcdf_chunks(variable.shape, variable.dtype.itemsize)
    with atomic_path(path) as tmp:
        dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def open_netcdf(path: str | Path, variables: tuple[str, ...] = (), dims: dict[str, tuple[str, ...]] | None = None) -> xr.Dataset:
    """Open a NetCDF file fully into memory, checking the variables a stage needs."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    try:
        with xr.open_dataset(path, engine="netcdf4") as handle:
            dataset = handle.load()
    except Exception as exc:  # netCDF4 raises OSError/RuntimeError variants for corrupt files
        raise DataFileError(f"{path}: not a readable NetCDF file ({type(exc).__name__}: {exc})") from None
    missing = [name for name in variables if name not in dataset.variables]
    if missing:
        raise DataFileError(f"{path}: missing variable(s) {', '.join(missing)} (has: {', '.join(map(str, dataset.variables))})")
    for name, expected in (dims or {}).items():
        if tuple(dataset[name].dims) != tuple(expected):
            raise DataFileError(f"{path}: variable {name!r} has dims {tuple(dataset[name].dims)}, expected {tuple(expected)}")
    return dataset


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: not valid JSON ({exc})") from None


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(figure, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        # metadata without the software/date entries keeps PNG bytes reproducible
        figure.savefig(tmp, format="png", metadata={"Software": None}, **kwargs)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only."""
    import torch

    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataFileError(f"{path}: refused: the checkpoint holds objects other than tensors and plain "
                            f"containers, which could run code when loaded ({exc})") from None
    except Exception as exc:
        raise DataFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))
        raise DataFileError(f"{what}: {len(bad)} non-finite value(s) (NaN or Inf), first at index {tuple(int(i) for i in bad[0])}")
