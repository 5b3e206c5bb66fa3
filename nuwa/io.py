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

from nuwa.errors import DataFileError  # re-exported (defined in a light module)


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


def write_netcdf(dataset: xr.Dataset, path: str | Path, contiguous: tuple[str, ...] = ()) -> None:
    """Write ``dataset`` atomically; float variables zlib-compressed in chunks of ~2 MiB.

    Variables named in ``contiguous`` are stored instead uncompressed in one contiguous block
    (HDF5 contiguous layout), so that a reader can fetch any of their rows with one positioned
    read (:class:`NetCDFRows`); an empty variable (HDF5 refuses a contiguous one) keeps the default.
    """
    encoding = {}
    for name, variable in dataset.data_vars.items():
        if name in contiguous and variable.size:
            encoding[name] = {"contiguous": True}
        elif variable.dtype.kind == "f":
            # zlib keeps banks small; fixed settings keep the bytes reproducible
            encoding[name] = {"zlib": True, "complevel": 1, "shuffle": True}
            if variable.ndim >= 2 and all(variable.shape):
                encoding[name]["chunksizes"] = netcdf_chunks(variable.shape, variable.dtype.itemsize)
    with atomic_path(path) as tmp:
        dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def open_netcdf(path: str | Path, variables: tuple[str, ...] = (), dims: dict[str, tuple[str, ...]] | None = None,
                load: bool = True) -> xr.Dataset:
    """Open a NetCDF file, checking the variables a stage needs.

    ``load`` (default): read it fully into memory and close it. ``load=False``: return the open,
    lazily read dataset (the caller closes it; use it as a context manager).
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    try:
        handle = xr.open_dataset(path, engine="netcdf4")
        if load:
            with handle:
                dataset = handle.load()
        else:
            dataset = handle
    except Exception as exc:  # netCDF4 raises OSError/RuntimeError variants for corrupt files
        raise DataFileError(f"{path}: not a readable NetCDF file ({type(exc).__name__}: {exc})") from None
    try:
        missing = [name for name in variables if name not in dataset.variables]
        if missing:
            raise DataFileError(f"{path}: missing variable(s) {', '.join(missing)} "
                                f"(has: {', '.join(map(str, dataset.variables))})")
        for name, expected in (dims or {}).items():
            if tuple(dataset[name].dims) != tuple(expected):
                raise DataFileError(f"{path}: variable {name!r} has dims {tuple(dataset[name].dims)}, "
                                    f"expected {tuple(expected)}")
    except DataFileError:
        dataset.close()
        raise
    return dataset


class NetCDFRows:
    """Rows (along the first dimension) of one variable of a NetCDF-4 file, read on demand.

    ``rows[indices]`` returns the rows at ``indices`` (any order, repeats allowed) as a new
    array; the variable is never read whole. A variable stored contiguously and uncompressed
    (:func:`write_netcdf`'s ``contiguous``) is read with one positioned read (``pread``) per
    row at the byte offset HDF5 reports: no decoding, no mapping (the resident memory does not
    grow with the rows read; the operating system's page cache serves repeated reads). A
    chunked or compressed variable (files written before) is read through h5py, the rows of a
    batch in one sorted selection. Values are the file's, as xarray reads them (no scaling or
    masking is applied: the variable must have none).
    Each process opens its own reader (e.g. every rank of a distributed run).
    """

    CHUNK_CACHE_BYTES = 32 * 2**20  # h5py's chunk cache on the chunked path (h5py's default: 1 MiB)

    def __init__(self, path: str | Path, variable: str):
        import h5py

        self.path, self.variable = Path(path), variable
        self._fd = self._file = None
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.CHUNK_CACHE_BYTES)
            data = self._file[variable]
            self.shape, self.dtype = tuple(int(v) for v in data.shape), np.dtype(data.dtype)
            offset = data.id.get_offset() if data.chunks is None else None
        except (OSError, KeyError) as exc:
            self.close()
            raise DataFileError(f"{self.path}: cannot read variable {variable!r} ({type(exc).__name__}: {exc})") from None
        if len(self.shape) < 1 or self.dtype.kind not in "fiu" or {"scale_factor", "add_offset"} & set(data.attrs):
            self.close()
            raise DataFileError(f"{self.path}: variable {variable!r} is not a plain numeric array with rows")
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self.offset = offset
        self._data = data
        if offset is not None:  # contiguous: positioned reads from our own descriptor
            self._file.close()
            self._file = self._data = None
            self._fd = os.open(self.path, os.O_RDONLY)
            if os.fstat(self._fd).st_size < offset + self.shape[0] * self.row_bytes:
                self.close()
                raise DataFileError(f"{self.path}: file ends inside variable {variable!r} (truncated?)")

    @property
    def contiguous(self) -> bool:
        return self.offset is not None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: {self.variable} rows {indices.min()}..{indices.max()} out of "
                             f"0..{self.shape[0] - 1}")
        out = np.empty((indices.size, *self.shape[1:]), dtype=self.dtype)
        if not indices.size:
            return out
        if self._fd is not None:
            flat = out.reshape(indices.size, -1).view(np.uint8)
            for row, index in enumerate(indices.tolist()):
                self._read_row(flat[row], self.offset + index * self.row_bytes)
            return out
        if self._data is None:
            raise ValueError(f"{self.path}: reader is closed")
        unique, inverse = np.unique(indices, return_inverse=True)  # h5py selects increasing rows
        out[...] = self._data[unique][inverse.reshape(-1)]
        return out

    def read_into(self, index: int, out: np.ndarray) -> np.ndarray:
        """Row ``index`` into ``out`` (an array of one row's shape; C-contiguous of the file's
        dtype for a direct read, else through a copy)."""
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"{self.path}: {self.variable} row {index} out of 0..{self.shape[0] - 1}")
        if out.shape != self.shape[1:]:
            raise ValueError(f"{self.path}: {self.variable} rows have shape {self.shape[1:]}, not {out.shape}")
        if self._fd is not None and out.dtype == self.dtype and out.flags.c_contiguous and out.flags.writeable:
            self._read_row(out.reshape(-1).view(np.uint8), self.offset + index * self.row_bytes)
        else:
            out[...] = self[[index]][0]
        return out

    def _read_row(self, target: np.ndarray, offset: int) -> None:
        done = 0
        while done < self.row_bytes:  # a regular file gives it all at once; loop for the rule
            if hasattr(os, "preadv"):
                count = os.preadv(self._fd, [target[done:]], offset + done)
            else:  # no preadv (some platforms): read, then copy
                chunk = os.pread(self._fd, self.row_bytes - done, offset + done)
                count = len(chunk)
                target[done:done + count] = np.frombuffer(chunk, dtype=np.uint8)
            if count <= 0:
                raise DataFileError(f"{self.path}: file ends inside variable {self.variable!r} (truncated?)")
            done += count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            self._file.close()
            self._file = self._data = None

    def __enter__(self) -> NetCDFRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


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
