"""radar, radar_knmi, radar_mch, radar_bom: real precipitation radar composites, read with pysteps.

``kind: radar`` reads any gridded composite that a pysteps importer reads (any function
``import_*`` of ``pysteps.io.importers``, plugins included: OPERA/ODIM HDF5, FMI PGM and GeoTIFF,
KNMI HDF5, MeteoSwiss GIF/HDF5/METRANET, BoM Rainfields3, DWD HDF5/RADOLAN, MRMS GRIB, SAF CRRI,
...). ``radar_knmi``, ``radar_mch`` and ``radar_bom`` are presets of it: the same reader with the
importer, its arguments, the file pattern and the time format fixed (table below; each equals a
``kind: radar`` entry with those settings, value for value and attribute for attribute, except
``generator``, ``service`` and ``file_format``). Source of the shipped events: the pysteps example
data (github: pySTEPS/pysteps-data; see ``shared/data/README.md``); any archive of the same
products works (``source`` + ``pattern``; one file per time step, large archives stream).

Keys of an entry (besides the common ones: ``height``, ``width``, ``split``, ...):

* ``importer`` (``radar``: required; a preset: its own, the one value allowed): the name of a
  function in ``pysteps.io.importers``. The schema lists pysteps' importers (read from its source
  and plugin entry points, without importing it); the reader checks the name again against
  pysteps itself, and an unknown one is refused with the list.
* ``importer_kwargs`` (default ``{}``; a preset's are merged over its own): keyword arguments of
  the importer, e.g. ``{qty: RATE}`` (ODIM), ``{gzipped: true}`` (FMI PGM). Only the importer's
  own parameters are accepted, and ``dtype`` (pysteps' post-processing) where it takes
  ``**kwargs``; ``import_odim_hdf5``, ``import_opera_hdf5`` and ``import_dwd_hdf5`` copy extra
  arguments into the metadata they return, so there ``accutime``, ``zr_a``, ``zr_b`` and
  ``institution`` override the importer's (e.g. ``accutime: 5`` for a 5-min rain-rate archive:
  ODIM's default is 15). ``fillna`` is refused (missing pixels are found as the importer's NaN).
  Required parameters (``import_mch_gif``: product, unit, accutime) must be given. Anything else
  is refused naming the key, before any file is read.
* ``source`` (folder), ``pattern`` (glob under it; ``radar``: required), ``timestamp_format``
  (``strptime`` format of the time in the file names; ``radar``: required): see step 1.
* ``quantity`` (``rain_rate`` | ``accumulation`` | ``reflectivity``, default rain_rate),
  ``crop``, ``downsample``, ``missing``, ``time_step_minutes``: see the steps below.

=============  =================================  =================================================
kind           files (default ``pattern``)         reader; format
=============  =================================  =================================================
radar          (``pattern`` and                   ``pysteps.io.importers.<importer>(path,
               ``timestamp_format`` required)      **importer_kwargs)``; whatever it returns as rain
                                                   depth (``unit`` mm), rain rate (mm/h) or
                                                   reflectivity (dBZ, ``transform`` dB), with the
                                                   georeferencing of its metadata (``x1 y1 x2 y2
                                                   xpixelsize ypixelsize yorigin cartesian_unit``,
                                                   m or km; ``projection``, a proj4 string).
                                                   ``import_bom_rf3`` without importer_kwargs: the
                                                   fast read below.
radar_knmi     ``**/RAD_NL25_RAP_5min_*.h5``      ``import_knmi_hdf5`` (``importer_kwargs``
               (``timestamp_format``               ``{qty: ACRR, accutime: 5.0}``): KNMI Netherlands
               ``%Y%m%d%H%M``)                     composite, HDF5, 765 x 700 at 1 km, rain depth
                                                   over 5 min in mm (stored as 0.01 mm integers;
                                                   65535 = no data -> NaN). Polar stereographic.
radar_mch      ``**/AQC*.gif``                     ``import_mch_gif`` (``{product: AQC, unit: mm,
               (``AQC%y%j%H%M``: 2-digit year,     accutime: 5.0}``): MeteoSwiss AQC composite, 8-bit
               day of year, hour, minute; the      GIF, 640 x 710 at 1 km, 5-min depth in mm (code
               letter after it, F or V, and        255 = no data -> NaN). Swiss grid (somerc).
               the ``_00005.801`` tail are
               ignored)
radar_bom      ``**/*.prcp-c10.nc``                ``import_bom_rf3`` (``{}``): BoM Rainfields3 NetCDF
               (``%Y%m%d_%H%M%S``)                 (``precipitation``, int16 x 0.05 mm,
                                                   ``_FillValue`` -> NaN), 512 x 512 at 500 m around
                                                   one radar, depth over the file's accumulation
                                                   period (``valid_time - start_time``: 10 min for
                                                   prcp-c10, 6 min for prcp-cscn). Albers equal area.
=============  =================================  =================================================

For example (the files of ``tests/data/foreign_radar``)::

    fmi:    {kind: radar, importer: import_fmi_pgm, importer_kwargs: {gzipped: true}, source: ...,
             pattern: "*.pgm.gz", timestamp_format: "%Y%m%d%H%M", crop: [384, 640, 192, 448], downsample: 8}
    opera:  {kind: radar, importer: import_odim_hdf5, importer_kwargs: {qty: RATE}, source: ...,
             pattern: "T_PAAH21_C_EUOC_*.hdf", timestamp_format: "%Y%m%d%H%M%S", ...}

The two BoM sample folders are different radars and grids (prcp-c10: station 66 Mt Stapylton,
2020-10-31, 144 files every 10 min; prcp-cscn: station 2 Melbourne, 2018-06-16, 61 files every
6 min): one entry reads one product (``pattern``); mixing them is an error (different grid).
For BoM (``import_bom_rf3`` with no importer_kwargs, preset or ``kind: radar``) the
precipitation variable is read with netCDF4 exactly as ``import_bom_rf3`` reads it
(``variables["precipitation"][:]``, masked -> NaN, float64): the pysteps importer spends 0.2-0.4
s per file in Python-level ``min``/``max`` over the coordinate variables, 50 times the read
itself. The importer is still called on the first file, for the metadata (projection,
accumulation period), and its field must equal the fast read there (checked on every run).

Steps per file (one ``dask.delayed`` task per file; the field is a lazy dask array, one chunk
per frame, so ingest streams it):

1. **Time** from the file *name*: ``timestamp_format`` (a ``strptime`` format: ``%Y %y %m %d
   %j %H %M %S`` and literal text) is turned into a regular expression that must match exactly
   once in the name (not inside a longer run of digits); the time is the end of the
   accumulation interval, UTC (checked on the samples: KNMI ``overview/product_datetime_end``,
   BoM ``valid_time``, which is compared with the name for every BoM file). Files are sorted by
   time; two files with the same time are an error naming both.
2. **Read** with the importer; an unreadable file is a :class:`nuwa.io.DataFileError` naming it
   (and, for ``kind: radar``, the importer call, e.g. a ``qty`` the file does not hold);
   so is a file whose grid (shape, extent, pixel size, projection; BoM: coordinates and station),
   accumulation period or unit differs from the first file's. **Orientation**: rows run from the
   top = north everywhere here; an importer whose metadata says ``yorigin: lower`` (row 0 =
   south) has its rows reversed, recorded as attribute ``yorigin_flipped``. Pixel centres come
   from the metadata: ``x1 + (i + 0.5) xpixelsize``, ``y2 - (j + 0.5) ypixelsize``; where the
   importer's pixel size disagrees with its extent over the pixel count by more than 1% (or is
   missing), the extent's is used and ``pixel_size_note`` says so (MeteoSwiss' ODIM files write
   xscale 1.0, km, where ODIM and pysteps' ODIM importer mean metres). A non-square pixel's y size
   is recorded as ``source_pixel_size_y_m``. Grids in degrees are refused (the coordinates are
   projected metres). ODIM files whose string attributes are variable-length (h5py returns
   ``str``, pysteps 1.21 calls ``.decode()`` on them) are read through a small wrapper of pysteps'
   ODIM ``what``-group helpers (:func:`_pysteps_compat`).
3. **Missing**: a pixel is missing where the importer returns NaN (no measurement: outside the
   radar range, blocked, no data) or, for a depth or rate, a negative value (physically
   impossible; the BoM c10 sample has 17 pixels of raw code -2 = -0.1 mm); a negative dBZ is a
   weak echo, not missing. What counts as missing is the importer's choice: ODIM ``undetect`` is
   0 mm/h with ``import_odim_hdf5`` but NaN with ``import_mch_hdf5`` (recorded either way, see
   below). ``missing: zero`` (the only policy so far, an explicit key so the choice is recorded)
   fills them with the quantity's no-rain value: 0 mm h-1, 0 mm, or the dBZ floor.
4. **Crop** ``[row0, row1, col0, col1]`` (source pixels, rows from the top = north, end
   exclusive; ``null``: the full grid). Out of the grid is a ``ValueError`` naming the grid.
5. **Convert** (``quantity``) with ``pysteps.utils.conversion``, driven by the importer's
   ``unit``, ``transform``, ``accutime`` and Z-R relation (``zr_a``/``zr_b``; where the importer
   gives none, pysteps' Marshall-Palmer default 200/1.6: BoM, ODIM), always through rain rate:
   ``to_rainrate`` (depth x 60 / accumulation minutes; a rate as it is; dBZ: inverse dB transform,
   ``pysteps.utils.transformation.dB_transform``, then R = (Z / zr_a)^(1 / zr_b)), then
   ``rain_rate`` (mm h-1), ``accumulation`` (mm per accumulation period: a depth as the importer
   returns it, else ``to_raindepth``: rate x accumulation minutes / 60) or ``reflectivity`` (dBZ,
   ``to_reflectivity``: KNMI 200/1.6, MeteoSwiss 316/1.5, FMI 223/1.53). pysteps' dB transform
   sets pixels below the rain threshold to ``10 log10(zr_a threshold^zr_b) - 5`` dBZ; the
   importers' threshold is the smallest positive value *in each frame*, which would move the
   floor from frame to frame, so a fixed threshold of 0.1 mm h-1 is used (pysteps' usual
   rain/no-rain threshold): the floor is a constant, recorded as ``reflectivity_floor_dbz`` (KNMI
   and BoM 2.01 dBZ, MeteoSwiss 5.00 dBZ), and is also the fill for missing pixels. For a dBZ
   source the same threshold, ``rain_threshold_dbz`` (its reflectivity: 7.01 dBZ Marshall-Palmer,
   8.18 dBZ FMI), separates rain from no rain (0 mm h-1; e.g. FMI's -32 dBZ "no echo" code), so a
   dBZ source asked for reflectivity keeps its values at and above it (to rounding) and takes
   the floor below. The attribute ``conversion`` says which path was taken.
6. **Downsample** by ``downsample`` (integer block factor; the crop must be a multiple of it):
   each output pixel is the mean, in the output quantity, of the *measured* source pixels of its
   block (missing pixels do not dilute a block that is partly outside radar range); a block
   with no measured pixel takes the fill value. Computed in float64, stored as float32.
7. The output grid must be ``height`` x ``width`` of the params entry (a ``ValueError`` naming
   both keys and the computed shape otherwise).

Time axis: ``time_step_minutes`` (default: the product's accumulation period, 5 for KNMI and
MeteoSwiss, the files' ``valid_time - start_time`` for BoM, the importer's ``accutime`` for any
other) is the nominal step; every step between files must be a multiple of it, and larger steps
are gaps that start a new ``segment`` (:func:`nuwa.datasets.segments_from_time`): the three
MeteoSwiss events are three segments, so no window crosses from one event into the next. Gaps
are recorded (``time_gaps``).

Missing data are recorded, never hidden: coordinate ``missing_fraction`` (time) is the fraction
of the cropped source frame's pixels that were missing before filling; coordinate
``missing_frequency`` (y, x) the fraction of frames in which an output pixel's block held at
least one missing source pixel; attributes give the totals (``missing_fraction_mean``,
``missing_fraction_max``, ``frames_with_missing``, ``missing_fraction_full_grid``: the same over
the uncropped grid, e.g. 0.74 for the KNMI composite, ``negative_pixels``) and the rule
(``missing_definition``). They come from one pass over the files when the field is built (it
also checks every file, so a bad file fails here, naming it, and not halfway through ingest);
the values themselves stay lazy and are read again when ingest streams them.

Coordinates ``y`` and ``x`` are the projected coordinates (metres) of the output pixel centres
(block means of the source pixel centres); ``projection`` holds the proj4 string, ``importer``
the call made on each file, ``institution`` the importer's.

Defaults (``crop: null``, ``downsample: 1``) give the full grid. The params entries crop
256 x 256 source pixels inside radar range where it rains in every split (chosen on the
sample files: the window maximising the smallest rain fraction over the train/val/test blocks,
among windows almost free of missing pixels) and downsample by 8 to 32 x 32:

* KNMI ``[248, 504, 240, 496]``: 256 x 256 km; the full composite is 74% missing (a disc of
  radar coverage in a 765 x 700 grid), the crop 0.5% (its two top corners touch the disc's
  edge);
* MeteoSwiss ``[200, 456, 320, 576]``: 256 x 256 km, rain in all three events; missing only
  in the 2015 event, at most 9 pixels a frame (a few no-data specks);
* BoM prcp-cscn ``[216, 472, 120, 376]``: 128 x 128 km, inside the 128 km range ring, no
  missing pixel. (prcp-c10, 2020-10-31, rains only in its first twelve hours: with contiguous
  splits its validation and test blocks would be dry.)
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import inspect
import io
import math
import os
import sys
import re
import threading
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from nuwa.datasets import describe_gaps, field_array, register_dataset, segments_from_time
from nuwa.errors import DataFileError
from nuwa.globbing import find_paths

if TYPE_CHECKING:
    import xarray as xr

# dask, xarray and pysteps are imported where they are used: importing this module (to list
# the kinds and their schemas) stays light
_FALLBACK_LOCK = threading.Lock()


def _hdf5_lock():
    """The lock xarray takes around HDF5/netCDF4 calls: ingest writes NetCDF while frames are read."""
    try:
        from xarray.backends.locks import HDF5_LOCK
    except ImportError:  # pragma: no cover
        return _FALLBACK_LOCK
    return HDF5_LOCK

GENERIC_KIND = "radar"
QUANTITIES = {
    # quantity: (units, long_name)
    "rain_rate": ("mm h-1", "rain rate"),
    "accumulation": ("mm", "rain accumulation over the product's accumulation period"),
    "reflectivity": ("dBZ", "equivalent radar reflectivity"),
}
MISSING_POLICIES = ("zero",)
REFLECTIVITY_THRESHOLD_MM_H = 0.1  # rain/no-rain threshold of the dB transform (see step 5)
STATS_BATCH = 256  # files per dask.compute in the missing-data pass (bounds its memory)
# what an importer may return (metadata unit, transform): depth, rate, reflectivity in dB
SOURCE_UNITS = {("mm", None): "depth", ("mm/h", None): "rate", ("dBZ", "dB"): "reflectivity"}
MARSHALL_PALMER = (200.0, 1.6)  # pysteps' Z-R default where an importer gives none
# pysteps 1.21: these importers copy extra keyword arguments into the metadata they return
# (``metadata.update(kwargs)``), so importer_kwargs may override these metadata keys there
METADATA_KWARGS_IMPORTERS = ("import_odim_hdf5", "import_opera_hdf5", "import_dwd_hdf5")
METADATA_KWARGS = ("accutime", "zr_a", "zr_b", "institution")
POSTPROCESS_KWARGS = ("dtype",)  # pysteps.decorators.postprocess_import's own (fillna is refused: see _check_importer)
# importers that read no HDF5/netCDF (no need to take xarray's HDF5 lock around them)
_NO_HDF5_LOCK = {"import_mch_gif", "import_fmi_pgm", "import_fmi_geotiff", "import_dwd_radolan",
                 "import_mch_metranet", "import_mrms_grib"}


# -- the importers pysteps offers, listed without importing pysteps (for the schema) -------------

@functools.lru_cache(maxsize=None)
def listed_importers() -> dict[str, tuple[str, ...] | None]:
    """``{name: parameter names}`` of the ``import_*`` functions of ``pysteps.io.importers``.

    Read from pysteps' own source with :mod:`ast` (importing pysteps takes seconds; the schema
    is built whenever params are validated), plus the importer plugins pysteps would discover
    (entry points ``pysteps.plugins.importer(s)``; their parameters are known only once loaded:
    ``None``). The generator checks the name and arguments again against pysteps itself.
    """
    names: dict[str, tuple[str, ...] | None] = {}
    try:
        spec = importlib.util.find_spec("pysteps")
        origin = spec.origin if spec is not None else None
        if origin:
            path = Path(origin).parent / "io" / "importers.py"
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name.startswith("import_"):
                    args = node.args
                    positional = [a.arg for a in args.posonlyargs + args.args][1:]  # the first is the file name
                    names[node.name] = tuple(positional + [a.arg for a in args.kwonlyargs])
        from importlib.metadata import entry_points

        for group in ("pysteps.plugins.importer", "pysteps.plugins.importers"):
            for entry in entry_points(group=group):
                attr = entry.attr or entry.name
                if attr.startswith("import_"):
                    names.setdefault(attr, None)
    except (OSError, SyntaxError, ValueError, ImportError):  # pragma: no cover - pysteps is a dependency
        pass
    return dict(sorted(names.items()))


def _kwargs_schema() -> dict:
    """``importer_kwargs``: a mapping whose keys some pysteps importer takes (each checked per importer later)."""
    listed = listed_importers()
    if not listed or any(params is None for params in listed.values()):  # a plugin: its arguments are unknown here
        return {"type": "object"}
    keys = sorted({key for params in listed.values() for key in params}
                  | set(POSTPROCESS_KWARGS) | set(METADATA_KWARGS))
    return {"type": "object", "additionalProperties": False, "properties": {key: {} for key in keys}}


def _importer_schema(names=None) -> dict:
    names = list(names if names is not None else listed_importers())
    return {"enum": names} if names else {"type": "string", "minLength": 1}


SCHEMA = {  # kind radar; the presets take the same keys (their importer fixed)
    "importer": _importer_schema(),
    "importer_kwargs": _kwargs_schema(),
    "source": {"type": "string", "minLength": 1},
    "pattern": {"type": "string", "minLength": 1},
    "timestamp_format": {"type": "string", "minLength": 2, "pattern": "%"},
    "time_step_minutes": {"type": ["integer", "null"], "minimum": 1},
    "crop": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}, "minItems": 4, "maxItems": 4},
    "downsample": {"type": "integer", "minimum": 1},
    "quantity": {"enum": list(QUANTITIES)},
    "missing": {"enum": list(MISSING_POLICIES)},
}


# -- raw frames ---------------------------------------------------------------------------------

@dataclass
class RawFrame:
    """One file as the importer gives it (NaN = no data), rows north first, and its grid."""

    precip: np.ndarray  # float64 (rows, cols) in the importer's unit (mm, mm/h or dBZ), NaN where no data
    accutime: float  # accumulation period, minutes
    grid_key: tuple  # equal for files on the same grid
    y: np.ndarray  # row centres, projected metres (row 0 = top = north)
    x: np.ndarray  # column centres, projected metres
    info: dict = dataclass_field(default_factory=dict)  # str/float details for the attributes
    valid_time: datetime | None = None  # end of accumulation stored in the file, if any
    unit: str = "mm"  # the importer's metadata["unit"]
    transform: str | None = None  # the importer's metadata["transform"]


def _metres(metadata: dict) -> float:
    unit = str(metadata.get("cartesian_unit", "m"))
    if unit not in ("m", "km"):
        raise ValueError(f"importer grid coordinates are in {unit!r} (cartesian_unit); nuwa needs a projected grid in "
                         "m or km")
    return {"km": 1000.0, "m": 1.0}[unit]


def _pixel_size(value, start: float, end: float, count: int, scale: float, axis: str) -> tuple[float, str]:
    """The importer's pixel size in metres, or the extent over the pixel count where it disagrees (with a note)."""
    from_extent = (end - start) / count
    if value is not None:
        size = float(value) * scale
        if math.isclose(size, from_extent, rel_tol=0.01):
            return size, ""
        note = (f"the importer's {axis}pixelsize {float(value):g} ({'km' if scale == 1000.0 else 'm'}) disagrees with "
                f"the extent it gives ({end - start:.6g} m over {count} pixels): {from_extent:.6g} m, from the extent, "
                "used")
    else:
        note = f"no {axis}pixelsize from the importer: {from_extent:.6g} m, from the extent ({count} pixels), used"
    if not from_extent > 0:
        raise ValueError(f"importer extent {start:g} .. {end:g} m gives no positive pixel size along {axis}")
    return from_extent, note


def _from_pysteps(precip, metadata: dict, extra_info: dict) -> RawFrame:
    """A RawFrame from a pysteps importer's (precip, quality, metadata)."""
    precip = np.asarray(precip, dtype=np.float64)
    if precip.ndim != 2:
        raise ValueError(f"importer returned a {precip.ndim}-d field, expected 2-d")
    unit, transform = metadata.get("unit"), metadata.get("transform")
    if (unit, transform) not in SOURCE_UNITS:
        raise ValueError(f"importer returned unit {unit!r}, transform {transform!r}; nuwa converts depth in mm or rate "
                         "in mm/h (untransformed) and reflectivity in dBZ (transform 'dB')")
    accutime = metadata.get("accutime")
    if accutime is None or not float(accutime) > 0:
        raise ValueError(f"importer metadata gives no accumulation period (accutime {accutime!r})")
    missing = [key for key in ("x1", "x2", "y1", "y2") if metadata.get(key) is None]
    if missing:
        raise ValueError(f"importer metadata has no georeferencing ({', '.join(missing)} missing)")
    rows, cols = precip.shape
    scale = _metres(metadata)
    x1, x2, y1, y2 = (float(metadata[k]) * scale for k in ("x1", "x2", "y1", "y2"))
    xsize, x_note = _pixel_size(metadata.get("xpixelsize"), x1, x2, cols, scale, "x")
    ysize, y_note = _pixel_size(metadata.get("ypixelsize"), y1, y2, rows, scale, "y")
    yorigin = metadata.get("yorigin", "upper")
    if yorigin not in ("upper", "lower"):
        raise ValueError(f"importer metadata yorigin is {yorigin!r} (expected 'upper' or 'lower')")
    if yorigin == "lower":  # row 0 is the south edge: reverse the rows, so that row 0 is north as everywhere here
        precip = np.ascontiguousarray(precip[::-1])
    x = x1 + (np.arange(cols) + 0.5) * xsize
    y = y2 - (np.arange(rows) + 0.5) * ysize
    grid_key = (precip.shape, x1, x2, y1, y2, xsize, ysize, str(metadata.get("projection")), yorigin)
    zr_a, zr_b = (float(metadata.get(key, default)) for key, default in zip(("zr_a", "zr_b"), MARSHALL_PALMER))
    info = {"projection": str(metadata.get("projection")), "institution": str(metadata.get("institution", "")),
            "pixel_size_m": xsize, "zr_a": zr_a, "zr_b": zr_b, **extra_info}
    if ysize != xsize:
        info["source_pixel_size_y_m"] = ysize
    notes = "; ".join(note for note in (x_note, y_note) if note)
    if notes:
        info["pixel_size_note"] = notes
    if yorigin == "lower":
        info["yorigin_flipped"] = "the importer's yorigin is 'lower' (row 0 = south): rows reversed, row 0 is north"
    return RawFrame(precip, float(accutime), grid_key, y, x, info, unit=unit, transform=transform)


def importer_call(importer: str, kwargs: dict) -> str:
    """``pysteps.io.importers.name(key=value, ...)``: what is called on each file, as recorded."""
    return f"pysteps.io.importers.{importer}({', '.join(f'{key}={value!r}' for key, value in kwargs.items())})"


def read_importer(importer: str, kwargs: tuple, path: str) -> RawFrame:
    """One file through ``pysteps.io.importers.<importer>(path, **kwargs)`` (``kwargs``: the items, in order)."""
    _import_pysteps_quietly()  # also in a dask worker process, where read_radar never ran
    from pysteps.io import importers

    function = getattr(importers, importer)
    options = dict(kwargs)
    lock = contextlib.nullcontext() if importer in _NO_HDF5_LOCK else _hdf5_lock()
    with lock:
        precip, _, metadata = function(path, **options)
    return _from_pysteps(precip, metadata, {"importer": importer_call(importer, options)})


def read_bom(path: str) -> RawFrame:
    """The Rainfields3 precipitation variable, read as ``import_bom_rf3`` reads it (see docstring)."""
    import netCDF4

    with _hdf5_lock():
        with netCDF4.Dataset(path) as ds:
            variables = ds.variables
            for name in ("precipitation", "x", "y", "valid_time", "start_time"):
                if name not in variables:
                    raise ValueError(f"no variable {name!r} (has: {', '.join(variables)})")
            var = variables["precipitation"]
            units = getattr(var, "units", None)
            precip = np.ma.filled(np.ma.asarray(var[:]).astype(np.float64), np.nan)
            x = np.asarray(variables["x"][:], dtype=np.float64)
            y = np.asarray(variables["y"][:], dtype=np.float64)
            coord_units = getattr(variables["x"], "units", "m")
            times = {}
            for name in ("valid_time", "start_time"):
                t = variables[name]
                times[name] = netCDF4.num2date(t[:], units=t.units, calendar=getattr(t, "calendar", "standard"),
                                               only_use_cftime_datetimes=False, only_use_python_datetimes=True)
            station = str(ds.getncattr("station_id")) if "station_id" in ds.ncattrs() else ""
            station_name = str(ds.getncattr("station_name")) if "station_name" in ds.ncattrs() else ""
            title = str(ds.getncattr("title")) if "title" in ds.ncattrs() else ""
    if units not in ("kg m-2", "mm"):
        raise ValueError(f"precipitation has units {units!r}, expected a depth (kg m-2 or mm)")
    if precip.shape != (y.size, x.size):
        raise ValueError(f"precipitation has shape {precip.shape}, coordinates give {(y.size, x.size)}")
    scale = 1000.0 if coord_units == "km" else 1.0
    x, y = x * scale, y * scale
    accutime = (times["valid_time"] - times["start_time"]).total_seconds() / 60.0
    grid_key = (precip.shape, x.tobytes(), y.tobytes(), station)
    info = {"station_id": station, "station_name": station_name, "product_title": title,
            "pixel_size_m": float(abs(x[1] - x[0])), "zr_a": 200.0, "zr_b": 1.6,
            "importer": "netCDF4 precipitation variable as in pysteps.io.importers.import_bom_rf3 "
                        "(import_bom_rf3 itself on the first file, for metadata, and checked equal)"}
    return RawFrame(precip, accutime, grid_key, y, x, info, valid_time=times["valid_time"])


def _bom_first_file_check(path: str, raw: RawFrame) -> dict:
    """Call pysteps' importer on the first BoM file: metadata, and the fast read must equal it."""
    from pysteps.io.importers import import_bom_rf3

    with _hdf5_lock():
        precip, _, metadata = import_bom_rf3(path)
    reference = np.asarray(np.ma.getdata(precip), dtype=np.float64)
    if reference.shape != raw.precip.shape or not np.array_equal(reference, raw.precip, equal_nan=True):
        raise RuntimeError(f"{path}: the BoM fast read differs from pysteps.io.importers.import_bom_rf3")
    return {"projection": str(metadata.get("projection")), "institution": str(metadata.get("institution", ""))}


# fast readers of one importer's files, used when importer_kwargs is empty: same values, checked on the first file
FAST_READERS = {"import_bom_rf3": (read_bom, _bom_first_file_check)}


# -- presets: the kinds with a fixed importer and defaults ----------------------------------------

@dataclass(frozen=True)
class Preset:
    kind: str
    service: str
    format: str
    importer: str
    importer_kwargs: tuple  # (key, value) items, in order
    pattern: str
    timestamp_format: str


PRESETS = {
    preset.kind: preset for preset in (
        Preset("radar_knmi", "KNMI (Royal Netherlands Meteorological Institute) radar composite RAD_NL25_RAP_5min",
               "KNMI HDF5", "import_knmi_hdf5", (("qty", "ACRR"), ("accutime", 5.0)),
               "**/RAD_NL25_RAP_5min_*.h5", "%Y%m%d%H%M"),
        Preset("radar_mch", "MeteoSwiss radar composite, product AQC", "MeteoSwiss AQC GIF", "import_mch_gif",
               (("product", "AQC"), ("unit", "mm"), ("accutime", 5.0)), "**/AQC*.gif", "AQC%y%j%H%M"),
        Preset("radar_bom", "Bureau of Meteorology (Australia) Rainfields3 radar accumulation",
               "BoM Rainfields3 NetCDF", "import_bom_rf3", (), "**/*.prcp-c10.nc", "%Y%m%d_%H%M%S"),
    )
}
KINDS = (GENERIC_KIND, *PRESETS)
PRODUCTS = PRESETS  # the name radar_pool and older code used


def schema_for(kind: str) -> dict:
    """The kind's own keys: ``radar``'s; a preset's importer is its own (the one name allowed)."""
    if kind == GENERIC_KIND:
        return dict(SCHEMA)
    return {**SCHEMA, "importer": {"enum": [PRESETS[kind].importer]}}


def defaults_for(kind: str) -> dict:
    common = {"time_step_minutes": None, "crop": None, "downsample": 1, "quantity": "rain_rate", "missing": "zero"}
    if kind == GENERIC_KIND:  # importer, source, pattern and timestamp_format are required
        return {"importer_kwargs": {}, **common}
    preset = PRESETS[kind]
    return {"importer": preset.importer, "importer_kwargs": dict(preset.importer_kwargs), "pattern": preset.pattern,
            "timestamp_format": preset.timestamp_format, **common}


@dataclass(frozen=True)
class Reading:
    """How a kind's entry reads its files: the importer call and the records that name it."""

    importer: str
    kwargs: dict
    reader: Callable[[str], RawFrame]
    first_file_check: Callable[[str, RawFrame], dict] | None
    service: str
    format: str
    call: str  # importer_call(importer, kwargs)


def _check_importer(kind: str, importer, kwargs) -> Callable:
    """The pysteps importer function for ``importer``; unknown names and arguments are refused, named."""
    from pysteps.io import importers

    if not isinstance(importer, str) or not importer:
        raise ValueError(f"{kind} config importer must be the name of a function in pysteps.io.importers, "
                         f"got {importer!r}")
    available = sorted(name for name in dir(importers) if name.startswith("import_")
                       and callable(getattr(importers, name)))
    if importer not in available:
        import pysteps

        raise ValueError(f"{kind} config importer {importer!r} is not an importer of pysteps "
                         f"{getattr(pysteps, '__version__', '')} (available in pysteps.io.importers: "
                         f"{', '.join(available)})")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"{kind} config importer_kwargs must be a mapping of keyword arguments for {importer}, "
                         f"got {kwargs!r}")
    function = getattr(importers, importer)
    parameters = list(inspect.signature(function).parameters.values())[1:]  # the first is the file name
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_more = any(p.kind == p.VAR_KEYWORD for p in parameters)
    allowed = named + (list(POSTPROCESS_KWARGS) if takes_more else []) \
        + (list(METADATA_KWARGS) if importer in METADATA_KWARGS_IMPORTERS else [])
    for key in kwargs:
        if key == "fillna":
            raise ValueError(f"{kind} config importer_kwargs.fillna is not allowed: nuwa finds missing pixels as the "
                             "importer's NaN (the missing key says how they are filled)")
        if key not in allowed:
            raise ValueError(f"{kind} config importer_kwargs.{key}: not an argument of pysteps.io.importers.{importer} "
                             f"(allowed: {', '.join(allowed) if allowed else 'none'})")
    required = [p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                  p.KEYWORD_ONLY)]
    absent = [name for name in required if name not in kwargs]
    if absent:
        raise ValueError(f"{kind} config importer_kwargs must give {', '.join(absent)} "
                         f"(required by pysteps.io.importers.{importer}; given: {sorted(kwargs) or 'none'})")
    return function


def reading_for(kind: str, settings: dict) -> Reading:
    """The importer and reader of an entry (``settings``: the entry with its kind's defaults)."""
    if kind == GENERIC_KIND:
        if not settings.get("importer"):
            raise KeyError(f"{kind} config is missing importer (a function name in pysteps.io.importers, "
                           "e.g. import_odim_hdf5)")
        importer, kwargs = settings["importer"], settings.get("importer_kwargs") or {}
    else:
        preset = PRESETS[kind]
        importer = settings.get("importer", preset.importer)
        if importer != preset.importer:
            raise ValueError(f"{kind} config importer is {importer!r}, but {kind} reads with {preset.importer} "
                             f"(for another importer use kind: {GENERIC_KIND})")
        given = settings.get("importer_kwargs") or {}
        if not isinstance(given, dict):
            raise ValueError(f"{kind} config importer_kwargs must be a mapping, got {given!r}")
        kwargs = {**dict(preset.importer_kwargs), **given}  # the preset's, with the entry's on top
    _check_importer(kind, importer, kwargs)
    kwargs = dict(kwargs)
    call = importer_call(importer, kwargs)
    fast = FAST_READERS.get(importer) if not kwargs else None
    if fast is not None:
        reader, check = fast
    else:
        reader, check = functools.partial(read_importer, importer, tuple(kwargs.items())), None
    if kind == GENERIC_KIND:
        short = importer.removeprefix("import_")
        service, file_format = f"radar composite read with {call}", f"{short} (pysteps importer {importer})"
    else:
        service, file_format = PRESETS[kind].service, PRESETS[kind].format
    return Reading(importer, kwargs, reader, check, service, file_format, call)


# -- timestamps ---------------------------------------------------------------------------------

_DIRECTIVES = {"Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "j": r"\d{3}", "H": r"\d{2}",
               "M": r"\d{2}", "S": r"\d{2}", "%": "%"}


def timestamp_regex(fmt: str) -> re.Pattern:
    """A regular expression for the text a ``strptime`` format matches (fixed-width directives)."""
    parts, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i + 1:i + 2]
            if directive not in _DIRECTIVES:
                raise ValueError(f"timestamp_format {fmt!r}: directive %{directive} not supported "
                                 f"(allowed: {' '.join('%' + d for d in _DIRECTIVES)})")
            parts.append(_DIRECTIVES[directive])
            i += 2
        else:
            parts.append(re.escape(fmt[i]))
            i += 1
    return re.compile(r"(?<![0-9])" + "".join(parts) + r"(?![0-9])")


def parse_timestamp(path: Path, fmt: str, regex: re.Pattern) -> np.datetime64:
    matches = sorted({m.group(0) for m in regex.finditer(path.name)})
    if not matches:
        raise DataFileError(f"{path}: no timestamp matching timestamp_format {fmt!r} in the file name")
    if len(matches) > 1:
        raise DataFileError(f"{path}: file name has several timestamps matching {fmt!r} ({', '.join(matches)})")
    try:
        moment = datetime.strptime(matches[0], fmt)
    except ValueError as exc:
        raise DataFileError(f"{path}: {matches[0]!r} in the file name is not a valid time for {fmt!r} ({exc})") from None
    return np.datetime64(moment, "ns")


# -- the plan: what every frame task does -------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    kind: str
    format: str  # how an unreadable file is described: "not {format} (...)"
    reader: Callable[[str], RawFrame]
    grid_key: tuple
    grid_shape: tuple
    accutime: float
    crop: tuple  # row0, row1, col0, col1
    factor: int
    quantity: str
    zr_a: float
    zr_b: float
    fill: float
    first_file: str
    unit: str = "mm"  # the importer's unit and transform (every file's must match the first's)
    transform: str | None = None

    @property
    def out_shape(self) -> tuple:
        r0, r1, c0, c1 = self.crop
        return (r1 - r0) // self.factor, (c1 - c0) // self.factor

    @property
    def negative_missing(self) -> bool:
        """A negative depth or rate is impossible (missing); a negative dBZ is a weak echo."""
        return SOURCE_UNITS[(self.unit, self.transform)] != "reflectivity"


def rain_threshold_dbz(zr_a: float, zr_b: float) -> float:
    """The reflectivity of the rain/no-rain threshold (0.1 mm h-1) under Z = zr_a R^zr_b, dBZ."""
    return float(10.0 * np.log10(zr_a * REFLECTIVITY_THRESHOLD_MM_H ** zr_b))


def convert(values: np.ndarray, quantity: str, accutime: float, zr_a: float, zr_b: float, unit: str = "mm",
            transform: str | None = None) -> np.ndarray:
    """The importer's values (``unit``, ``transform``; per ``accutime`` minutes) to ``quantity`` with pysteps'
    conversions, through rain rate; NaN stays NaN. dBZ below the 0.1 mm h-1 threshold is no rain."""
    from pysteps.utils.conversion import to_rainrate, to_raindepth, to_reflectivity

    if quantity == "accumulation" and unit == "mm" and transform is None:
        return np.array(values, dtype=np.float64)
    metadata = {"accutime": accutime, "unit": unit, "transform": transform, "threshold": 0.0, "zerovalue": 0.0,
                "zr_a": zr_a, "zr_b": zr_b}
    if transform == "dB":  # inverse dB transform: below the threshold (dBZ) -> Z = 0
        metadata["threshold"] = rain_threshold_dbz(zr_a, zr_b)
    rate, metadata = to_rainrate(np.asarray(values, dtype=np.float64), metadata)
    if quantity == "rain_rate":
        return rate
    if quantity == "accumulation":
        depth, _ = to_raindepth(rate, metadata)
        return depth
    metadata = {**metadata, "threshold": REFLECTIVITY_THRESHOLD_MM_H, "zerovalue": 0.0}
    dbz, _ = to_reflectivity(rate, metadata, zr_a=zr_a, zr_b=zr_b)
    return dbz


def _load(path: str, plan: Plan) -> RawFrame:
    """Read one file; any failure, or a grid or period unlike the first file's, names the file."""
    try:
        raw = plan.reader(path)
    except DataFileError:
        raise
    except Exception as exc:  # the importers raise OSError, KeyError, PIL/HDF5/netCDF errors...
        raise DataFileError(f"{path}: not {plan.format} ({type(exc).__name__}: {exc})") from None
    if raw.grid_key != plan.grid_key:
        shape, first_shape = "x".join(map(str, raw.precip.shape)), "x".join(map(str, plan.grid_shape))
        what = (f"shape {shape} vs {first_shape}" if shape != first_shape else
                f"same shape {shape} but other extent, coordinates, projection or station")
        raise DataFileError(f"{path}: grid differs from the first file {plan.first_file} ({what}): "
                            "one entry reads one product on one grid (set pattern to select it)")
    if raw.accutime != plan.accutime:
        raise DataFileError(f"{path}: accumulation period {raw.accutime:g} min differs from the first file's "
                            f"({plan.accutime:g} min, {plan.first_file})")
    if (raw.unit, raw.transform) != (plan.unit, plan.transform):
        raise DataFileError(f"{path}: the importer returned unit {raw.unit!r}, transform {raw.transform!r}, unlike the "
                            f"first file's {plan.unit!r}, {plan.transform!r} ({plan.first_file})")
    return raw


def process(precip: np.ndarray, plan: Plan):
    """Missing mask, crop, conversion, fill, block mean: ``(frame, n_missing, n_missing_full, block_missing)``."""
    missing_full = (~np.isfinite(precip) | (precip < 0)) if plan.negative_missing else ~np.isfinite(precip)
    r0, r1, c0, c1 = plan.crop
    missing = missing_full[r0:r1, c0:c1]
    depth = np.where(missing, np.nan, precip[r0:r1, c0:c1])
    values = convert(depth, plan.quantity, plan.accutime, plan.zr_a, plan.zr_b, plan.unit, plan.transform)
    valid = ~missing
    h, w = plan.out_shape
    f = plan.factor
    total = np.where(valid, values, 0.0).reshape(h, f, w, f).sum(axis=(1, 3))
    count = valid.reshape(h, f, w, f).sum(axis=(1, 3))
    frame = np.where(count > 0, total / np.maximum(count, 1), plan.fill).astype(np.float32)
    return frame, int(missing.sum()), int(missing_full.sum()), count < f * f


def read_frame(path: str, plan: Plan) -> np.ndarray:
    """The dask task: one processed frame, shape (1, height, width) (channel first)."""
    return process(_load(path, plan).precip, plan)[0][None]


def read_stats(path: str, plan: Plan):
    """The missing-data record of one file; an error is returned, not raised (see ``read_radar``)."""
    try:
        raw = _load(path, plan)
    except DataFileError as exc:
        return exc
    _, n_missing, n_missing_full, block_missing = process(raw.precip, plan)
    negatives = int((raw.precip < 0).sum()) if plan.negative_missing else 0
    return n_missing, n_missing_full, block_missing, negatives, raw.valid_time


# -- the generator ------------------------------------------------------------------------------

def _settings(kind: str, config: dict) -> dict:
    settings = {**defaults_for(kind), **config}
    if not settings.get("source"):
        raise KeyError(f"{kind} config is missing source (the folder holding the radar files)")
    for key, what in (("pattern", "the glob of the radar files under source, e.g. '**/*.h5'"),
                      ("timestamp_format", "the time in the file names, e.g. '%Y%m%d%H%M'")):
        if not settings.get(key):
            raise KeyError(f"{kind} config is missing {key} ({what})")
    if settings["quantity"] not in QUANTITIES:
        raise ValueError(f"{kind} config quantity is {settings['quantity']!r} (allowed: {', '.join(QUANTITIES)})")
    if settings["missing"] not in MISSING_POLICIES:
        raise ValueError(f"{kind} config missing is {settings['missing']!r} (allowed: {', '.join(MISSING_POLICIES)})")
    downsample = settings["downsample"]
    if isinstance(downsample, bool) or not isinstance(downsample, (int, np.integer)) or downsample < 1:
        raise ValueError(f"{kind} config downsample must be an integer >= 1, got {downsample!r}")
    step = settings["time_step_minutes"]
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1):
        raise ValueError(f"{kind} config time_step_minutes must be an integer >= 1 or null, got {step!r}")
    return settings


def find_files(kind: str, folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        raise DataFileError(f"{folder}: {kind} source folder not found")
    # bounded globbing (nuwa.globbing): link loops walked once, each real file once, a cap on matches
    files = [Path(p) for p in find_paths(pattern, root=str(folder))]
    if not files:
        raise DataFileError(f"{folder}: no files match pattern {pattern!r} ({kind})")
    return files


def _check_crop(kind: str, crop, grid_shape: tuple, factor: int, first_file: Path) -> tuple:
    rows, cols = grid_shape
    if crop is None:
        crop = (0, rows, 0, cols)
    if (not isinstance(crop, (list, tuple)) or len(crop) != 4
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in crop)):
        raise ValueError(f"{kind} config crop must be [row0, row1, col0, col1] (integers) or null, got {crop!r}")
    r0, r1, c0, c1 = (int(v) for v in crop)
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
        raise ValueError(f"{kind} config crop {[r0, r1, c0, c1]} is outside the source grid of {rows} x {cols} pixels "
                         f"(rows 0..{rows}, columns 0..{cols}; first file {first_file}); "
                         "need 0 <= row0 < row1 <= rows and 0 <= col0 < col1 <= columns")
    if (r1 - r0) % factor or (c1 - c0) % factor:
        raise ValueError(f"{kind} config crop {[r0, r1, c0, c1]} gives {r1 - r0} x {c1 - c0} pixels, "
                         f"not a multiple of downsample {factor} on both sides")
    return r0, r1, c0, c1


_COMPAT_DONE = False


def _pysteps_compat() -> None:
    """Let pysteps' ODIM readers take ODIM files whose string attributes are variable-length.

    ``import_odim_hdf5`` / ``import_opera_hdf5`` / ``import_mch_hdf5`` (pysteps 1.21) call
    ``.decode()`` on a data group's ``what/quantity``: h5py (>= 3) returns fixed-length strings
    as bytes but variable-length ones as ``str``, so an ODIM file written with variable-length
    strings (MeteoSwiss' do) fails with ``AttributeError: 'str' object has no attribute
    'decode'``. The two helpers that read that group are wrapped to hand pysteps bytes; nothing
    else changes (bytes pass through as before).
    """
    global _COMPAT_DONE
    if _COMPAT_DONE:
        return
    from pysteps.io import importers

    for name in ("_read_opera_hdf5_what_group", "_read_mch_hdf5_what_group"):
        original = getattr(importers, name, None)
        if original is None or getattr(original, "nuwa_bytes_quantity", False):
            continue

        def as_bytes(group, _original=original):
            quantity, *rest = _original(group)
            return (quantity.encode() if isinstance(quantity, str) else quantity, *rest)

        as_bytes.__name__ = as_bytes.__qualname__ = name
        as_bytes.__doc__ = original.__doc__
        as_bytes.nuwa_bytes_quantity = True
        setattr(importers, name, as_bytes)
    _COMPAT_DONE = True


def _import_pysteps_quietly() -> None:
    """pysteps prints where it found its config file on first import; keep logs and CSV clean."""
    if "pysteps" not in sys.modules:
        with contextlib.redirect_stdout(io.StringIO()):
            import pysteps  # noqa: F401
    _pysteps_compat()


_CONVERSIONS = {  # (what the importer returns, quantity): how it is converted
    ("depth", "rain_rate"): "pysteps.utils.conversion.to_rainrate: depth x 60 / accumulation minutes",
    ("depth", "accumulation"): "none: depth in mm per accumulation period, as the importer returns it",
    ("rate", "rain_rate"): "none: rain rate in mm h-1, as the importer returns it",
    ("rate", "accumulation"): "pysteps.utils.conversion.to_raindepth: rate x accumulation minutes / 60",
    ("reflectivity", "rain_rate"): "pysteps.utils.conversion.to_rainrate from the importer's dBZ: Z = 10^(dBZ / 10) "
                                   "(dB_transform inverse; below rain_threshold_dbz, the reflectivity of "
                                   f"{REFLECTIVITY_THRESHOLD_MM_H} mm h-1, no rain), R = (Z / zr_a)^(1 / zr_b)",
    ("reflectivity", "accumulation"): "pysteps.utils.conversion.to_rainrate from the importer's dBZ (Z = 10^(dBZ / "
                                      "10), no rain below rain_threshold_dbz, R = (Z / zr_a)^(1 / zr_b)), then "
                                      "to_raindepth: rate x accumulation minutes / 60",
}
_REFLECTIVITY = ("pysteps.utils.conversion.to_reflectivity: Z = zr_a R^zr_b, dBZ = 10 log10 Z; "
                 f"R < {REFLECTIVITY_THRESHOLD_MM_H} mm h-1 -> floor (pysteps: threshold - 5 dB)")
_MISSING_DEFINITIONS = {
    "depth": "importer NaN (no measurement: outside radar range or no data) or negative depth",
    "rate": "importer NaN (no measurement: outside radar range or no data) or negative rain rate",
    "reflectivity": "importer NaN (no measurement: outside radar range or no data)",
}


def _conversion(source: str, quantity: str) -> str:
    if quantity != "reflectivity":
        return _CONVERSIONS[(source, quantity)]
    if source == "reflectivity":
        return ("the importer's dBZ through rain rate (to_rainrate as for rain_rate, then to_reflectivity): unchanged "
                "(to rounding) at and above rain_threshold_dbz, the floor below; " + _REFLECTIVITY)
    return _REFLECTIVITY


def read_radar(kind: str, config: dict, seed: int) -> xr.DataArray:
    import dask
    import dask.array as da

    _import_pysteps_quietly()
    settings = _settings(kind, config)
    reading = reading_for(kind, settings)  # an unknown importer or argument fails here, before any file is read
    folder = Path(str(settings["source"])).expanduser().resolve()
    pattern, fmt = settings["pattern"], settings["timestamp_format"]
    files = find_files(kind, folder, pattern)
    unreadable = f"a readable {reading.format} file" if kind != GENERIC_KIND else f"a readable file for {reading.call}"

    # 1. times from the names, sorted; repeats name both files
    regex = timestamp_regex(fmt)
    times = np.array([parse_timestamp(path, fmt, regex) for path in files], dtype="datetime64[ns]")
    order = np.lexsort((np.array([str(p) for p in files]), times))
    files, times = [files[i] for i in order], times[order]
    repeats = np.flatnonzero(np.diff(times) == np.timedelta64(0))
    if repeats.size:
        i = int(repeats[0])
        raise DataFileError(f"{files[i]} and {files[i + 1]}: both have time {str(times[i])[:19]} "
                            f"(timestamp_format {fmt!r}); one file per time step")

    # 2. the first file fixes the grid, period, unit and metadata
    first = str(files[0])
    try:
        raw = reading.reader(first)
    except Exception as exc:
        hint = " (check importer and importer_kwargs)" if kind == GENERIC_KIND else ""
        raise DataFileError(f"{first}: not {unreadable} ({type(exc).__name__}: {exc}){hint}") from None
    info = dict(raw.info)
    if reading.first_file_check is not None:
        info.update(reading.first_file_check(first, raw))
    source_kind = SOURCE_UNITS[(raw.unit, raw.transform)]
    grid_shape = raw.precip.shape
    factor = int(settings["downsample"])
    crop = _check_crop(kind, settings["crop"], grid_shape, factor, files[0])
    quantity = settings["quantity"]
    zr_a, zr_b = float(info.pop("zr_a")), float(info.pop("zr_b"))
    fill = 0.0 if quantity != "reflectivity" else float(convert(np.zeros(1), quantity, raw.accutime, zr_a, zr_b)[0])
    plan = Plan(kind, unreadable, reading.reader, raw.grid_key, grid_shape, raw.accutime, crop, factor,
                quantity, zr_a, zr_b, fill, first, raw.unit, raw.transform)
    height, width = plan.out_shape
    for key, actual in (("height", height), ("width", width)):
        if key in config and int(config[key]) != actual:
            r0, r1, c0, c1 = crop
            raise ValueError(f"{kind}: config {key} is {config[key]}, but crop {list(crop)} ({r1 - r0} x {c1 - c0} "
                             f"source pixels) downsampled by {factor} gives height x width = {height} x {width} "
                             f"(set height: {height}, width: {width}, or change crop/downsample)")

    # 3. one pass over every file: checks each and records the missing data
    paths = [str(p) for p in files]
    n_missing = np.zeros(len(paths), dtype=np.int64)
    n_missing_full = np.zeros(len(paths), dtype=np.int64)
    block_missing_count = np.zeros((height, width), dtype=np.int64)
    negatives = 0
    for start in range(0, len(paths), STATS_BATCH):
        batch = paths[start:start + STATS_BATCH]
        results = dask.compute(*[dask.delayed(read_stats, pure=True)(p, plan) for p in batch])
        for error in results:  # the first bad file in time order, whatever thread met it first
            if isinstance(error, DataFileError):
                raise error
        for j, (n, n_full, blocks, neg, valid_time) in enumerate(results):
            i = start + j
            n_missing[i], n_missing_full[i] = n, n_full
            block_missing_count += blocks
            negatives += neg
            if valid_time is not None and np.datetime64(valid_time, "ns") != times[i]:
                raise DataFileError(f"{paths[i]}: valid_time {valid_time} in the file differs from the time "
                                    f"{str(times[i])[:19]} in its name")

    # 4. segments: a gap starts a new one
    step_minutes = int(settings["time_step_minutes"] or round(plan.accutime))
    segment, gaps = segments_from_time(times, np.timedelta64(step_minutes, "m"), where=f"{folder}/{pattern}")

    # 5. the lazy field: one task per file
    frames = [da.from_delayed(dask.delayed(read_frame, pure=True)(p, plan), shape=(1, height, width), dtype=np.float32)
              for p in paths]
    values = da.stack(frames, axis=0)

    r0, r1, c0, c1 = crop
    crop_pixels = (r1 - r0) * (c1 - c0)
    missing_fraction = n_missing / crop_pixels
    missing_frequency = block_missing_count / len(paths)
    y = raw.y[r0:r1].reshape(height, factor).mean(axis=1)
    x = raw.x[c0:c1].reshape(width, factor).mean(axis=1)
    pixel = float(info.pop("pixel_size_m"))
    units, long_name = QUANTITIES[quantity]
    attrs = {
        "units": units,
        "long_name": long_name,
        "generator": kind,
        "service": reading.service,
        "file_format": reading.format,
        **{k: v for k, v in info.items() if isinstance(v, (str, int, float))},
        "source": str(settings["source"]),  # as written in params: the same bytes on every machine
        "pattern": pattern,
        "timestamp_format": fmt,
        "n_files": len(paths),
        "first_file": str(Path(paths[0]).relative_to(folder)),
        "last_file": str(Path(paths[-1]).relative_to(folder)),
        "time_reference": "end of the accumulation interval, UTC, from the file names",
        "first_time": str(times[0])[:19],
        "last_time": str(times[-1])[:19],
        "time_step_minutes": step_minutes,
        "accumulation_minutes": float(plan.accutime),
        "segments": int(segment[-1]) + 1,
        "n_time_gaps": len(gaps),
        "time_gaps": describe_gaps(gaps),
        "source_grid": f"{grid_shape[0]} x {grid_shape[1]}",
        "source_pixel_size_m": pixel,
        "crop": f"[{r0}, {r1}, {c0}, {c1}]" + (" (full grid)" if crop == (0, grid_shape[0], 0, grid_shape[1]) else ""),
        "crop_convention": "[row0, row1, col0, col1] in source pixels, row 0 at the top (north), end exclusive",
        "downsample": factor,
        "downsample_method": "block mean over the measured (non-missing) source pixels of each block, in the output "
                             "quantity, float64; a block with no measured pixel takes the fill value",
        "grid_spacing_m": pixel * factor,
        "quantity": quantity,
        "conversion": _conversion(source_kind, quantity),
        "zr_a": zr_a,
        "zr_b": zr_b,
        "missing": settings["missing"],
        "missing_definition": _MISSING_DEFINITIONS[source_kind],
        "missing_fill_value": float(fill),
        "missing_fraction_mean": float(missing_fraction.mean()),
        "missing_fraction_max": float(missing_fraction.max()),
        "frames_with_missing": int((n_missing > 0).sum()),
        "missing_fraction_full_grid": float(n_missing_full.sum() / (len(paths) * grid_shape[0] * grid_shape[1])),
        "missing_frequency_max": float(missing_frequency.max()),
        "negative_pixels": int(negatives),
        "seed": int(seed),
    }
    if quantity == "reflectivity" or source_kind == "reflectivity":
        attrs["reflectivity_threshold_mm_h"] = REFLECTIVITY_THRESHOLD_MM_H
    if quantity == "reflectivity":
        attrs["reflectivity_floor_dbz"] = float(fill)
    if source_kind == "reflectivity":
        attrs["rain_threshold_dbz"] = rain_threshold_dbz(zr_a, zr_b)
    coords = {
        "y": ("y", y, {"long_name": "projected y of the pixel centre", "standard_name": "projection_y_coordinate",
                       "units": "m"}),
        "x": ("x", x, {"long_name": "projected x of the pixel centre", "standard_name": "projection_x_coordinate",
                       "units": "m"}),
        "missing_fraction": ("time", missing_fraction.astype(np.float64), {
            "long_name": "fraction of the cropped source frame's pixels missing before filling", "units": "1"}),
        "missing_frequency": (("y", "x"), missing_frequency.astype(np.float64), {
            "long_name": "fraction of frames in which the pixel's block held a missing source pixel", "units": "1"}),
    }
    return field_array(
        values,
        name=quantity,
        channels=[quantity],
        attrs=attrs,
        time=times,
        time_attrs={"long_name": "end of the accumulation interval (UTC)", "standard_name": "time"},
        segment=segment,
        coords=coords,
    )


def _register(kind: str) -> None:
    def generate(config: dict, seed: int) -> xr.DataArray:
        return read_radar(kind, config, seed)

    generate.__name__ = f"generate_{kind}"
    what = (f"{PRESETS[kind].service} (kind {GENERIC_KIND} with importer {PRESETS[kind].importer})"
            if kind in PRESETS else "a radar composite read with any pysteps importer")
    generate.__doc__ = f"{what}: dims (time, channel, y, x), float32, lazy (``seed`` unused); see the module docstring."
    register_dataset(kind, config_schema=schema_for(kind), defaults=defaults_for(kind))(generate)


for _kind in KINDS:
    _register(_kind)
