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
strictly increasing (never reordered), its calendar the entry's ``calendar``, the same y/x
grid as the first file; and no two files overlap in time (the overlapping pair is named). A
glob or folder that matches nothing is a :class:`nuwa.io.DataFileError` naming the pattern.
In a NetCDF file, a float variable that declares no ``_FillValue`` (nor ``missing_value``) holds
netCDF's default fill value (9.97e36 for float32) where nothing was written (e.g. CMIP6 air
temperature below the ground at 1000 hPa): it is read as NaN (missing), as netCDF4-python does
(xarray alone would give 1e37 K).

``calendar`` (default ``standard``) is the CF calendar of the time coordinate, one of
``standard`` (alias ``gregorian``), ``proleptic_gregorian``, ``noleap`` (``365_day``),
``all_leap`` (``366_day``), ``360_day`` and ``julian``. ``standard`` and ``proleptic_gregorian``
are one choice: times decode to numpy datetime64, exactly as before the key existed (a file
without a ``calendar`` attribute is ``standard``, CF's default). The others decode to cftime
dates (xarray's ``CFDatetimeCoder(use_cftime=True)``), e.g. a climate model's ``360_day`` year
of twelve 30-day months. A file whose calendar is not the declared one is an error naming the
file, the calendar found and the key to set. Such a field records ``calendar`` in its
attributes, and its time coordinate keeps the calendar in its encoding, so that ingest writes
``time`` with CF ``units`` and ``calendar`` (xarray writes both; neither can be a plain attribute).

Steps, in order (every one lazy, only small coordinate arrays read, except ``never_observed:
mask``'s one counting pass):

1. ``variables`` (>= 1) are picked, one channel each, named after the variable; a missing
   one is an error listing the available ones.
2. ``select`` ``{dim: value}`` fixes every other dimension by label (``.sel``), e.g.
   ``{level: 850}`` or ``{number: 0}``; a dimension without a coordinate is taken by
   position. A missing dimension or value is an error listing the available ones. After it
   each variable must have exactly the ``dims`` (time, y, x) dimensions (named in ``dims``,
   default ``time``, ``latitude``, ``longitude``; newer CDS downloads call time
   ``valid_time``). ``dims`` must agree with the file's CF attributes: a dimension whose
   coordinate variable says ``axis`` X/Y/T, a ``standard_name`` (``latitude``, ``longitude``,
   ``grid_latitude``, ``grid_longitude``, ``projection_x_coordinate``,
   ``projection_y_coordinate``, ``time``) or latitude/longitude ``units`` (``degrees_north``,
   ``degrees_east``) of another axis than the key it is given to (``y: lon, x: lat``: a
   transposed field) is an error naming the key, the variable and the attribute. When the
   variables' dimensions are not ``dims``, the error shows the ``dims`` mapping the file's CF
   attributes suggest (e.g. ``dims: {time: time, y: lat, x: lon}``) and a ``select`` for each
   other dimension (e.g. ``select: {plev: 100000.0}``).
3. Time must decode to dates of the ``calendar`` and increase strictly: a repeat or a step
   backwards is a :class:`nuwa.io.DataFileError` naming the file (or source) and the index;
   nothing is sorted or dropped silently. ``time_range`` ``[start, end]`` (inclusive, any
   string pandas parses; with a cftime calendar, ISO dates of that calendar, e.g.
   ``1950-02-30`` in ``360_day``) then selects a period.
4. ``time_step`` is the nominal step, either a fixed pandas frequency (``1h``, ``6h``, ``1D``;
   with cftime dates, in their calendar: a ``360_day`` month is ``30D``) or calendar months:
   ``1MS`` (also ``MS``, ``1M``, ``1ME``, ``month``, ``monthly``; ``3MS`` a season) and years
   ``1YS`` (``1Y``, ``year``, ``yearly``; 12 months). With calendar months, frames in
   consecutive months are consecutive whatever the day within the month (monthly means are
   stamped mid-month: 16 January 12:00, 15 February 00:00, ...) and in any calendar; two frames
   in one month are an error. Every step must be a multiple of ``time_step`` (else an error
   naming the times). Larger steps are gaps (whole missing months for calendar months): they
   are reported (attribute ``time_gaps`` and a ``UserWarning``) and start a new ``segment``, so
   no window is built across a gap; nothing is interpolated. A ``time_step`` that does not
   match the data (more than half of the steps between frames differ from it: e.g. ``12h`` on
   monthly data, where every frame would be a segment of its own) is an error naming
   ``time_step`` and the data's median step, with the spelling to set (``1MS`` for ~monthly).
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
   (ingest checks finiteness chunk by chunk; the reader never loads the field to check;
   :data:`NAN_HINT` says what to set); a number replaces NaN lazily (``fillna``) and is
   recorded in the attributes (with ``never_observed: mask``, only the NaN of observed pixels
   are left to it). What it fills is recorded as the radar readers record their missing data
   (one counting pass over the source, chunk by chunk): coordinate ``missing_fraction(time)``,
   the fraction of the frame's cells (after select, time_range, crop and convert, before
   coarsen) where a variable is NaN, and ``missing_frequency(y, x)``, the fraction of frames in
   which the output pixel's block held such a cell; attributes ``missing_definition``,
   ``missing_values`` (NaN per variable), ``missing_fraction_mean``, ``missing_fraction_max``,
   ``frames_with_missing`` and ``missing_frequency_max``.
9. ``coarsen`` (integer, default 1): block mean over ``coarsen x coarsen`` cells on y and x
   (``.coarsen(boundary="trim").mean()``, computed in float64, NaN propagates); the
   coordinates become the block means. With ``never_observed: mask`` a block is the mean of
   its observed cells (a coastal block keeps its land mean); a block without one is never
   observed. With ``fill_missing`` set, a block is the mean of its non-missing cells (missing
   cells do not dilute it, as in the radar readers' downsampling) and a block without one in a
   frame takes ``fill_missing``.
10. The grid must then be ``height`` x ``width`` of the params entry (a ``ValueError`` naming
    both keys and the computed shape otherwise).

Result: float32 ``(time, channel, y, x)``, dask-backed, chunked ``chunk_frames`` (default
64) frames along time with whole y/x slabs. Coordinates: ``time`` (datetime64, or cftime dates
for a non-standard ``calendar``), ``segment``, and ``y``/``x`` holding the source's coordinate
values (e.g. latitude and longitude) with their attributes plus ``source_dim``. The
projection stays: the variable's CF grid-mapping variable (its ``grid_mapping`` attribute) is a
scalar coordinate of the same name with all its attributes (``grid_mapping_name``,
``crs_wkt``, ...), named by the field's ``grid_mapping`` attribute; ``crs_wkt``, ``proj4`` and
similar strings on the variable or in the file's global attributes are copied to the field's
attributes. ``units`` and ``long_name`` come from
the first variable; ``channel_units`` and ``channel_long_names`` list every channel's. All
settings and source details are recorded in the attributes. With ``never_observed: mask``, also
the coordinate ``observed(y, x)`` (int8 flags; ingest writes it into the processed file, and
:func:`nuwa.windows.load_series` reads it into ``SeriesData.observed``). ``convert``,
``never_observed: mask``, ``fill_missing``, calendar months, a non-standard ``calendar`` and a
grid mapping add attributes and coordinates only when set or present: an entry without them
gives the same bytes as before they existed (the shipped WFDE5 entry among them).
"""

from __future__ import annotations

import itertools
import os
import re
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
from nuwa.globbing import find_paths, has_magic

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
# calendar: the CF calendars (CF 1.11, 4.4.1); "gregorian", "365_day" and "366_day" are aliases
CALENDARS = ("standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "all_leap", "366_day",
             "360_day", "julian")
CALENDAR_ALIASES = {"gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}
# decoded to numpy datetime64 (pandas' proleptic Gregorian calendar), exactly as before `calendar` existed
STANDARD_CALENDARS = ("standard", "proleptic_gregorian")
# time_step in calendar months: [n]MS, [n]M, [n]ME, [n]month(s), monthly; years: [n]YS, [n]Y, [n]YE, [n]year(s),
# yearly (12 n months)
_MONTHS = re.compile(r"^\s*(?P<n>\d*)\s*(?:(?P<months>MS|ME|M)|(?P<years>YS|YE|Y)|"
                     r"(?P<month_word>(?i:months?|monthly))|(?P<year_word>(?i:years?|yearly)))\s*$")
# the CF attributes that say which axis a coordinate variable is (dims must agree with them)
AXIS_ROLES = {"T": "time", "Y": "y", "X": "x"}
STANDARD_NAME_ROLES = {"time": "time", "latitude": "y", "grid_latitude": "y", "projection_y_coordinate": "y",
                       "longitude": "x", "grid_longitude": "x", "projection_x_coordinate": "x"}
LATITUDE_UNITS = ("degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn")
LONGITUDE_UNITS = ("degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese")
ROLE_TEXT = {"time": "time (T)", "y": "y (Y: latitude or northing, the rows)",
             "x": "x (X: longitude or easting, the columns)"}
# dimension names a dims guess falls back on when a dimension has no CF attributes
ROLE_NAMES = {"time": ("time", "valid_time", "t", "time_counter"),
              "y": ("latitude", "lat", "y", "rlat", "nav_lat", "south_north", "grid_latitude"),
              "x": ("longitude", "lon", "x", "rlon", "nav_lon", "west_east", "grid_longitude")}
# projection descriptions copied from the data variable or the file's global attributes to the field
PROJECTION_ATTRS = ("crs_wkt", "spatial_ref", "proj4", "proj4string", "proj4_string", "proj4text", "esri_pe_string")
# what a NaN error says (ingest's non-finite check can append it for kind gridded)
NAN_HINT = ("kind gridded: set fill_missing to a number to fill NaN (the missing fraction per frame and the missing "
            "frequency per pixel are recorded), or never_observed: mask if some pixels are NaN in every frame "
            "(e.g. the sea of a land-only product)")

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
    "calendar": {"enum": list(CALENDARS)},
}
DEFAULTS = {"dims": dict(DEFAULT_DIMS), "select": {}, "crop": None, "coarsen": 1, "time_range": None,
            "fill_missing": None, "never_observed": "missing", "convert": None, "chunk_frames": 64,
            "calendar": "standard"}
MISSING_ATTRS = {
    "missing_fraction": {"long_name": "fraction of the cropped source frame's pixels missing before filling",
                         "units": "1"},
    "missing_frequency": {"long_name": "fraction of frames in which the pixel's block held a missing source pixel",
                          "units": "1"},
}
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
    if settings["calendar"] not in CALENDARS:
        raise ValueError(f"gridded config calendar is {settings['calendar']!r} (allowed: {', '.join(CALENDARS)})")
    settings["calendar_name"] = canonical_calendar(settings["calendar"])
    settings["calendar_given"] = "calendar" in config
    settings["step"], settings["step_months"] = parse_time_step(settings["time_step"])
    time_range = settings["time_range"]
    if time_range is not None:
        if len(time_range) != 2:
            raise ValueError(f"gridded config time_range must be [start, end], got {time_range!r}")
        if settings["calendar_name"] in STANDARD_CALENDARS:  # other calendars: xarray parses them on selection
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


def canonical_calendar(name: str) -> str:
    """The CF calendar's canonical name: ``gregorian`` -> ``standard``, ``365_day`` -> ``noleap``,
    ``366_day`` -> ``all_leap``; others unchanged (lower case)."""
    name = str(name).strip().lower()
    return CALENDAR_ALIASES.get(name, name)


def parse_time_step(time_step) -> tuple[np.timedelta64 | None, int | None]:
    """``(step, months)``: a fixed pandas frequency (``1h``, ``6h``, ``1D``) gives ``(timedelta64,
    None)``; calendar months (``1MS``, ``3MS``, ``1M``, ``1ME``, ``month``, ``monthly``; years
    ``1YS``, ``1Y``, ``year``, ``yearly`` = 12 months) give ``(None, n)``."""
    text = str(time_step)
    match = _MONTHS.match(text)
    if match:
        count = int(match["n"]) if match["n"] else 1
        if count < 1:
            raise ValueError(f"gridded config time_step {time_step!r} must be positive")
        return None, count * (12 if match["years"] or match["year_word"] else 1)
    try:
        offset = pd.tseries.frequencies.to_offset(text)
        step = pd.Timedelta(offset)
    except (ValueError, TypeError):
        raise ValueError(f"gridded config time_step {time_step!r} is neither a fixed-length pandas frequency "
                         "(e.g. '1h', '6h', '1D') nor calendar months ('1MS', '3MS', 'month'; years: '1YS')") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"gridded config time_step {time_step!r} must be positive")
    return step.to_timedelta64(), None


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
    if has_magic(text):
        where = os.path.abspath(text)
        # bounded globbing (nuwa.globbing): link loops walked once, each real file once, a cap on matches
        files = sorted(Path(p).resolve() for p in find_paths(text))
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


def _is_cftime(values: np.ndarray) -> bool:
    """An object array of cftime dates (xarray's decoding of a non-standard CF calendar)."""
    if values.dtype != object or values.size == 0:
        return False
    import cftime

    return all(isinstance(v, cftime.datetime) for v in values.flat)


def _time_values(dataset: xr.Dataset, time_dim: str, where: str, variables: list[str] | None = None) -> np.ndarray:
    """The time coordinate's dates: datetime64 (standard calendars) or cftime objects (``calendar``)."""
    if time_dim not in dataset.dims:
        guess = guess_dims(dataset, variables or list(map(str, dataset.data_vars)))
        hint = (f" (the file's CF attributes suggest dims: {_flow(guess)})" if guess.get("time") else "")
        raise DataFileError(f"{where}: no dimension {time_dim!r} for time (dimensions: {_listed(dataset.dims)}); "
                            f"set dims.time in the params entry{hint}")
    if time_dim not in dataset.coords:
        raise DataFileError(f"{where}: time dimension {time_dim!r} has no coordinate variable (no dates)")
    times = np.asarray(dataset.indexes[time_dim])
    if np.issubdtype(times.dtype, np.datetime64):
        if np.isnat(times).any():
            raise DataFileError(f"{where}: time coordinate {time_dim!r} has a missing value at index "
                                f"{int(np.flatnonzero(np.isnat(times))[0])}")
        return times
    if _is_cftime(times):
        return times
    coordinate = dataset[time_dim]
    units = coordinate.encoding.get("units", coordinate.attrs.get("units"))
    calendar = coordinate.encoding.get("calendar", coordinate.attrs.get("calendar"))
    others = [str(name) for name, c in dataset.coords.items()
              if name != time_dim and c.dims == (time_dim,) and c.attrs.get("standard_name") == "time"]
    other = (f"; the coordinate(s) {', '.join(map(repr, others))} along {time_dim!r} have standard_name time: "
             f"make one the time dimension's coordinate (e.g. ds.swap_dims / assign_coords)" if others else "")
    raise DataFileError(f"{where}: time coordinate {time_dim!r} does not decode to datetimes (dtype {times.dtype}, "
                        f"units {units!r}, calendar {calendar!r}; need CF units like 'hours since 1900-01-01' and a "
                        f"CF calendar){other}")


def file_calendar(coordinate: xr.DataArray) -> str:
    """The CF calendar of a decoded time coordinate (canonical name; CF's default ``standard`` if the
    file names none)."""
    calendar = coordinate.encoding.get("calendar", coordinate.attrs.get("calendar"))
    if calendar is None:
        values = np.asarray(coordinate.values)
        calendar = values.flat[0].calendar if _is_cftime(values) else "standard"
    return canonical_calendar(calendar)


def _calendar_family(calendar: str) -> str:
    # standard and proleptic_gregorian both decode to datetime64, as they did before `calendar` existed
    return "standard" if calendar in STANDARD_CALENDARS else calendar


def check_calendar(dataset: xr.Dataset, time_dim: str, settings: dict, where: str) -> str:
    """The file's calendar, which must be the params entry's ``calendar`` (an error naming both otherwise)."""
    found = file_calendar(dataset[time_dim])
    declared = settings["calendar_name"]
    if _calendar_family(found) != _calendar_family(declared):
        supported = found in {canonical_calendar(c) for c in CALENDARS}
        fix = (f"set calendar: {found} in the params entry" if supported else
               f"calendar {found!r} is not supported (allowed: {', '.join(CALENDARS)})")
        declared_text = (f"says calendar: {settings['calendar']}" if settings.get("calendar_given", True)
                         else "has no calendar key (default: standard)")
        raise DataFileError(f"{where}: time coordinate {time_dim!r} has calendar {found!r}, but the params entry "
                            f"{declared_text} ({fix})")
    return found


def _decode_options(settings: dict) -> dict:
    """Keyword arguments of xarray's openers: none for the standard calendars (datetime64, exactly as
    before ``calendar`` existed); cftime dates for the others."""
    if settings["calendar_name"] in STANDARD_CALENDARS:
        return {}
    import xarray as xr

    coder = getattr(getattr(xr, "coders", None), "CFDatetimeCoder", None)
    if coder is not None:
        return {"decode_times": coder(use_cftime=True)}
    return {"use_cftime": True}  # xarray < 2025.01


def _grid_mapping_name(dataset: xr.Dataset, variables: list[str]) -> str | None:
    """The CF grid-mapping variable of the first variable (``grid_mapping`` attribute), if the file has it."""
    text = dataset[variables[0]].attrs.get("grid_mapping", dataset[variables[0]].encoding.get("grid_mapping"))
    if not isinstance(text, str) or not text.strip():
        return None
    name = text.split()[0].rstrip(":")  # also the extended form "crs: x y crs2: lat lon"
    return name if name in dataset.variables and dataset[name].ndim == 0 else None


def mask_default_fill(dataset: xr.Dataset, variables: list[str]) -> xr.Dataset:
    """NetCDF's default fill value as NaN (lazily) in the float variables that declare no
    ``_FillValue`` nor ``missing_value``: the netCDF library writes it where nothing was written
    (netCDF4-python masks it, xarray does not; e.g. CMIP6 air temperature below the ground at
    1000 hPa). Packed (scaled) variables are left as they are."""
    from netCDF4 import default_fillvals

    for name in variables:
        variable = dataset[name]
        stored = np.dtype(variable.encoding.get("dtype", variable.dtype))
        declared = {"_FillValue", "missing_value", "scale_factor", "add_offset"}
        if stored.kind != "f" or declared & (set(variable.encoding) | set(variable.attrs)):
            continue
        fill = stored.type(default_fillvals[f"f{stored.itemsize}"])
        attrs, encoding = dict(variable.attrs), dict(variable.encoding)
        dataset[name] = variable.where(variable != fill)
        dataset[name].attrs, dataset[name].encoding = attrs, encoding
    return dataset


def _subset(dataset: xr.Dataset, variables: list[str]) -> xr.Dataset:
    """The variables, with their grid-mapping variable kept as a scalar coordinate."""
    grid_mapping = _grid_mapping_name(dataset, variables)
    if grid_mapping is not None and grid_mapping not in dataset.coords:
        dataset = dataset.set_coords(grid_mapping)
    return dataset[variables]


def _check_variables(dataset: xr.Dataset, variables: list[str], where: str) -> None:
    missing = [v for v in variables if v not in dataset.data_vars]
    if missing:
        raise DataFileError(f"{where}: variable(s) {', '.join(missing)} not found "
                            f"(available: {_listed(sorted(map(str, dataset.data_vars)))})")


def _open_one(path: Path, chunks: dict, decode: dict | None = None) -> xr.Dataset:
    import xarray as xr

    try:
        return xr.open_dataset(path, chunks=chunks, **(decode or {}))
    except Exception as exc:  # noqa: BLE001 -- backends raise OSError/ValueError/RuntimeError variants
        raise DataFileError(f"{path}: not a readable NetCDF file ({type(exc).__name__}: {exc})") from None


def _open_netcdf_files(files: list[Path], where: str, settings: dict, chunks: dict) -> xr.Dataset:
    """Several NetCDF files combined along time, each checked first so errors name it."""
    import xarray as xr

    variables, dims = settings["variables"], settings["dims"]
    decode = _decode_options(settings)
    ranges: list[tuple[np.datetime64, np.datetime64, str]] = []
    grids: dict[str, tuple[str, np.ndarray]] = {}

    def preprocess(dataset: xr.Dataset) -> xr.Dataset:
        name = str(dataset.encoding.get("source", "?"))
        _check_variables(dataset, variables, name)
        times = _time_values(dataset, dims["time"], name, variables)
        check_calendar(dataset, dims["time"], settings, name)
        _check_increasing(times, f"{name}: time coordinate {dims['time']!r}")
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
        return mask_default_fill(_subset(dataset, variables), variables)

    def check_overlaps() -> None:
        ordered = sorted(ranges, key=lambda r: r[0])
        for (first_a, last_a, name_a), (first_b, last_b, name_b) in itertools.pairwise(ordered):
            if first_b <= last_a:
                raise DataFileError(f"{name_b}: times {str(first_b)[:19]} .. {str(last_b)[:19]} overlap those of "
                                    f"{name_a} ({str(first_a)[:19]} .. {str(last_a)[:19]}); each time may appear in "
                                    f"one file only (source {where})")

    if len(files) == 1:
        dataset = _open_one(files[0], chunks, decode)
        dataset.encoding.setdefault("source", str(files[0]))
        return preprocess(dataset)
    try:
        dataset = xr.open_mfdataset(
            [str(p) for p in files], combine="by_coords", chunks=chunks, preprocess=preprocess,
            data_vars="minimal", coords="minimal", compat="override", join="exact", combine_attrs="override",
            **decode)
    except DataFileError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any backend failure becomes an error naming the source
        if len(ranges) == len(files):  # every file opened and passed its checks: the combination failed
            check_overlaps()
            raise DataFileError(f"{where}: cannot combine its {len(files)} files along time "
                                f"({type(exc).__name__}: {exc})") from None
        for path in files:  # name the file that does not open
            _open_one(path, chunks, decode).close()
        raise DataFileError(f"{where}: cannot open its files ({type(exc).__name__}: {exc})") from None
    check_overlaps()
    return dataset


def _open_zarr(path: Path, where: str, settings: dict, chunks: dict) -> xr.Dataset:
    import xarray as xr

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
            dataset = xr.open_zarr(path, chunks=chunks, **_decode_options(settings))
    except Exception as exc:  # noqa: BLE001 -- any backend failure becomes an error naming the source
        raise DataFileError(f"{where}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    _check_variables(dataset, settings["variables"], where)
    dataset = _subset(dataset, settings["variables"])
    times = _time_values(dataset, settings["dims"]["time"], where, settings["variables"])
    check_calendar(dataset, settings["dims"]["time"], settings, where)
    _check_increasing(times, f"{where}: time coordinate {settings['dims']['time']!r}")
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


# -- time axis ------------------------------------------------------------------------------

def _offsets(times: np.ndarray) -> np.ndarray:
    """Times since the first one, as timedelta64 (cftime dates: microseconds, in their own calendar)."""
    if np.issubdtype(times.dtype, np.datetime64):
        return times - times[0]
    return np.array([t - times[0] for t in times], dtype="timedelta64[us]")


def _check_increasing(times: np.ndarray, where: str) -> None:
    """:func:`nuwa.datasets.check_time_increasing` for datetime64 and cftime dates alike."""
    if np.issubdtype(times.dtype, np.datetime64):
        check_time_increasing(times, where)
        return
    diffs = np.diff(_offsets(times))
    bad = np.flatnonzero(diffs <= np.timedelta64(0))
    if bad.size:
        i = int(bad[0])
        kind = "repeats" if diffs[i] == np.timedelta64(0) else "goes backwards"
        raise DataFileError(f"{where}: time {kind} at index {i + 1} ({str(times[i])[:19]} then "
                            f"{str(times[i + 1])[:19]}); times must increase strictly (nuwa never reorders or drops "
                            "frames: fix the source)")


def _month_numbers(times: np.ndarray) -> np.ndarray:
    """``12 * year + month - 1`` of each date (datetime64 or cftime): consecutive months differ by 1."""
    if np.issubdtype(times.dtype, np.datetime64):
        index = pd.DatetimeIndex(times)
        return np.asarray(index.year, dtype=np.int64) * 12 + np.asarray(index.month, dtype=np.int64) - 1
    return np.array([t.year * 12 + t.month - 1 for t in times], dtype=np.int64)


def _step_text(delta: np.timedelta64) -> str:
    """A timedelta as a time_step spelling: calendar months for ~monthly spacings, else D/h/min/s."""
    seconds = float(delta / np.timedelta64(1, "s"))
    days = seconds / 86400
    for months, (low, high) in ((1, (27.5, 31.5)), (2, (58.5, 62.5)), (3, (88.5, 92.5)), (6, (179, 185)),
                                (12, (359, 366.5))):
        if low <= days <= high:
            return f"{months}MS"
    for size, unit in ((86400, "D"), (3600, "h"), (60, "min")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _delta_text(delta: np.timedelta64) -> str:
    return str(pd.Timedelta(delta))


def time_segments(times: np.ndarray, settings: dict, where: str) -> tuple[np.ndarray, list[tuple]]:
    """``(segment, gaps)`` of the time axis for the nominal ``time_step`` (fixed or calendar months).

    A ``time_step`` that does not match the data (more than half of the steps between frames differ
    from it: every frame would be a segment of its own, or off the step grid) is an error naming
    ``time_step`` and the data's median spacing, with the spelling to write.
    """
    time_step, months = settings["time_step"], settings["step_months"]
    if times.size > 1:
        spacing = np.diff(_offsets(times))
        median = np.sort(spacing)[spacing.size // 2]
        if months is None:
            differ = int((spacing != settings["step"]).sum())
        else:
            month_steps = np.diff(_month_numbers(times))
            differ = int((month_steps != months).sum())
        if 2 * differ > spacing.size:
            raise DataFileError(
                f"{where}: time_step {time_step} does not match the data: {differ} of the {spacing.size} steps between "
                f"frames differ from it, the median step is {_delta_text(median)} (every frame would be a segment of "
                f"its own, or off the time_step grid, and no window could be built); set time_step: "
                f"{_step_text(median)} in the params entry")
    if months is None and np.issubdtype(times.dtype, np.datetime64):
        return segments_from_time(times, settings["step"], where=where)
    _check_increasing(times, where)
    if months is None:  # cftime dates, a fixed step in their own calendar
        step = np.timedelta64(settings["step"])
        diffs = np.diff(_offsets(times))
        off_grid = np.flatnonzero(diffs % step != np.timedelta64(0))
        if off_grid.size:
            i = int(off_grid[0])
            raise DataFileError(f"{where}: step from {str(times[i])[:19]} to {str(times[i + 1])[:19]} is not a "
                                f"multiple of the time step {time_step}")
        jumps = np.flatnonzero(diffs > step)
    else:
        diffs = np.diff(_month_numbers(times))
        bad = np.flatnonzero(diffs % months != 0)
        if bad.size:
            i = int(bad[0])
            same = diffs[i] == 0
            raise DataFileError(
                f"{where}: {str(times[i])[:19]} and {str(times[i + 1])[:19]} are "
                + ("in the same calendar month" if same else f"{int(diffs[i])} calendar months apart")
                + f", not a multiple of time_step {time_step} ({months} calendar month(s))")
        jumps = np.flatnonzero(diffs > months)
    segment = np.zeros(times.size, dtype=np.int32)
    segment[jumps + 1] = 1
    segment = np.cumsum(segment, dtype=np.int32)
    return segment, [(times[i], times[i + 1]) for i in jumps]


# -- dims and the file's CF attributes ------------------------------------------------------

def _cf_roles(coordinate: xr.DataArray) -> list[tuple[str, str, str]]:
    """``(attribute, value, role)`` for each CF attribute of a coordinate variable that says which
    axis it is: ``axis`` (T/Y/X), ``standard_name`` (time, latitude, longitude,
    projection_x/y_coordinate, grid_latitude/longitude) or latitude/longitude ``units``."""
    roles = []
    attrs = coordinate.attrs
    axis = attrs.get("axis")
    if isinstance(axis, str) and axis.strip().upper() in AXIS_ROLES:
        roles.append(("axis", axis, AXIS_ROLES[axis.strip().upper()]))
    standard_name = attrs.get("standard_name")
    if isinstance(standard_name, str) and standard_name.strip() in STANDARD_NAME_ROLES:
        roles.append(("standard_name", standard_name, STANDARD_NAME_ROLES[standard_name.strip()]))
    units = attrs.get("units")
    if isinstance(units, str) and units.strip().lower() in LATITUDE_UNITS + LONGITUDE_UNITS:
        roles.append(("units", units, "y" if units.strip().lower() in LATITUDE_UNITS else "x"))
    return roles


def dim_role(dataset: xr.Dataset, dim: str) -> tuple[str | None, str]:
    """The role (``time``, ``y`` or ``x``) a dimension plays, and what says so: its coordinate's
    CF attributes (``axis``, ``standard_name``, latitude/longitude units) or decoded dates, else
    its usual name; ``(None, "")`` when nothing or more than one role is found."""
    roles, reason = set(), ""
    if dim in dataset.variables:
        found = _cf_roles(dataset[dim])
        roles = {role for _, _, role in found}
        reason = ", ".join(f"{attribute} {value}" for attribute, value, _ in found)
        values = np.asarray(dataset[dim].values) if dataset[dim].ndim == 1 else np.empty(0)
        if np.issubdtype(values.dtype, np.datetime64) or _is_cftime(values[:1]):
            roles.add("time")
            reason = reason or "its values are dates"
    if not roles:
        roles = {role for role, usual in ROLE_NAMES.items() if dim.lower() in usual}
        reason = "its name" + ("" if dim in dataset.variables else " (no coordinate variable)")
    return (roles.pop(), reason) if len(roles) == 1 else (None, "")


def guess_dims(dataset: xr.Dataset, variables: list[str]) -> dict:
    """``{time, y, x}`` -> dimension of the first variable, guessed by :func:`dim_role`; only the
    roles that exactly one dimension takes are given (an empty dict when nothing can be guessed)."""
    names = [v for v in variables if v in dataset.data_vars] or list(map(str, dataset.data_vars))
    if not names:
        return {}
    candidates: dict[str, list[str]] = {"time": [], "y": [], "x": []}
    for dim in map(str, dataset[names[0]].dims):
        role, _ = dim_role(dataset, dim)
        if role:
            candidates[role].append(dim)
    return {role: dims[0] for role, dims in candidates.items() if len(dims) == 1}


def _flow(mapping: dict) -> str:
    """A mapping as a YAML flow mapping, as a params entry writes it: ``{time: time, y: lat, x: lon}``."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in mapping.items()) + "}"


def _select_example(dataset: xr.Dataset, dims: list[str]) -> str:
    """``select: {plev: 100000.0}``: the first value of each dimension (its position without coordinate)."""
    values = {}
    for dim in dims:
        if dim in dataset.indexes and len(dataset.indexes[dim]):
            value = dataset.indexes[dim][0]
            values[dim] = value.item() if hasattr(value, "item") else value
        else:
            values[dim] = 0
    return f"select: {_flow(values)}"


def check_dims_cf(dataset: xr.Dataset, dims: dict, variables: list[str], where: str) -> None:
    """``dims`` must not contradict the file's CF attributes: a dimension mapped to ``y`` whose
    coordinate variable says ``axis: X`` or ``standard_name: longitude`` (a transposed field) is an
    error naming the key, the variable and the attribute."""
    for key, dim in dims.items():
        if dim not in dataset.variables:
            continue  # no coordinate variable: nothing to check
        for attribute, value, role in _cf_roles(dataset[dim]):
            if role != key:
                guess = guess_dims(dataset, variables)
                fix = (f"set dims: {_flow(guess)}" if len(guess) == 3 else f"map {dim!r} to dims.{role}")
                raise DataFileError(
                    f"{where}: dims.{key} is {dim!r}, but the file's coordinate variable {dim!r} has {attribute} "
                    f"{value!r}: it is the {ROLE_TEXT[role]} axis, not the {ROLE_TEXT[key]} (the field would be "
                    f"transposed or mislabelled); {fix} in the params entry")


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
            raise DataFileError(f"{where}: variable {name!r} has dims {tuple(map(str, variable.dims))} after select, "
                                f"expected exactly {wanted} (dims.time, dims.y, dims.x)"
                                f"{_dims_hint(dataset, str(name), dims)}")
    return dataset.transpose(*wanted)


def _dims_hint(dataset: xr.Dataset, name: str, dims: dict) -> str:
    """What to write when a variable's dimensions are not ``dims``: the ``dims`` mapping the file's CF
    attributes suggest (when it differs from the entry's), then ``select`` for the other dimensions."""
    have = list(map(str, dataset[name].dims))
    guess = guess_dims(dataset, [name])
    mapping = dict(dims)
    parts = []
    if len(guess) == 3 and guess != dims:
        parts.append(f"the file's CF attributes suggest dims: {_flow(guess)}")
        mapping = guess
    elif not set(dims.values()) <= set(have):
        parts.append(f"set dims (time, y, x) to three of {tuple(have)}")
    extra = [d for d in have if d not in mapping.values()]
    if extra:
        parts.append(f"fix {', '.join(map(repr, extra))} with select, e.g. {_select_example(dataset, extra)}")
    return "; " + "; ".join(parts) if parts else ""


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
                     dims: dict, fill_missing: float | None = None) -> tuple[xr.Dataset, xr.DataArray]:
    """Block means over the observed cells of each block (float64, trimmed); a block without an
    observed cell is never observed and takes the fill. Returns the coarse dataset and mask.

    ``fill_missing`` null: a NaN at an observed cell propagates to its block (ingest then refuses
    it). A number: NaN cells are left out of the block mean as well, and a block whose observed
    cells are all NaN in a frame takes ``fill_missing``."""
    window = {dims["y"]: factor, dims["x"]: factor}
    attrs = {v: dict(dataset[v].attrs) for v in dataset.data_vars}
    count_observed = observed.astype(np.float64).coarsen(window, boundary="trim").reduce(np.sum)
    coarse_observed = count_observed > 0
    if fill_missing is None:
        # np.sum propagates NaN, as the plain coarsen's np.mean does
        total = dataset.astype(np.float64).where(observed, 0.0).coarsen(window, boundary="trim").reduce(np.sum)
        coarse = total / count_observed.where(coarse_observed)
    else:
        coarse = _nan_block_mean(dataset, window, fill_missing, valid=observed)
    for variable, fill in fills.items():
        coarse[variable] = coarse[variable].where(coarse_observed, fill)
        coarse[variable].attrs = attrs[variable]
    coarse.attrs = dict(dataset.attrs)
    return coarse, coarse_observed


def _nan_block_mean(dataset: xr.Dataset, window: dict, fill: float, valid: xr.DataArray | None = None) -> xr.Dataset:
    """Block means over the non-NaN cells (and ``valid`` cells) of each block, float64, trimmed; a block
    without one takes ``fill`` (as the radar readers' downsampling: missing cells do not dilute a block)."""
    data = dataset.astype(np.float64)
    good = data.notnull() if valid is None else data.notnull() & valid
    total = data.where(good, 0.0).coarsen(window, boundary="trim").reduce(np.sum)
    count = good.astype(np.float64).coarsen(window, boundary="trim").reduce(np.sum)
    coarse = (total / count.where(count > 0)).fillna(float(fill))
    for variable in dataset.data_vars:
        coarse[variable].attrs = dict(dataset[variable].attrs)
    coarse.attrs = dict(dataset.attrs)
    return coarse


def count_missing(dataset: xr.Dataset, variables: list[str], dims: dict, factor: int
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The missing-data record of what ``fill_missing`` fills (one pass over the source, chunk by
    chunk): ``(missing_fraction, missing_frequency, counts)``; a cell is missing in a frame when one
    of the variables is NaN there. ``missing_fraction`` (time): the fraction of the frame's cells
    missing; ``missing_frequency`` (y, x) on the output grid: the fraction of frames in which the
    pixel's ``factor x factor`` block held a missing cell; ``counts``: NaN values per variable."""
    import dask

    time_dim, y_dim, x_dim = dims["time"], dims["y"], dims["x"]
    nan = [dataset[v].isnull() for v in variables]
    missing = nan[0]
    for other in nan[1:]:
        missing = missing | other
    per_frame = missing.sum((y_dim, x_dim))
    blocks = missing
    if factor > 1:
        blocks = missing.coarsen({y_dim: factor, x_dim: factor}, boundary="trim").reduce(np.any)
    per_pixel = blocks.sum(time_dim)
    per_frame, per_pixel, *counts = dask.compute(per_frame, per_pixel, *[n.sum() for n in nan])
    cells = dataset.sizes[y_dim] * dataset.sizes[x_dim]
    frames = dataset.sizes[time_dim]
    fraction = np.asarray(per_frame.transpose(time_dim).values, dtype=np.float64) / cells
    frequency = np.asarray(per_pixel.transpose(y_dim, x_dim).values, dtype=np.float64) / frames
    return fraction, frequency, {v: int(c) for v, c in zip(variables, counts)}


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
    check_dims_cf(dataset, dims, variables, where)
    dataset, grid_mapping = _pop_grid_mapping(dataset)
    projection = _projection_attrs(dataset, variables)
    dataset = apply_select(dataset, settings["select"], dims, where)
    source_shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    time_dim = dims["time"]
    calendar = file_calendar(dataset[time_dim])

    if settings["time_range"] is not None:
        start, end = (str(v) for v in settings["time_range"])
        available = dataset.indexes[time_dim]
        try:
            dataset = dataset.sel({time_dim: slice(start, end)})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"gridded config time_range [{start}, {end}]: not dates of the {calendar} calendar "
                             f"({type(exc).__name__}: {exc})") from None
        if dataset.sizes[time_dim] == 0:
            raise DataFileError(f"{where}: time_range [{start}, {end}] selects no frame (the source covers "
                                f"{str(available[0])[:19]} .. {str(available[-1])[:19]})")
    times = np.asarray(dataset.indexes[time_dim])
    segment, gaps = time_segments(times, settings, where=f"{where}: time coordinate {time_dim!r}")
    if gaps:
        warnings.warn(f"gridded source {where}: {describe_gaps(gaps)} in time (nominal step {settings['time_step']}); "
                      "each gap starts a new segment, no window crosses it (nothing is interpolated)",
                      UserWarning, stacklevel=2)

    dataset = apply_crop(dataset, settings["crop"], dims, where)
    cropped_shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    factor = int(settings["coarsen"])
    shape = (cropped_shape[0] // factor, cropped_shape[1] // factor)  # coarsen trims (checked before any pass)
    if shape != (int(config["height"]), int(config["width"])):
        raise ValueError(
            f"gridded: config height {config['height']} and width {config['width']} do not match the grid "
            f"{shape[0]} x {shape[1]} ({dims['y']} x {dims['x']}: {source_shape[0]} x {source_shape[1]} in the "
            f"source, {cropped_shape[0]} x {cropped_shape[1]} after crop, coarsen {factor}); set height: {shape[0]}, "
            f"width: {shape[1]}")
    source_units = [str(dataset[v].attrs.get("units", "unknown")) for v in variables]
    dataset = apply_convert(dataset, settings["convert"])
    observed = fills = missing = None
    fill_missing = settings["fill_missing"]
    if settings["never_observed"] == "mask":
        observed, fills = find_never_observed(dataset, variables, dims, fill_missing, where)
        dataset = fill_never_observed(dataset, observed, fills)
    if fill_missing is not None:
        # what fill_missing fills is recorded (one counting pass), then filled; with coarsen, the block
        # mean leaves the missing cells out and a block without a valid cell takes fill_missing
        missing = count_missing(dataset, variables, dims, factor)
        if factor == 1:
            dataset = dataset.fillna(float(fill_missing))
    if factor > 1 and observed is not None:
        dataset, observed = coarsen_observed(dataset, observed, fills, factor, dims, fill_missing)
    elif factor > 1 and fill_missing is not None:
        dataset = _nan_block_mean(dataset, {dims["y"]: factor, dims["x"]: factor}, fill_missing)
    elif factor > 1:
        dataset = (dataset.astype(np.float64)
                   .coarsen({dims["y"]: factor, dims["x"]: factor}, boundary="trim")
                   .reduce(np.mean))  # NaN propagates (.mean() would skip it and hide holes)
    shape = (dataset.sizes[dims["y"]], dataset.sizes[dims["x"]])
    assert shape == (int(config["height"]), int(config["width"])), (shape, config["height"], config["width"])

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
        "source": str(settings["source"]),  # as written in params (``where`` is absolute): the same bytes everywhere
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
    if settings["step_months"] is not None:
        attrs["time_step_definition"] = (f"{settings['step_months']} calendar month(s): frames in consecutive months "
                                         "(of the dates' year and month; any day within the month) are consecutive")
    if _calendar_family(calendar) != "standard":
        attrs["calendar"] = calendar
    if missing is not None:
        fraction, frequency, counts = missing
        coords["missing_fraction"] = ("time", fraction, dict(MISSING_ATTRS["missing_fraction"]))
        coords["missing_frequency"] = (("y", "x"), frequency, dict(MISSING_ATTRS["missing_frequency"]))
        attrs.update({
            "missing_definition": "NaN in at least one variable after select, time_range, crop and convert"
                                  + (" (at observed pixels; never-observed ones are in observed)"
                                     if observed is not None else "") + "; filled with fill_missing"
                                  + (f"; coarsen {factor}: left out of the block mean, a block without a valid cell "
                                     "takes fill_missing" if factor > 1 else ""),
            "missing_values": "; ".join(f"{v}: {counts[v]}" for v in variables),
            "missing_fraction_mean": float(fraction.mean()),
            "missing_fraction_max": float(fraction.max()),
            "frames_with_missing": int((fraction > 0).sum()),
            "missing_frequency_max": float(frequency.max()),
        })
    if grid_mapping is not None:
        gm_name, gm_value, gm_attrs = grid_mapping
        if gm_name not in RESERVED_NAMES + ("observed", "missing_fraction", "missing_frequency", name):
            coords[gm_name] = ((), gm_value, gm_attrs)
            attrs["grid_mapping"] = gm_name
    for key, value in projection.items():
        attrs.setdefault(key, value)
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
    field = field_array(
        values,
        name=name,
        channels=variables,
        attrs=attrs,
        time=times,
        time_attrs={"long_name": "time", "standard_name": "time"},
        segment=segment,
        coords=coords,
    )
    if _is_cftime(times[:1]):
        # cftime dates: written with their CF calendar (ingest and nuwa.io write the time coordinate's
        # encoding; the calendar cannot be an attribute, xarray writes it)
        field["time"].encoding["calendar"] = calendar
    return field


def _pop_grid_mapping(dataset: xr.Dataset) -> tuple[xr.Dataset, tuple | None]:
    """The dataset without its grid-mapping coordinate (kept by :func:`_subset`), and that coordinate
    as ``(name, value, attributes)`` (None without one)."""
    for name, coordinate in dataset.coords.items():
        if coordinate.ndim == 0 and "grid_mapping_name" in coordinate.attrs:
            value = np.asarray(coordinate.values)
            if not np.issubdtype(value.dtype, np.number):
                value = np.asarray(0, dtype=np.int32)
            return dataset.drop_vars(name), (str(name), value, _scalar_attrs(coordinate.attrs))
    return dataset, None


def _projection_attrs(dataset: xr.Dataset, variables: list[str]) -> dict:
    """Projection descriptions (``crs_wkt``, ``proj4``, ...) of the first variable or, failing that,
    of the file's global attributes, under their own names."""
    found = {}
    for attrs in (dataset[variables[0]].attrs, dataset.attrs):
        for key, value in _scalar_attrs(attrs).items():
            if key.lower() in PROJECTION_ATTRS and isinstance(value, str):
                found.setdefault(key, value)
    return found
