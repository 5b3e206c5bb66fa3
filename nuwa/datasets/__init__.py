"""Dataset registry: each entry turns a params entry into a raw field.

A dataset module registers a generator (or reader) with :func:`register_dataset`; the
generator takes the dataset's params entry (a dict) and a seed and returns an
``xarray.DataArray`` built with :func:`field_array`: dims ``(time, channel, y, x)``,
float32, CF-style ``units`` and ``long_name`` attributes (plus every setting or source
detail worth recording). The values may be a dask array: readers of files build one lazily
(one chunk per file or record) and :mod:`nuwa.ingest` streams it to disk chunk by chunk, so
a dataset larger than memory ingests in bounded memory. Values must be finite: a reader
handles missing data itself (fills it and records where, e.g. as a coordinate along time).

Optional coordinates along ``time`` that ingest understands:

* ``segment`` (int): frames of different segments never share a window (separate videos,
  storm events, or the two sides of a gap in time);
* ``split`` (str ``train``/``val``/``test``): a split the dataset defines itself (e.g. KTH's
  subject split); kinds registered with ``defines_split=True`` return it, and their params
  entry has no ``split`` fractions.

``config_schema`` is the JSON schema of the keys the generator reads; nuwa.config checks a
params entry against it (with the keys common to every dataset) before any job starts.
Keys listed in ``defaults`` are optional; :func:`with_defaults` fills them in.
Splitting and normalisation are common to all datasets and live in :mod:`nuwa.ingest`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from nuwa.globbing import find_paths, has_magic

if TYPE_CHECKING:
    import xarray as xr

# Heavy libraries (xarray, dask, h5py, matplotlib) are imported inside the functions that use
# them, here and in every dataset module: listing the kinds and their schemas (what params
# validation needs, once per Snakemake or DVC run) stays light.
Generator = Callable[[dict, int], "xr.DataArray"]
_REGISTRY: dict[str, Generator] = {}
_SCHEMAS: dict[str, dict] = {}
_DEFAULTS: dict[str, dict] = {}
_DEFINES_SPLIT: dict[str, bool] = {}

# keys every dataset entry has (their types are checked by the main params schema)
COMMON_KEYS = ("kind", "height", "width", "input_frames", "output_frames", "window_stride",
               "patch_size", "split", "csi_thresholds", "seed")


FRAME_TIME_ATTRS = {"long_name": "frame index after spin-up", "units": "frame"}
SEGMENT_ATTRS = {"long_name": "segment of consecutive frames (no window crosses a segment boundary)", "units": "1"}


def field_array(values, *, name: str, channels, attrs: dict, time=None,
                time_attrs: dict = FRAME_TIME_ATTRS, segment=None, split=None,
                coords: dict | None = None) -> xr.DataArray:
    """A generator's result: float32 ``(time, channel, y, x)``.

    ``values`` is a numpy or dask array; ``time`` the time coordinate (integer steps by
    default, or datetime64); ``segment`` and ``split`` optional per-step coordinates (see the
    module docstring); ``coords`` more coordinates as ``{name: (dims, values, attrs)}``.
    ``attrs`` carries ``units`` and ``long_name`` plus every setting worth recording; grid
    coordinates are added by ingest unless given in ``coords``.
    """
    import xarray as xr

    values = values.astype(np.float32) if hasattr(values, "compute") else np.asarray(values, dtype=np.float32)
    n_times = values.shape[0]
    time_values = np.arange(n_times) if time is None else np.asarray(time)
    all_coords = {"time": ("time", time_values, dict(time_attrs)), "channel": list(channels)}
    if segment is not None:
        all_coords["segment"] = ("time", np.asarray(segment, dtype=np.int32), dict(SEGMENT_ATTRS))
    if split is not None:
        all_coords["split"] = ("time", np.asarray(split, dtype=str), {"long_name": "split defined by the dataset"})
    all_coords.update(coords or {})
    return xr.DataArray(values, dims=("time", "channel", "y", "x"), coords=all_coords, name=name, attrs=attrs)


def check_time_increasing(times: np.ndarray, where: str) -> None:
    """Times must increase strictly; the error names ``where`` and the index (nothing is reordered)."""
    from nuwa.errors import DataFileError

    diffs = np.diff(times)
    bad = np.flatnonzero(diffs <= np.timedelta64(0))
    if bad.size:
        i = int(bad[0])
        kind = "repeats" if diffs[i] == np.timedelta64(0) else "goes backwards"
        raise DataFileError(f"{where}: time {kind} at index {i + 1} ({str(times[i])[:19]} then {str(times[i + 1])[:19]}); "
                            "times must increase strictly (nuwa never reorders or drops frames: fix the source)")


def segments_from_time(times, step, where: str = "time axis") -> tuple[np.ndarray, list[tuple]]:
    """Segment ids for a datetime axis with nominal ``step``, and the gaps found.

    Consecutive frames ``step`` apart share a segment; a larger jump (a gap: missing files,
    dropped days) starts a new one, so no window is ever built across it. Returns
    ``(segment, gaps)`` with ``gaps`` a list of ``(last time before, first time after)``.
    Raises :class:`nuwa.io.DataFileError` naming ``where`` if times repeat, go backwards or
    fall off the ``step`` grid.
    """
    from nuwa.errors import DataFileError

    times = np.asarray(times)
    step = np.timedelta64(step) if not isinstance(step, np.timedelta64) else step
    if times.size == 0:
        raise DataFileError(f"{where}: no time steps")
    check_time_increasing(times, where)
    diffs = np.diff(times)
    if diffs.size:
        off_grid = np.flatnonzero(diffs % step != np.timedelta64(0))
        if off_grid.size:
            i = int(off_grid[0])
            raise DataFileError(f"{where}: step from {times[i]} to {times[i + 1]} is not a multiple of the "
                                f"time step {step.astype('timedelta64[m]')}")
    jumps = np.flatnonzero(diffs > step)
    segment = np.zeros(times.size, dtype=np.int32)
    segment[jumps + 1] = 1
    segment = np.cumsum(segment, dtype=np.int32)
    gaps = [(times[i], times[i + 1]) for i in jumps]
    return segment, gaps


def describe_gaps(gaps: list[tuple], limit: int = 5) -> str:
    """A short human summary of the gaps from :func:`segments_from_time`."""
    if not gaps:
        return "none"
    shown = "; ".join(f"{str(a)[:19]} -> {str(b)[:19]}" for a, b in gaps[:limit])
    more = f"; and {len(gaps) - limit} more" if len(gaps) > limit else ""
    return f"{len(gaps)} gap(s): {shown}{more}"


def register_dataset(name: str, config_schema: dict | None = None, defaults: dict | None = None,
                     defines_split: bool = False) -> Callable[[Generator], Generator]:
    """Register ``fn(config, seed) -> DataArray`` under ``name``.

    ``config_schema`` maps each kind-specific key to its JSON schema; keys without an entry
    in ``defaults`` are required. ``defines_split``: the kind returns a ``split`` coordinate
    and its params entry takes no ``split`` fractions.
    """

    def decorator(fn: Generator) -> Generator:
        if name in _REGISTRY:
            raise ValueError(f"dataset kind {name!r} registered twice")
        unknown = set(defaults or {}) - set(config_schema or {})
        if unknown:
            raise ValueError(f"dataset kind {name!r}: defaults for keys not in its schema: {sorted(unknown)}")
        _REGISTRY[name] = fn
        _SCHEMAS[name] = dict(config_schema or {})
        _DEFAULTS[name] = dict(defaults or {})
        _DEFINES_SPLIT[name] = defines_split
        return fn

    return decorator


def _load_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def dataset_kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_dataset(kind: str) -> Generator:
    _load_all()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown dataset kind {kind!r}; registered kinds: {', '.join(sorted(_REGISTRY))}") from None


def defines_split(kind: str) -> bool:
    get_dataset(kind)
    return _DEFINES_SPLIT[kind]


def with_defaults(config: dict) -> dict:
    """The params entry with the kind's optional keys filled in."""
    get_dataset(config["kind"])
    return {**_DEFAULTS[config["kind"]], **config}


def dataset_config_schema(kind: str) -> dict:
    """JSON schema of a whole params entry of this kind: common keys plus the kind's own."""
    get_dataset(kind)
    own = _SCHEMAS[kind]
    common = [key for key in COMMON_KEYS if not (key == "split" and _DEFINES_SPLIT[kind])]
    properties = {key: {} for key in common} | own
    required = sorted(set(own) - set(_DEFAULTS[kind]))
    if not _DEFINES_SPLIT[kind]:
        required = sorted(required + ["split"])
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": required}


def source_status(config: dict) -> tuple[str | None, bool]:
    """``(source, present)`` for a params entry: file-based kinds name their files in ``source``.

    ``source`` is a file, a folder (present when it holds at least one file) or a glob
    pattern (present when it matches); relative paths are taken from the working directory.
    Generated datasets have no source: ``(None, True)``.
    """
    source = config.get("source")
    if source is None:
        return None, True
    path = Path(str(source)).expanduser()
    if has_magic(str(path)):
        # bounded: a link loop under a ** pattern is walked once (nuwa.globbing)
        return str(source), bool(find_paths(str(path), kind="any"))
    if path.is_dir():
        return str(source), any(p.is_file() for p in path.rglob("*"))
    return str(source), path.exists()
