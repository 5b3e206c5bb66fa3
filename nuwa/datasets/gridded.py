"""gridded: your own gridded data (ERA5 / WeatherBench-like NetCDF or Zarr) from a params entry.

No code: a params entry names the files, the variables (one channel each) and how to cut the
grid; the reader opens the source lazily (dask), so a dataset larger than memory ingests in
bounded memory (:mod:`nuwa.ingest` streams it chunk by chunk).

Source (``source``, relative paths from the working directory), detected in this order:

* a glob pattern (``data/era5/*.nc``): every matching file, opened as NetCDF;
* a Zarr store: a folder whose name ends in ``.zarr`` or that holds Zarr metadata
  (``zarr.json``, ``.zgroup``, ``.zarray`` or ``.zmetadata``), opened with ``xr.open_zarr``;
* a folder: its NetCDF files (``*.nc``, ``*.nc4``, ``*.netcdf``, ``*.cdf``; not recursive);
* a single NetCDF file.

Several files are combined along time by their coordinates (``xr.open_mfdataset(...,
combine="by_coords")``: the order of the names does not matter, e.g. one file per year).
Each file is checked on its own first, so errors name it: every variable present, time
strictly increasing (never reordered), the same y/x grid as the first file; and no two files
overlap in time (the overlapping pair is named). A glob or folder that matches nothing is a
:class:`nuwa.io.DataFileError` naming the pattern.

Steps, in order (every one lazy, only small coordinate arrays read, except ``never_observed:
mask``'s one counting pass):

1. ``variables`` (>= 1) are picked, one channel each, named after the variable; a missing
   one is an error listing the available ones.
2. ``select`` ``{dim: value}`` fixes every other dimension by label (``.sel``), e.g.
   ``{level: 850}`` or ``{number: 0}``; a dimension without a coordinate is taken by
   position. A missing dimension or value is an error listing the available ones. After it
   each variable must have exactly the ``dims`` (time, y, x) dimensions (named in ``dims``,
   default ``time``, ``latitude``, ``longitude``; newer CDS downloads call time
   ``valid_time``).
3. Time must decode to datetimes and increase strictly: a repeat or a step backwards is a
   :class:`nuwa.io.DataFileError` naming the file (or source) and the index; nothing is
   sorted or dropped silently. ``time_range`` ``[start, end]`` (inclusive, any string
   pandas parses) then selects a period.
4. ``time_step`` (a fixed pandas frequency: ``1h``, ``6h``, ``1D``) is the nominal step:
   every step must be a multiple of it (else an error naming the times). Larger steps are
   gaps: they are reported (attribute ``time_gaps`` and a ``UserWarning``) and start a new
   ``segment``, so no window is built across a gap; nothing is interpolated.
5. ``crop`` ``{y: [a, b], x: [a, b]}`` (either key optional) keeps the coordinate labels in
   the closed interval ``[min(a, b), max(a, b)]`` whichever way the axis runs: ERA5's
   latitude runs 90 -> -90, and ``y: [30, 60]`` still gives 60..30 (the axis keeps its
   direction). Crops across the end of a periodic longitude axis (e.g. 350 -> 10) are not
   supported: roll the source first. A crop that keeps nothing is an error.
6. ``convert`` (optional) ``{variable: {factor: f, offset: o, units: u}}``: values become
   ``value * f + o`` (computed in float64; ``factor`` default 1, ``offset`` default 0) and the
   channel's units ``u`` (required), e.g. precipitation flux to a rate,
   ``{pr: {factor: 3600, units: mm h-1}}`` (1 kg m-2 s-1 of water = 1 mm s-1 = 3600 mm/h), or
   ``{t2m: {offset: -273.15, units: degC}}``. The source's units are kept in
   ``source_units``. Everything below (``fill_missing``, the thresholds of the params entry)
   is in the converted units.
7. ``never_observed``: ``missing`` (default) treats a pixel that is NaN in every frame like any
   other missing value (step 8). ``mask``: a pixel that is NaN in every frame of the selected
   period (after select, time_range and crop; e.g. the sea of a land-only product) is *never
   observed*: it is filled with its channel's mean over the observed values (so that the
   fill changes neither the data's min and max, hence the metrics' ``data_range``, nor, much,
   the normalisation: a never-observed pixel is ~0 once normalised) and recorded in the
   coordinate ``observed(y, x)`` (int8, 1 observed, 0 never observed; CF flag attributes),
   from which training leaves it out of every loss and evaluation out of every metric
   (:class:`nuwa.windows.SeriesData`'s ``observed``). Finding these pixels takes one pass
   over the source (chunk by chunk, bounded memory: NaN counts per pixel and the channels'
   sums). The variables must share their never-observed pixels. A pixel NaN in some frames
   but not all stays missing data: without ``fill_missing`` the reader stops with an error
   naming it. Attributes record the counts and the fill (``never_observed_*``).
8. ``fill_missing``: ``null`` (default) keeps NaN, which ingest then reports as an error
   (ingest checks finiteness chunk by chunk; the reader never loads the field to check);
   a number replaces NaN lazily (``fillna``) and is recorded in the attributes (with
   ``never_observed: mask``, only the NaN of observed pixels are left to it).
9. ``coarsen`` (integer, default 1): block mean over ``coarsen x coarsen`` cells on y and x
   (``.coarsen(boundary="trim").mean()``, computed in float64, NaN propagates); the
   coordinates become the block means. With ``never_observed: mask`` a block is the mean of
   its observed cells (a coastal block keeps its land mean); a block without one is never
   observed.
10. The grid must then be ``height`` x ``width`` of the params entry (a ``ValueError`` naming
    both keys and the computed shape otherwise).

Result: float32 ``(time, channel, y, x)``, dask-backed, chunked ``chunk_frames`` (default
64) frames along time with whole y/x slabs. Coordinates: ``time`` (datetime64),
``segment``, and ``y``/``x`` holding the source's coordinate values (e.g. latitude and
longitude) with their attributes plus ``source_dim``. ``units`` and ``long_name`` come from
the first variable; ``channel_units`` and ``channel_long_names`` list every channel's. All
settings and source details are recorded in the attributes. With ``never_observed: mask``, also
the coordinate ``observed(y, x)`` (int8 flags; ingest writes it into the processed file, and
:func:`nuwa.windows.load_series` reads it into ``SeriesData.observed``). ``convert`` and
``never_observed: mask`` add attributes only when set: an entry without them gives the same
bytes as before they existed.
"""

from __future__ import annotations

import glob
import itertools
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nuwa.datasets import (
    check_time_increasing,
    describe_gaps,
    field_array,
    register_dataset,
    segments_from_time,
)
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")
DEFAULT_DIMS = {"time": "time", "y": "latitude", "x": "longitude"}
# names the processed file already uses: a data variable cannot take them
RESERVED_NAMES = ("time", "channel", "y", "x", "split", "segment", "norm_mean", "norm_std")
MAX_LISTED = 20
# never_observed: how a pixel that is NaN in every frame is handled (see the module docstring)
NEVER_OBSERVED = ("missing", "mask")

_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
SCHEMA = {
    "source": {"type": "string", "minLength": 1},
    "variables": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True},
    "dims": {"type": "object", "additionalProperties": False,
             "properties": {axis: {"type": "string", "minLength": 1} for axis in ("time", "y", "x")}},
    "select": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
    "crop": {"type": ["object", "null"], "additionalProperties": False, "minProperties": 1,
             "properties": {"y": _PAIR, "x": _PAIR}},
    "coarsen": {"type": "integer", "minimum": 1},
    "time_step": {"type": "string", "minLength": 1},
    "time_range": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}, "minItems": 2, "maxItems": 2},
    "fill_missing": {"type": ["number", "null"]},
    "never_observed": {"enum": list(NEVER_OBSERVED)},
    "convert": {"type": ["object", "null"], "minProperties": 1, "additionalProperties": {
        "type": "object", "additionalProperties": False, "required": ["units"],
        "properties": {"factor": {"type": "number"}, "offset": {"type": "number"},
                       "units": {"type": "string", "minLength": 1}}}},
    "chunk_frames": {"type": "integer", "minimum": 1},
}
DEFAULTS = {"dims": dict(DEFAULT_DIMS), "select": {}, "crop": None, "coarsen": 1, "time_range": None,
            "fill_missing": None, "never_observed": "missing", "convert": None, "chunk_frames": 64}
OBSERVED_ATTRS = {
    "long_name": "pixel observed in at least one frame (1) or never observed (0: NaN in every frame of the "
                 "source, filled, left out of every loss and metric)",
    "flag_values": np.array([0, 1], dtype=np.int8),
    "flag_meanings": "never_observed observed",
}


# -- settings -------------------------------------------------------------------------------

def _settings(config: dict) -> dict:
    """The params entry with defaults filled in and the reader's own keys checked."""
    settings = {**DEFAULTS, **config}
    for key in ("source", "variables", "time_step"):
        if settings.get(key) is None:
            raise KeyError(f"gridded config is missing {key}")
    variables = settings["variables"]
    if isinstance(variables, str) or not variables or not all(isinstance(v, str) and v for v in variables):
        raise ValueError(f"gridded config variables must be a non-empty list of variable names, got {variables!r}")
    if len(set(variables)) != len(variables):
        raise ValueError(f"gridded config variables lists a name twice: {variables}")
    dims = {**DEFAULT_DIMS, **(settings["dims"] or {})}
    unknown = sorted(set(dims) - set(DEFAULT_DIMS))
    if unknown:
        raise ValueError(f"gridded config dims has unknown key(s) {unknown} (allowed: time, y, x)")
    if len(set(dims.values())) != 3:
        raise ValueError(f"gridded config dims must name three different dimensions, got {dims}")
    settings["dims"] = dims
    for key in ("coarsen", "chunk_frames"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"gridded config {key} must be an integer >= 1, got {value!r}")
    try:
        offset = pd.tseries.frequencies.to_offset(str(settings["time_step"]))
        step = pd.Timedelta(offset)
    except (ValueError, TypeError):
        raise ValueError(f"gridded config time_step {settings['time_step']!r} is not a fixed-length pandas frequency "
                         "(e.g. '1h', '6h', '1D')") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"gridded config time_step {settings['time_step']!r} must be positive")
    settings["step"] = step.to_timedelta64()
    time_range = settings["time_range"]
    if time_range is not None:
        if len(time_range) != 2:
            raise ValueError(f"gridded config time_range must be [start, end], got {time_range!r}")
        try:
            bounds = [pd.Timestamp(str(value)) for value in time_range]
        except (ValueError, TypeError):
            raise ValueError(f"gridded config time_range {time_range!r}: not dates pandas can parse") from None
        if bounds[0] > bounds[1]:
            raise ValueError(f"gridded config time_range {time_range!r}: start is after end")
    crop = settings["crop"]
    if crop is not None:
        unknown = sorted(set(crop) - {"y", "x"})
        if unknown:
            raise ValueError(f"gridded config crop has unknown key(s) {unknown} (allowed: y, x)")
        for axis, pair in crop.items():
            if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
                raise ValueError(f"gridded config crop.{axis} must be [start, stop] coordinate values, got {pair!r}")
    fill = settings["fill_missing"]
    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float)) or not np.isfinite(fill)):
        raise ValueError(f"gridded config fill_missing must be null or a finite number, got {fill!r}")
    if settings["never_observed"] not in NEVER_OBSERVED:
        raise ValueError(f"gridded config never_observed is {settings['never_observed']!r} "
                         f"(allowed: {', '.join(NEVER_OBSERVED)})")
    settings["convert"] = _convert_settings(settings["convert"], variables)
    return settings


def _convert_settings(convert: dict | None, variables: list[str]) -> dict | None:
    """``{variable: (factor, offset, units)}`` from the params entry's ``convert``, checked."""
    if convert is None:
        return None
    if not isinstance(convert, dict) or not convert:
        raise ValueError(f"gridded config convert must be null or a mapping {{variable: {{factor, offset, units}}}}, "
                         f"got {convert!r}")
    out = {}
    for variable, rule in convert.items():
        if variable not in variables:
            raise ValueError(f"gridded config convert.{variable}: not one of the variables {variables}")
        unknown = sorted(set(rule or {}) - {"factor", "offset", "units"}) if isinstance(rule, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"gridded config convert.{variable} must be {{factor, offset, units}}, got {rule!r}")
        values = []
        for key, default in (("factor", 1.0), ("offset", 0.0)):
            value = rule.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"gridded config convert.{variable}.{key} must be a finite number, got {value!r}")
            values.append(float(value))
        if values[0] == 0:
            raise ValueError(f"gridded config convert.{variable}.factor must not be 0")
        units = rule.get("units")
        if not isinstance(units, str) or not units:
            raise ValueError(f"gridded config convert.{variable}.units must name the converted units, got {units!r}")
        out[variable] = (values[0], values[1], units)
    return out


# -- opening --------------------------------------------------------------------------------

def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.name.endswith(".zarr") or any((path / m).exists() for m in ZARR_MARKERS))


def resolve_source(source: str) -> tuple[str, str, list[Path]]:
    """``(format, where, files)``: format ``zarr`` or ``netcdf``; ``where`` names the source in errors."""
    text = os.path.expanduser(str(source))
    if glob.has_magic(text):
        where = os.path.abspath(text)
        files = sorted(Path(p).resolve() for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataFileError(f"{where}: no file matches the pattern (source {source!r})")
        return "netcdf", where, files
    path = Path(text).resolve()
    if _is_zarr(path):
        return "zarr", str(path), [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in NETCDF_SUFFIXES)
        if not files:
            raise DataFileError(f"{path}: folder holds no NetCDF files ({', '.join('*' + s for s in NETCDF_SUFFIXES)}) "
                                "and is not a Zarr store")
        return "netcdf", str(path), files
    if path.is_file():
        return "netcdf", str(path), [path]
    raise DataFileError(f"{path}: not found (gridded source: a NetCDF file, a glob of them, a folder of them "
                        "or a Zarr store)")


def _listed(values, limit: int = MAX_LISTED) -> str:
    values = [str(v)[:19] if isinstance(v, (np.datetime64, pd.Timestamp)) else str(v) for v in values]
    more = f", ... ({len(values)} in all)" if len(values) > limit else ""
    return ", ".join(values[:limit]) + more


def _time_values(dataset: xr.Dataset, time_dim: str, where: str) -> np.ndarray:
    if time_dim not in dataset.dims:
        raise DataFileError(f"{where}: no dimension {time_dim!r} for time (dimensions: {_listed(dataset.dims)}); "
                            "set dims.time in the params entry")
    if time_dim not in dataset.coords:
        raise DataFileError(f"{where}: time dimension {time_dim!r} has no coordinate variable (no dates)")
    times = np.asarray(dataset.indexes[time_dim])
    if not np.issubdtype(times.dtype, np.datetime64):
        raise DataFileError(f"{where}: time coordinate {time_dim!r} does not decode to datetimes (dtype {times.dtype}; "
                            "need CF units like 'hours since 1900-01-01' and a standard calendar)")
    if np.isnat(times).any():
        raise DataFileError(f"{where}: time coordinate {time_dim!r} has a missing value at index "
                            f"{int(np.flatnonzero(np.isnat(times))[0])}")
    return times


def _check_variables(dataset: xr.Dataset, variables: list[str], where: str) -> None:
    missing = [v for v in variables if v not in dataset.data_vars]
    if missing:
        raise DataFileError(f"{where}: variable(s) {', '.join(missing)} not found "
                            f"(available: {_listed(sorted(map(str, dataset.data_vars)))})")


def _open_one(path: Path, chunks: dict) -> xr.Dataset:
    import xarray as xr

    try:
        return xr.open_dataset(path, chunks=chunks)
    except Exception as exc:  # noqa: BLE001 -- backends raise OSError/ValueError/RuntimeError variants
        raise DataFileError(f"{path}: not a readable NetCDF file ({type(exc).__name__}: {exc})") from None


def _open_netcdf_files(files: list[Path], where: str, settings: dict, chunks: dict) -> xr.Dataset:
    """Several NetCDF files combined along time, each checked first so errors name it."""
    import xarray as xr

    variables, dims = settings["variables"], settings["dims"]
    ranges: list[tuple[np.datetime64, np.datetime64, str]] = []
    grids: dict[str, tuple[str, np.ndarray]] = {}

    def preprocess(dataset: xr.Dataset) -> xr.Dataset:
        name = str(dataset.encoding.get("source", "?"))
        _check_variables(dataset, variables, name)
        times = _time_values(dataset, dims["time"], name)
        check_time_increasing(times, f"{name}: time coordinate {dims['time']!r}")
        ranges.append((times[0], times[-1], name))
        for axis in ("y", "x"):
            dim = dims[axis]
            if dim in dataset.indexes:
                values = np.asarray(dataset.indexes[dim])
                if dim not in grids:
                    grids[dim] = (name, values)
                elif not np.array_equal(grids[dim][1], values):
                    raise DataFileError(f"{name}: {axis} coordinate {dim!r} differs from the one in {grids[dim][0]} "
                                        "(every file must share one grid)")
        return dataset[variables]

    def check_overlaps() -> None:
        ordered = sorted(ranges, key=lambda r: r[0])
        for (first_a, last_a, name_a), (first_b, last_b, name_b) in itertools.pairwise(ordered):
            if first_b <= last_a:
                raise DataFileError(f"{name_b}: times {str(first_b)[:19]} .. {str(last_b)[:19]} overlap those of "
                                    f"{name_a} ({str(first_a)[:19]} .. {str(last_a)[:19]}); each time may appear in "
                                    f"one file only (source {where})")

    if len(files) == 1:
        dataset = _open_one(files[0], chunks)
        dataset.encoding.setdefault("source", str(files[0]))
        return preprocess(dataset)
    try:
        dataset = xr.open_mfdataset(
            [str(p) for p in files], combine="by_coords", chunks=chunks, preprocess=preprocess,
            data_vars="minimal", coords="minimal", compat="override", join="exact", combine_attrs="override")
    except DataFileError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any backend failure becomes an error naming the source
        if len(ranges) == len(files):  # every file opened and passed its checks: the combination failed
            check_overlaps()
            raise DataFileError(f"{where}: cannot combine its {len(files)} files along time "
                                f"({type(exc).__name__}: {exc})") from None
        for path in files:  # name the file that does not open
            _open_one(path, chunks).close()
        raise DataFileError(f"{where}: cannot open its files ({type(exc).__name__}: {exc})") from None
    check_overlaps()
    return dataset


def _open_zarr(path: Path, where: str, settings: dict, chunks: dict) -> xr.Dataset:
    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            dataset = xr.open_zarr(path, chunks=chunks)
    except Exception as exc:  # noqa: BLE001 -- any backend failure becomes an error naming the source
        raise DataFileError(f"{where}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    _check_variables(dataset, settings["variables"], where)
    dataset = dataset[settings["variables"]]
    times = _time_values(dataset, settings["dims"]["time"], where)
    check_time_increasing(times, f"{where}: time coordinate {settings['dims']['time']!r}")
    return dataset


def open_source(settings: dict) -> tuple[xr.Dataset, str, str, list[Path]]:
    """``(dataset of the variables, format, where, files)``: lazy, chunked along time."""
    fmt, where, files = resolve_source(settings["source"])
    chunks = {settings["dims"]["time"]: int(settings["chunk_frames"])}
    with warnings.catch_warnings():
        # our time chunks may split the stored chunks; the field is rechunked at the end anyway
        warnings.filterwarnings("ignore", message=".*specified chunks separate the stored chunks.*")
        if fmt == "zarr":
            dataset = _open_zarr(files[0], where, settings, chunks)
        else:
            dataset = _open_netcdf_files(files, where, settings, chunks)
    return dataset, fmt, where, files


# -- selection ------------------------------------------------------------------------------

def apply_select(dataset: xr.Dataset, select: dict, dims: dict, where: str) -> xr.Dataset:
    """Fix the extra dimensions by label; errors name the dimension and the available values."""
    for dim, value in select.items():
        if dim in dims.values():
            raise ValueError(f"gridded config select.{dim}: {dim!r} is the {next(a for a, d in dims.items() if d == dim)} "
                             "dimension; use time_range or crop to cut it")
        if dim not in dataset.dims:
            raise DataFileError(f"{where}: select.{dim}: no dimension {dim!r} in the variables "
                                f"{', '.join(map(str, dataset.data_vars))} (dimensions: {_listed(dataset.dims)})")
        if dim in dataset.indexes:
            labels = dataset.indexes[dim]
            try:
                dataset = dataset.sel({dim: value})
            except (KeyError, TypeError, ValueError):
                raise DataFileError(f"{where}: select.{dim}: value {value!r} not found (available: "
                                    f"{_listed(labels.tolist())})") from None
        else:
            size = dataset.sizes[dim]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < size:
                raise DataFileError(f"{where}: select.{dim}: dimension {dim!r} has no coordinate, so it is selected by "
                                    f"position; {value!r} is not one of 0 .. {size - 1}")
            dataset = dataset.isel({dim: int(value)})
    wanted = (dims["time"], dims["y"], dims["x"])
    for name, variable in dataset.data_vars.items():
        if set(variable.dims) != set(wanted) or variable.ndim != 3:
            extra = [d for d in variable.dims if d not in wanted]
            hint = f"; fix {', '.join(map(repr, extra))} with select" if extra else ""
            raise DataFileError(f"{where}: variable {name!r} has dims {tuple(map(str, variable.dims))} after select, "
                                f"expected exactly {wanted} (dims.time, dims.y, dims.x){hint}")
    return dataset.transpose(*wanted)


def _crop_slice(index: pd.Index, pair, axis: str, dim: str, where: str) -> slice:
    low, high = min(pair), max(pair)
    if index.is_monotonic_increasing:
        return slice(low, high)
    if index.is_monotonic_decreasing:
        return slice(high, low)  # e.g. ERA5 latitude 90 -> -90
    raise DataFileError(f"{where}: crop.{axis}: coordinate {dim!r} is not monotonic, cannot crop by label")


def apply_crop(dataset: xr.Dataset, crop: dict | None, dims: dict, where: str) -> xr.Dataset:
    for axis, pair in (crop or {}).items():
        dim = dims[axis]
        if dim not in dataset.indexes:
            raise DataFileError(f"{where}: crop.{axis}: dimension {dim!r} has no coordinate values to crop by")
        index = dataset.indexes[dim]
        cropped = dataset.sel({dim: _crop_slice(index, pair, axis, dim, where)})
        if cropped.sizes[dim] == 0:
            raise DataFileError(f"{where}: crop.{axis} {list(pair)} keeps no {dim!r} value (the coordinate runs "
                                f"{index[0]} .. {index[-1]})")
        dataset = cropped
    return dataset


def apply_convert(dataset: xr.Dataset, convert: dict | None) -> xr.Dataset:
    """``value * factor + offset`` in float64 and the new units, per variable of ``convert``."""
    for variable, (factor, offset, units) in (convert or {}).items():
        attrs = {**dataset[variable].attrs, "units": units}
        dataset[variable] = dataset[variable].astype(np.float64) * factor + offset
        dataset[variable].attrs = attrs
    return dataset


def _pixel_name(dataset: xr.Dataset, dims: dict, row: int, column: int) -> str:
    labels = []
    for axis, index in (("y", row), ("x", column)):
        dim = dims[axis]
        value = dataset.indexes[dim][index] if dim in dataset.indexes else index
        labels.append(f"{dim}={value:g}" if isinstance(value, (float, np.floating)) else f"{dim}={value}")
    return f"{', '.join(labels)} (row {row}, column {column})"


def find_never_observed(dataset: xr.Dataset, variables: list[str], dims: dict, fill_missing, where: str
                        ) -> tuple[xr.DataArray, dict[str, float]]:
    """``(observed, fills)``: the pixels observed in at least one frame, as a bool ``(y, x)``
    DataArray, and each channel's fill (its mean over the finite values, rounded to float32).

    One pass over the data (dask, chunk by chunk). Errors, naming the pixel: the variables'
    never-observed pixels differ; a pixel NaN in some frames but not all while ``fill_missing``
    is null; no pixel observed at all.
    """
    import dask
    import xarray as xr

    time_dim, y_dim, x_dim = dims["time"], dims["y"], dims["x"]
    frames = dataset.sizes[time_dim]
    lazy = []
    for variable in variables:
        values = dataset[variable]
        finite = np.isfinite(values)
        lazy.append((values.isnull().sum(time_dim), values.astype(np.float64).where(finite).sum(skipna=True),
                     finite.sum()))
    (computed,) = dask.compute(lazy)
    nan_count = {v: np.asarray(c[0].transpose(y_dim, x_dim).values) for v, c in zip(variables, computed)}
    never = nan_count[variables[0]] == frames
    for variable in variables[1:]:
        differ = (nan_count[variable] == frames) != never
        if differ.any():
            row, column = (int(i) for i in np.argwhere(differ)[0])
            first, other = (variables[0], variable) if never[row, column] else (variable, variables[0])
            raise DataFileError(f"{where}: at {_pixel_name(dataset, dims, row, column)} variable {first!r} is NaN in "
                                f"every frame but {other!r} is not; never_observed: mask needs the variables to share "
                                f"their never-observed pixels ({int(differ.sum())} pixel(s) differ)")
    if never.all():
        raise DataFileError(f"{where}: every pixel is NaN in every one of the {frames} frames (variables "
                            f"{', '.join(variables)}): nothing is observed")
    if fill_missing is None:
        for variable in variables:
            partial = (nan_count[variable] > 0) & ~never
            if partial.any():
                row, column = (int(i) for i in np.argwhere(partial)[0])
                raise DataFileError(
                    f"{where}: variable {variable!r} is NaN in {int(nan_count[variable][row, column])} of {frames} "
                    f"frames at {_pixel_name(dataset, dims, row, column)}, observed in the others "
                    f"({int(partial.sum())} such pixel(s)); never_observed: mask leaves out only pixels that are NaN "
                    "in every frame: set fill_missing to a number to fill the NaN of observed pixels")
    fills = {}
    for variable, (_, total, count) in zip(variables, computed):
        if int(count) == 0:
            raise DataFileError(f"{where}: variable {variable!r} has no finite value at all")
        fills[variable] = float(np.float32(float(total) / int(count)))
    coords = {dim: dataset[dim] for dim in (y_dim, x_dim) if dim in dataset.coords}
    return xr.DataArray(~never, dims=(y_dim, x_dim), coords=coords), fills


def fill_never_observed(dataset: xr.Dataset, observed: xr.DataArray, fills: dict[str, float]) -> xr.Dataset:
    """Never-observed pixels of each variable set to its fill (lazily)."""
    for variable, fill in fills.items():
        attrs = dict(dataset[variable].attrs)
        dataset[variable] = dataset[variable].where(observed, np.asarray(fill, dtype=dataset[variable].dtype))
        dataset[variable].attrs = attrs
    return dataset


def coarsen_observed(dataset: xr.Dataset, observed: xr.DataArray, fills: dict[str, float], factor: int,
                     dims: dict) -> tuple[xr.Dataset, xr.DataArray]:
    """Block means over the observed cells of each block (float64, trimmed); a block without an
    observed cell is never observed and takes the fill. Returns the coarse dataset and mask."""
    window = {dims["y"]: factor, dims["x"]: factor}
    attrs = {v: dict(dataset[v].attrs) for v in dataset.data_vars}
    # np.sum propagates NaN, as the plain coarsen's np.mean does
    total = dataset.astype(np.float64).where(observed, 0.0).coarsen(window, boundary="trim").reduce(np.sum)
    count = observed.astype(np.float64).coarsen(window, boundary="trim").reduce(np.sum)
    coarse_observed = count > 0
    coarse = total / count.where(coarse_observed)
    for variable, fill in fills.items():
        coarse[variable] = coarse[variable].where(coarse_observed, fill)
        coarse[variable].attrs = attrs[variable]
    coarse.attrs = dict(dataset.attrs)
    return coarse, coarse_observed


def _scalar_attrs(attrs: dict) -> dict:
    """Attributes NetCDF can hold as plain scalars (str/int/float)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            out[str(key)] = value
        elif isinstance(value, (np.integer, np.floating)):
            out[str(key)] = value.item()
    return out


def _grid_coord(dataset: xr.Dataset, dim: str, axis: str) -> tuple:
    size = dataset.sizes[dim]
    if dim in dataset.coords:
        values = np.asarray(dataset[dim].values)
        attrs = _scalar_attrs(dataset[dim].attrs)
    else:
        values = np.arange(size, dtype=np.int32)
        attrs = {"long_name": "grid row" if axis == "y" else "grid column", "units": "1"}
    attrs.setdefault("long_name", dim)
    attrs.setdefault("units", "1")
    attrs["source_dim"] = dim
    return (axis, values, attrs)


def _describe(mapping: dict | None) -> str:
    if not mapping:
        return "none"
    return " ".join(f"{key}={value}" for key, value in mapping.items())


@register_dataset("gridded", config_schema=SCHEMA, defaults=DEFAULTS)
def generate(config: dict, seed: int) -> xr.DataArray:
    """Your own gridded data, dims ``(time, channel, y, x)``, float32, lazy (``seed`` unused)."""
    settings = _settings(config)
    variables, dims = list(settings["variables"]), settings["dims"]
    dataset, fmt, where, files = open_source(settings)
    dataset = apply_select(dataset, settings["select"], dims, where)
    source_shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    time_dim = dims["time"]

    if settings["time_range"] is not None:
        start, end = (str(v) for v in settings["time_range"])
        available = dataset.indexes[time_dim]
        dataset = dataset.sel({time_dim: slice(start, end)})
        if dataset.sizes[time_dim] == 0:
            raise DataFileError(f"{where}: time_range [{start}, {end}] selects no frame (the source covers "
                                f"{str(available[0])[:19]} .. {str(available[-1])[:19]})")
    times = np.asarray(dataset.indexes[time_dim])
    segment, gaps = segments_from_time(times, settings["step"], where=f"{where}: time coordinate {time_dim!r}")
    if gaps:
        warnings.warn(f"gridded source {where}: {describe_gaps(gaps)} in time (nominal step {settings['time_step']}); "
                      "each gap starts a new segment, no window crosses it (nothing is interpolated)",
                      UserWarning, stacklevel=2)

    dataset = apply_crop(dataset, settings["crop"], dims, where)
    cropped_shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    source_units = [str(dataset[v].attrs.get("units", "unknown")) for v in variables]
    dataset = apply_convert(dataset, settings["convert"])
    observed = fills = None
    if settings["never_observed"] == "mask":
        observed, fills = find_never_observed(dataset, variables, dims, settings["fill_missing"], where)
        dataset = fill_never_observed(dataset, observed, fills)
    if settings["fill_missing"] is not None:
        dataset = dataset.fillna(float(settings["fill_missing"]))
    factor = int(settings["coarsen"])
    if factor > 1 and observed is not None:
        dataset, observed = coarsen_observed(dataset, observed, fills, factor, dims)
    elif factor > 1:
        dataset = (dataset.astype(np.float64)
                   .coarsen({dims["y"]: factor, dims["x"]: factor}, boundary="trim")
                   .reduce(np.mean))  # NaN propagates (.mean() would skip it and hide holes)
    shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    if shape != (int(config["height"]), int(config["width"])):
        raise ValueError(
            f"gridded: config height {config['height']} and width {config['width']} do not match the grid "
            f"{shape[0]} x {shape[1]} ({dims['y']} x {dims['x']}: {source_shape[0]} x {source_shape[1]} in the "
            f"source, {cropped_shape[0]} x {cropped_shape[1]} after crop, coarsen {factor}); set height: {shape[0]}, "
            f"width: {shape[1]}")

    stacked = (dataset[variables].to_dataarray(dim="channel")
               .transpose("channel", time_dim, dims["y"], dims["x"]))
    values = stacked.data.transpose(1, 0, 2, 3).rechunk((int(settings["chunk_frames"]), -1, -1, -1))

    var_attrs = [dataset[v].attrs for v in variables]
    units = [str(a.get("units", "unknown")) for a in var_attrs]
    long_names = [str(a.get("long_name", v)) for a, v in zip(var_attrs, variables)]
    name = variables[0] if len(variables) == 1 and variables[0] not in RESERVED_NAMES else "field"
    source_attrs = {f"source_{key.lower()}": value for key, value in _scalar_attrs(dataset.attrs).items()
                    if key.lower() in ("title", "institution", "conventions", "source", "history", "references")}
    attrs = {
        "units": units[0],
        "long_name": long_names[0] if len(variables) == 1 else f"{long_names[0]} and {len(variables) - 1} more",
        "channel_units": "; ".join(f"{v}: {u}" for v, u in zip(variables, units)),
        "channel_long_names": "; ".join(f"{v}: {n}" for v, n in zip(variables, long_names)),
        "generator": "gridded",
        "source": where,
        "source_format": fmt,
        "source_files": len(files),
        "source_file_names": _listed([p.name for p in files], limit=MAX_LISTED),
        "variables": " ".join(variables),
        "dims": _describe(dims),
        "select": _describe(settings["select"]),
        "crop": _describe({k: list(v) for k, v in (settings["crop"] or {}).items()}),
        "coarsen": factor,
        "time_step": str(settings["time_step"]),
        "time_range": "none" if settings["time_range"] is None else " ".join(map(str, settings["time_range"])),
        "time_start": str(times[0])[:19],
        "time_end": str(times[-1])[:19],
        "frames": int(times.size),
        "time_gaps": describe_gaps(gaps),
        "n_time_gaps": len(gaps),
        "segments": int(segment[-1]) + 1,
        "fill_missing": "none (NaN is an error)" if settings["fill_missing"] is None else float(settings["fill_missing"]),
        "chunk_frames": int(settings["chunk_frames"]),
        "grid_source": f"{source_shape[0]} x {source_shape[1]}",
        "seed": int(seed),
        **source_attrs,
    }
    coords = {"y": _grid_coord(dataset, dims["y"], "y"), "x": _grid_coord(dataset, dims["x"], "x")}
    # recorded only when set: an entry without them ingests to the same bytes as before they existed
    if settings["convert"] is not None:
        attrs["convert"] = "; ".join(f"{v}: x {f:g} + {o:g} ({u_in} -> {u})" for (v, (f, o, u)), u_in in
                                     ((item, source_units[variables.index(item[0])])
                                      for item in settings["convert"].items()))
        attrs["source_units"] = "; ".join(f"{v}: {u}" for v, u in zip(variables, source_units))
    if observed is not None:
        flags = np.asarray(observed.values, dtype=np.int8)
        coords["observed"] = (("y", "x"), flags, dict(OBSERVED_ATTRS))
        attrs.update({
            "never_observed": "mask",
            "never_observed_definition": "NaN in every frame after select, time_range and crop"
                                         + (f"; after coarsen {factor}, a block without an observed cell" if factor > 1
                                            else ""),
            "never_observed_pixels": int(flags.size - flags.sum()),
            "observed_pixels": int(flags.sum()),
            "never_observed_fraction": float(1.0 - flags.mean()),
            "never_observed_fill": "; ".join(f"{v}: {fills[v]:.7g}" for v in variables),
            "never_observed_fill_rule": "the channel's mean over the observed values of the selected period",
        })
    return field_array(
        values,
        name=name,
        channels=variables,
        attrs=attrs,
        time=times,
        time_attrs={"long_name": "time", "standard_name": "time"},
        segment=segment,
        coords=coords,
    )
