"""One training batch assembled in a single compiled call that holds no GIL (numba, ``nogil``).

:meth:`nuwa.loader.TrainingPool.batch` builds a batch with a few numpy calls per row (a copy
from the normalised series, a positioned read of a bank row, its normalisation, the target
copy). On a GPU the training step is bound by Python launching kernels, and the loader runs on
a thread beside it (:class:`nuwa.loader.BatchStream`): each of those calls hands the GIL back
and forth with the step, which costs the step more than the copying itself (``nuwa bench
loader``'s training and contention cases). Here the whole batch -- bank rows read with ``pread`` straight into
the batch, normalised in place, original windows and targets copied -- is one call that never
takes the GIL. The values are the same bits as the numpy path's (float32 subtract, then
divide, per element; tested).

Linux and macOS only (``pread`` from the C library through ctypes); elsewhere, or for a bank
that is not stored contiguous, :func:`available` is False and the numpy path is used.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
from numba import njit, types


def _has_pread() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or None), "pread")
    except OSError:
        return False


_HAS_PREAD = _has_pread()


def available() -> bool:
    return _HAS_PREAD


if _HAS_PREAD:
    # the C library's pread, called by name from compiled code (linked by symbol, so the
    # compiled kernel can be cached on disk, which a ctypes function pointer would prevent)
    _pread = types.ExternalFunction("pread", types.intp(types.int32, types.voidptr, types.uintp, types.intp))

    @njit(cache=True, nogil=True)
    def _assemble(descriptor, offset, row_bytes, normalised, rows, starts, originals, input_frames, output_frames,
                  mean, std, inputs, targets):  # pragma: no cover - compiled
        for position in range(rows.shape[0]):
            start = starts[position]
            if rows[position] >= originals:
                window = inputs[position]
                base = offset + (rows[position] - originals) * row_bytes
                done = 0
                while done < row_bytes:  # a regular file gives it all at once; loop for the rule
                    count = _pread(descriptor, window.ctypes.data + done, row_bytes - done, base + done)
                    if count <= 0:
                        return position
                    done += count
                for step in range(window.shape[0]):
                    for channel in range(window.shape[1]):
                        low, scale = mean[channel], std[channel]
                        plane = window[step, channel]
                        for y in range(plane.shape[0]):
                            for x in range(plane.shape[1]):
                                plane[y, x] = (plane[y, x] - low) / scale
            else:
                inputs[position] = normalised[start:start + input_frames]
            targets[position] = normalised[start + input_frames:start + input_frames + output_frames]
        return -1


def assemble(bank, normalised: np.ndarray, rows: np.ndarray, starts: np.ndarray, originals: int, input_frames: int,
             output_frames: int, mean: np.ndarray, std: np.ndarray, inputs: np.ndarray, targets: np.ndarray) -> None:
    """Fill ``inputs`` and ``targets`` (float32, C-contiguous) for the pool's ``rows`` (int64),
    whose windows start at ``starts``: rows from ``originals`` on are the rows of ``bank`` (a
    contiguous :class:`nuwa.io.NetCDFRows`, or None when there are none), read and normalised
    with ``mean``/``std`` (float32, per channel)."""
    from nuwa.io import DataFileError

    descriptor, offset, row_bytes = (bank.fileno(), bank.offset, bank.row_bytes) if bank is not None else (-1, 0, 0)
    failed = _assemble(descriptor, offset, row_bytes, normalised, rows, starts, originals, input_frames, output_frames,
                       mean, std, inputs, targets)
    if failed >= 0:
        raise DataFileError(f"{bank.path}: file ends inside variable {bank.variable!r} (truncated?), reading row "
                            f"{int(rows[failed]) - originals}")
