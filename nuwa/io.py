"""Every file the pipeline writes goes through here: atomically, and read back with clear errors.

Writes go to a temporary file in the destination folder, are fsync'ed and then renamed over
the destination, so a killed job never leaves a half-written result where a rerun or a
reader would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import xarray as xr

from nuwa.errors import DataFileError  # re-exported (defined in a light module)


class OutputSpaceError(DataFileError):
    """An output could not be written for lack of space (full disk, quota, file size limit)."""


class OutputWriteError(DataFileError):
    """An output could not be written: its path is a folder, a part of its folder path is a file,
    its folder is not writable (permissions, a read-only file system), ... One line naming it."""


def write_problem(exc: OSError, path: Path) -> str:
    """Why writing ``path`` failed, in words, from the ``OSError`` of one of the writer's steps."""
    import errno

    culprit = getattr(exc, "filename", None)
    where = f" ({culprit})" if culprit and str(culprit) != str(path) else ""
    if isinstance(exc, IsADirectoryError) and path.is_dir():  # os.replace onto a folder made meanwhile
        return "it is a folder"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), path.parent)
    if exc.errno == errno.EROFS:
        return f"folder {folder} is on a read-only file system"
    if isinstance(exc, PermissionError):
        return f"folder {folder} is not writable ({exc.strerror})"
    name = errno.errorcode.get(exc.errno, "") if exc.errno else ""
    return f"{exc.strerror or exc}{f' ({name})' if name else ''}{where}"


def _output_error(exc: OSError, path: Path) -> OutputWriteError:
    return OutputWriteError(f"{path}: cannot write: {write_problem(exc, path)}")


def check_writable(path: str | Path) -> None:
    """Refuse, before a stage computes anything, an output path that cannot be written: a folder,
    under a file, or in a folder that is not writable. One :class:`OutputWriteError` line naming
    it (the writers report the same problems, and any other, when they meet them)."""
    path = Path(path)
    if path.is_dir():
        raise OutputWriteError(f"{path}: cannot write: it is a folder")
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputWriteError(f"{path}: cannot write: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = False
        with contextlib.suppress(OSError):
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        reason = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise OutputWriteError(f"{path}: cannot write: folder {folder} {reason}")


def params_entry_sha256(entry) -> str:
    """SHA-256 of a params entry (``datasets.<name>``) as canonical JSON: what ingest records in the
    processed file (``nuwa_params_sha256``) and every reader compares with its own params."""
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value):
    """``value`` as plain Python (numpy scalars and arrays, tuples, bytes as read back from files)."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def check_identity(path: str | Path, found, expected: dict, what: str = "attribute", hint: str = "",
                   partial: bool = False) -> None:
    """Each ``expected`` entry (None: not checked) must equal ``found``'s (a file's attributes or a
    checkpoint's keys); else one :class:`DataFileError` line naming ``path``, the field (for a
    mapping, its first differing key: ``backbone.size``), the value found and the one expected,
    then ``hint``. ``partial``: a field the file lacks is not checked (result files written before
    they recorded it). The one check of which params entry, dataset or cell a file belongs to."""
    for key, want in expected.items():
        if want is None or (partial and key not in found):
            continue
        if key not in found:
            raise DataFileError(f"{path}: {what} {key} is missing, expected {_plain(want)!r}{hint}")
        difference = _difference(key, _plain(found[key]), _plain(want))
        if difference is not None:
            field, have, wanted = difference
            raise DataFileError(f"{path}: {what} {field} is {have!r}, expected {wanted!r}{hint}")


def _difference(key: str, have, want):
    if isinstance(have, dict) and isinstance(want, dict):
        for sub in sorted(set(have) | set(want)):
            if sub not in have or sub not in want:
                return (f"{key}.{sub}", have.get(sub, "(absent)"), want.get(sub, "(absent)"))
            inner = _difference(f"{key}.{sub}", have[sub], want[sub])
            if inner is not None:
                return inner
        return None
    return None if have == want else (key, have, want)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.NAME.XXXXXXXX.tmp`` files of this destination left by a writer killed mid-write
    (SIGKILL skips the clean-up below). Called only under :func:`_writer_claim`'s exclusive
    lock: no live writer of this destination is at work (two can be: Snakemake's and DVC's
    locks do not see each other, and `nuwa` may be run by hand)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name):
            Path(entry.path).unlink(missing_ok=True)


@contextlib.contextmanager
def _writer_claim(path: Path) -> Iterator[None]:
    """Held by every writer of ``path`` while it writes: a shared flock on a lock file for this
    destination (in the temporary folder, so nothing is added beside the results; released by
    the kernel when a writer dies). A writer that gets it exclusively (no other live writer of
    ``path``) first removes the temporaries of dead ones. Without a lock (no flock, temporary
    folder not writable) nothing is removed."""
    try:
        import fcntl

        folder = Path(tempfile.gettempdir()) / "nuwa-writers"
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # shared by every user, like /tmp (only its owner can)
            os.chmod(folder, 0o1777)
        key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
        lock = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another writer of this destination is at work: its temporary is not stale
        else:
            _remove_stale_temporaries(path)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield
    finally:
        os.close(lock)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place, else delete it.

    A write that fails for lack of space raises :class:`OutputSpaceError` naming ``path``; one
    that fails for another reason of the file system (``path`` is a folder, a part of its folder
    path is a file, the folder is not writable or read-only), :class:`OutputWriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(exc, path) from None
    if path.is_dir():  # os.replace would fail only after the whole output was computed and written
        raise OutputWriteError(f"{path}: cannot write: it is a folder")
    with _writer_claim(path):
        yield from _atomic_write(path)


def _atomic_write(path: Path) -> Iterator[Path]:
    try:
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(exc, path) from None
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates the file private (0600); give results the permissions of a normal file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(exc, path) from None
    finishing = False  # the body returned: errors from here on are this writer's own
    try:
        yield tmp
        finishing = True
        from nuwa.resources import refuse_output_over_memory_limit

        refuse_output_over_memory_limit(path)
        with open(tmp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException as exc:
        from nuwa.resources import space_problem

        reason = space_problem(exc, tmp) if isinstance(exc, Exception) else None
        tmp.unlink(missing_ok=True)
        if reason:
            raise OutputSpaceError(f"{path}: cannot write: {reason} ({type(exc).__name__}: {exc})") from exc
        # the file system refused this output (not an input's error raised while computing it:
        # in the body, only an error naming the temporary or the output is the output's)
        if isinstance(exc, OSError) and not isinstance(exc, DataFileError) and (
                finishing or {str(getattr(exc, "filename", None)), str(getattr(exc, "filename2", None))}
                & {str(tmp), str(path)}):
            raise _output_error(exc, path) from None
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
    with atomic_path(path) as tmp:
        dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=netcdf_encoding(dataset, contiguous))


def netcdf_encoding(dataset: xr.Dataset, contiguous: tuple[str, ...] = ()) -> dict:
    """The encoding :func:`write_netcdf` writes with (for writers that finish a file themselves)."""
    encoding = {}
    for name, variable in dataset.data_vars.items():
        if name in contiguous and variable.size:
            encoding[name] = {"contiguous": True}
        elif variable.dtype.kind == "f":
            # zlib keeps banks small; fixed settings keep the bytes reproducible
            encoding[name] = {"zlib": True, "complevel": 1, "shuffle": True}
            if variable.ndim >= 2 and all(variable.shape):
                encoding[name]["chunksizes"] = netcdf_chunks(variable.shape, variable.dtype.itemsize)
    return encoding


def open_netcdf(path: str | Path, variables: tuple[str, ...] = (), dims: dict[str, tuple[str, ...]] | None = None,
                load: bool = True, expect: dict | None = None, hint: str = "", partial: bool = False) -> xr.Dataset:
    """Open a NetCDF file, checking the variables a stage needs.

    ``load`` (default): read it fully into memory and close it. ``load=False``: return the open,
    lazily read dataset (the caller closes it; use it as a context manager). ``expect``: global
    attributes the file must have with these values (which dataset, variant, seed... it was
    made for; :func:`check_identity`, ``hint`` ending its message; ``partial``: only those it has).
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
        check_identity(path, dataset.attrs, expect or {}, "attribute", hint, partial)
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

    def fileno(self) -> int:
        """The descriptor the rows are read from with ``pread`` (a contiguous variable, open)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: {self.variable} is not read by descriptor (chunked, or closed)")
        return self._fd

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


def save_animation(animation, path: str | Path, frame_ms: int) -> None:
    """Write a matplotlib animation as a GIF (matplotlib's PillowWriter), ``frame_ms`` per frame."""
    import shutil

    from matplotlib.animation import PillowWriter

    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as folder:
        # Pillow picks the format from the file name: write a .gif, then move its bytes into place
        staged = Path(folder) / "animation.gif"
        animation.save(staged, writer=PillowWriter(fps=1000.0 / frame_ms))
        shutil.copyfile(staged, tmp)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    import torch

    # into an open file, not a file name: torch names the archive's records after the file
    # (here the random temporary name), so equal checkpoints would differ in bytes
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)


def load_checkpoint(path: str | Path, expect: dict | None = None, hint: str = "") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    Errors are one line naming ``path``: not found, not a torch.save (zip) archive (truncated
    or corrupt), refused (a pickled object other than tensors and plain containers, e.g. a class
    instance whose unpickling could run code: it is never run), or a dict expected. ``expect``:
    keys the checkpoint must hold with these values (its kind, dataset, cell:
    :func:`check_identity`, ``hint`` ending its message).
    """
    import zipfile

    import torch

    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no directory
        raise DataFileError(f"{path}: not a readable checkpoint (not a torch.save zip archive: truncated or corrupt?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # torch names the global it would not import
        what = f" ({found.group(1)})" if found else ""
        raise DataFileError(f"{path}: refused: the checkpoint holds a pickled object{what}, not only tensors and "
                            "plain containers; loading it could run code, so it is not loaded") from None
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise DataFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(payload, dict):
        raise DataFileError(f"{path}: not a nuwa checkpoint (holds a {type(payload).__name__}, expected a dict)")
    check_identity(path, payload, expect or {}, "key", hint)
    return payload


def check_state_dict(path: str | Path, saved, expected: dict, what: str = "model") -> None:
    """``saved`` (a checkpoint's state dict) must have exactly the tensors of ``expected`` (a
    model's ``state_dict()``) with the same shapes; else a :class:`DataFileError` naming ``path``
    and the first tensor that does not fit, with both shapes."""
    if not isinstance(saved, dict):
        raise DataFileError(f"{path}: no {what} weights (found {type(saved).__name__}, expected a dict of tensors)")
    for name, tensor in expected.items():
        if name not in saved:
            extra = next((key for key in saved if key not in expected), None)
            instead = (f"; its first tensor the model lacks is {extra!r} {tuple(getattr(saved[extra], 'shape', ()))}"
                       if extra is not None else "")
            raise DataFileError(f"{path}: does not fit the {what}: tensor {name!r} {tuple(tensor.shape)} is missing "
                                f"from the checkpoint{instead} (another backbone or configuration?)")
        shape = tuple(getattr(saved[name], "shape", ()))
        if shape != tuple(tensor.shape):
            raise DataFileError(f"{path}: does not fit the {what}: tensor {name!r} has shape {shape} in the "
                                f"checkpoint, {tuple(tensor.shape)} in the model (another backbone or configuration?)")
    extra = [name for name in saved if name not in expected]
    if extra:
        raise DataFileError(f"{path}: does not fit the {what}: the checkpoint has tensor {extra[0]!r} "
                            f"{tuple(getattr(saved[extra[0]], 'shape', ()))} that the model lacks "
                            "(another backbone or configuration?)")


def check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))
        raise DataFileError(f"{what}: {len(bad)} non-finite value(s) (NaN or Inf), first at index {tuple(int(i) for i in bad[0])}")
