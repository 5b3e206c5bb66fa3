"""`nuwa inspect FILE_OR_GLOB`: what a data file holds, and a ``datasets:`` entry that ingests it.

The core, :func:`inspect_source`, reads the file(s) and returns an :class:`Inspection`: a
description (variables, dimensions, the time axis, the grid, missing values) and a suggested
params entry; :func:`render` turns it into the text ``nuwa inspect`` prints. Nothing is written.

Two families of sources:

* **gridded** (NetCDF, a glob or folder of NetCDF files combined along time, a Zarr store): the
  entry is ``kind: gridded``. ``dims`` is guessed from the CF attributes of the coordinates
  (``axis`` T/Y/X, ``standard_name`` time / latitude / longitude / projection_y_coordinate /
  projection_x_coordinate, ``units`` degrees_north / degrees_east, then the usual names);
  ``time_step`` is the most common spacing of the time axis (calendar months: ``1MS``); a
  non-standard ``calendar`` (360_day, noleap, ...) is named; extra dimensions (a level, an
  ensemble member) are fixed with ``select`` at their first value; a grid larger than 128 cells
  on a side is block-averaged with ``coarsen``; a side that is no multiple of 4 is trimmed with
  ``crop`` (by coordinate labels) so that ``patch_size`` 4 divides it; ``never_observed: mask``
  when some pixel is NaN in every frame; ``fill_missing`` when an observed pixel has NaN;
  ``convert`` for precipitation flux (kg m-2 s-1 -> mm h-1) and temperature in K (-> degC).
* **radar** files read by a pysteps importer (KNMI HDF5, ODIM HDF5, MeteoSwiss GIF, FMI PGM,
  BoM Rainfields3 NetCDF): the entry is ``kind: radar`` with ``importer`` (the
  ``pysteps.io.importers`` function), ``importer_kwargs``, ``source`` (a folder), ``pattern``
  (a glob below it), ``timestamp_format`` (the ``strptime`` format of the time in the file
  names, found by trying the usual ones on every name), ``quantity: rain_rate``, ``crop``
  (``[row0, row1, col0, col1]`` around the pixels the first file measures), ``downsample``
  and ``missing: zero``.

In both, ``input_frames``/``output_frames`` (6 + 6 by default) and ``split`` (0.7 / 0.1 / 0.2 by
default) are chosen so that every split holds at least one window, counted by
:func:`nuwa.windows.window_counts` over the segments the gaps of the time axis make (what ingest
checks). The suggestion is then checked with :func:`nuwa.config.validate_dataset_entry`, exactly
as ``nuwa validate`` checks an entry of params.yaml; the result says whether it passed.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from nuwa.globbing import find_paths

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
RADAR_SUFFIXES = (".h5", ".hdf5", ".hdf", ".gif", ".pgm", ".pgm.gz")
FRAME_CHOICES = ((6, 6), (4, 4), (3, 3), (2, 2), (1, 1))
SPLIT_CHOICES = ((0.7, 0.1, 0.2), (0.6, 0.2, 0.2), (0.5, 0.25, 0.25), (0.4, 0.3, 0.3))
MAX_SIDE = 128  # a larger grid is coarsened (gridded) or downsampled (radar) below this
RADAR_MAX_SIDE = 64
PATCH = 4  # the project's usual patch_size
STANDARD_CALENDARS = ("standard", "gregorian", "proleptic_gregorian")
# units -> (factor, offset, new units): conversions a forecaster nearly always wants
CONVERSIONS = {
    "kg m-2 s-1": (3600.0, 0.0, "mm h-1"),  # precipitation flux: 1 kg m-2 of water = 1 mm
    "K": (1.0, -273.15, "degC"),
}
# strptime formats tried on radar file names, in order (fixed-width directives only)
TIMESTAMP_FORMATS = ("%Y%m%d%H%M%S", "%Y%m%d_%H%M%S", "%Y%m%d%H%M", "%Y%m%d_%H%M", "%Y%m%d-%H%M%S", "%Y%m%d-%H%M",
                     "%y%j%H%M")
# rain rate thresholds (mm h-1) of the shipped radar entries, for CSI
RADAR_CSI = [0.5, 2.0, 5.0]
MAX_LISTED = 8
FILL_LIKE = 9.9e36  # |value| from here: netCDF's default fill value (9.96921e36), not data


@dataclass
class Inspection:
    """What :func:`inspect_source` found: ``sections`` (title, lines) describe the source; ``entry``
    is the suggested ``datasets`` entry under ``name``, ``comments`` a note per key of it;
    ``validation`` is None when the entry passed params validation, else why not (``checked``
    False: it could not be checked, e.g. its kind is not registered in this nuwa)."""

    source: str
    family: str  # "gridded" or "radar"
    format: str
    files: list[Path]
    sections: list[tuple[str, list[str]]]
    name: str
    entry: dict
    comments: dict = field(default_factory=dict)
    validation: str | None = None
    checked: bool = True
    facts: dict = field(default_factory=dict)


class InspectError(ValueError):
    """The source cannot be inspected (nothing matches, unreadable, no time axis...)."""


# -- entry point -------------------------------------------------------------------------------

def inspect_source(source: str, name: str | None = None, params: dict | None = None, scan: bool = True) -> Inspection:
    """Describe ``source`` (a file, a glob, a folder or a Zarr store) and suggest a params entry.

    ``name``: the entry's name (default: from the file names). ``params``: a params file's
    parameters; the name avoids its datasets, and the entry is also validated inside it.
    ``scan``: read every value for the NaN counts and thresholds (default; False: metadata only).
    """
    family, fmt, files = classify(source)
    if family == "radar":
        inspection = _inspect_radar(source, fmt, files, scan)
    else:
        inspection = _inspect_gridded(source, fmt, files, scan)
    taken = set((params or {}).get("datasets", {}))
    inspection.name = unique_name(name or inspection.name, taken)
    _validate(inspection, params)
    return inspection


def classify(source: str) -> tuple[str, str, list[Path]]:
    """(family, format, files) of a source: radar files by suffix and content, else gridded."""
    text = str(source)
    path = Path(text).expanduser()
    if glob.has_magic(text):
        files = [Path(p) for p in find_paths(text)]  # bounded (nuwa.globbing): link loops walked once
        if not files:
            stores = [Path(p) for p in find_paths(text, kind="dir") if _is_zarr(Path(p))]
            if stores:
                return "gridded", "zarr", stores[:1]
            raise InspectError(f"{text}: no file matches the pattern")
    elif _is_zarr(path):
        return "gridded", "zarr", [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InspectError(f"{path}: folder holds no file")
    elif path.is_file():
        files = [path]
    else:
        raise InspectError(f"{path}: not found (nuwa inspect takes a file, a glob of files, a folder or a Zarr store)")
    radar = [p for p in files if _suffix(p) in RADAR_SUFFIXES]
    netcdf = [p for p in files if _suffix(p) in NETCDF_SUFFIXES]
    if radar:
        fmt = _radar_format(radar[0])
        return "radar", fmt, [p for p in radar if _suffix(p) == _suffix(radar[0])]
    if netcdf:
        if _is_bom(netcdf[0]):
            return "radar", "bom", netcdf
        if path.is_dir():  # gridded reads a folder's NetCDF files, not its sub-folders
            netcdf = [p for p in netcdf if p.parent == path]
            if not netcdf:
                raise InspectError(f"{path}: no NetCDF file directly in the folder (gridded reads a folder's "
                                   "*.nc files, not its sub-folders: give a glob such as 'folder/**/*.nc')")
        return "gridded", "netcdf", netcdf
    suffixes = sorted({_suffix(p) or "(none)" for p in files})
    raise InspectError(f"{text}: no file nuwa can read (suffixes found: {', '.join(suffixes[:MAX_LISTED])}; "
                       f"gridded: {', '.join(NETCDF_SUFFIXES)} or a Zarr store; radar: {', '.join(RADAR_SUFFIXES)})")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".pgm.gz" if name.endswith(".pgm.gz") else path.suffix.lower()


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.name.endswith(".zarr") or any(
        (path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray", ".zmetadata")))


def unique_name(text: str, taken: set = frozenset()) -> str:
    """A params name (lower-case letters, digits, underscores, a letter first, <= 48 characters)
    from ``text``, not one of ``taken``."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "data"
    if not name[0].isalpha():
        name = "d_" + name
    if len(name) > 48:  # cut at a word boundary when one is near
        cut = name[:49].rfind("_")
        name = name[:cut] if cut >= 32 else name[:48]
    name = name.rstrip("_")
    base, count = name, 2
    while name in taken:
        suffix = f"_{count}"
        name, count = base[:48 - len(suffix)] + suffix, count + 1
    return name


def _validate(inspection: Inspection, params: dict | None) -> None:
    """Check the entry as ``nuwa validate`` does; with ``params``, also the params file with it added."""
    from nuwa.config import ParamsError, overlay, validate_dataset_entry, validate_params
    from nuwa.datasets import dataset_kinds

    kind = inspection.entry["kind"]
    if kind not in dataset_kinds():
        inspection.checked = False
        inspection.validation = (f"kind {kind!r} is not registered in this nuwa (registered: "
                                 f"{', '.join(dataset_kinds())}): the entry could not be checked")
        return
    try:
        validate_dataset_entry(inspection.name, inspection.entry, source="suggested entry")
        if params is not None:
            validate_params(overlay(params, {"datasets": {inspection.name: inspection.entry}}),
                            source="params file with the suggested entry")
    except ParamsError as exc:
        inspection.validation = str(exc)


# -- choosing frames and split -------------------------------------------------------------------

def choose_windows(segment: np.ndarray) -> tuple[dict, str]:
    """(input_frames, output_frames, window_stride, split) giving every split a window, and a
    note with the frames and windows per split (or why none fits)."""
    from nuwa.windows import SPLITS, split_flags, window_counts

    for inputs, outputs in FRAME_CHOICES:
        for fractions in SPLIT_CHOICES:
            split = dict(zip(SPLITS, fractions))
            flags = split_flags(segment.size, split)
            counts = window_counts(flags, inputs + outputs, 1, segment)
            if all(counts.values()):
                frames = [int((flags == code).sum()) for code in range(3)]
                note = (f"{' / '.join(map(str, frames))} frames, {' / '.join(str(counts[s]) for s in SPLITS)} "
                        "windows (train / val / test)")
                return {"input_frames": inputs, "output_frames": outputs, "window_stride": 1, "split": split}, note
    return ({"input_frames": 1, "output_frames": 1, "window_stride": 1, "split": dict(zip(SPLITS, SPLIT_CHOICES[0]))},
            f"too short: no split of {segment.size} frames gives every split a window of 2 frames")


# -- time axes -----------------------------------------------------------------------------------

def _month_index(moment) -> int:
    return moment.year * 12 + moment.month - 1


def _moments(values: np.ndarray) -> list:
    """Objects with .year, .month, .day, .hour...: pandas Timestamps or cftime datetimes."""
    import pandas as pd

    if np.issubdtype(np.asarray(values).dtype, np.datetime64):
        return list(pd.DatetimeIndex(values))
    return list(values)


def _text(moment) -> str:
    text = str(moment)[:19].replace("T", " ")
    return text[:16] if text.endswith(":00") and len(text) == 19 else text


def frequency_text(delta) -> str:
    """A fixed pandas frequency for a Timedelta: '1h', '6h', '1D', '10min', '30s'."""
    seconds = int(delta.total_seconds())
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(delta)


def analyse_time(values: np.ndarray) -> dict:
    """The time axis: first, last, frames, the step (``time_step`` text and in words), gaps,
    missing frames, segments (a new one after every gap) and whether steps are off the grid."""
    import pandas as pd

    from nuwa.ingest import describe_spacing, duration_words

    moments = _moments(values)
    facts = {"frames": len(moments), "first": _text(moments[0]) if moments else "", "last": _text(moments[-1]) if moments else ""}
    segment = np.zeros(len(moments), dtype=np.int64)
    facts.update(step=None, time_step=None, gaps=[], missing=0, off_grid=0, segment=segment, spacing=None)
    if len(moments) < 2:
        return facts
    diffs = pd.to_timedelta(pd.Series(np.diff(np.asarray(values)))).reset_index(drop=True)
    if (diffs <= pd.Timedelta(0)).any():
        i = int(np.flatnonzero((diffs <= pd.Timedelta(0)).to_numpy())[0])
        raise InspectError(f"time {'repeats' if diffs[i] == pd.Timedelta(0) else 'goes backwards'} at index {i + 1} "
                           f"({_text(moments[i])} then {_text(moments[i + 1])}): nuwa never reorders frames")
    facts["spacing"] = describe_spacing(np.asarray(values))
    months = np.diff([_month_index(m) for m in moments])
    days = (diffs.dt.total_seconds() / 86400).to_numpy()
    per_month = int(np.median(months))
    # calendar months (or years): consecutive frames n months apart, 28 to 31 days a month (360_day: 30)
    monthly = per_month >= 1 and bool(np.all((days[months == per_month] >= 28 * per_month)
                                             & (days[months == per_month] <= 31 * per_month)))
    if monthly:
        years = per_month % 12 == 0
        count = per_month // 12 if years else per_month
        facts.update(step=f"{count} calendar {'year' if years else 'month'}{'s' if count > 1 else ''}",
                     time_step=f"{count}{'YS' if years else 'MS'}")
        facts["off_grid"] = int((months % per_month != 0).sum())
        gap_at = np.flatnonzero(months > per_month)
        facts["missing"] = int((months[gap_at] // per_month - 1).sum())
        facts["month_starts"] = all(m.day == 1 and m.hour == 0 and m.minute == 0 for m in moments)
    else:
        step = diffs.mode().iloc[0]
        facts.update(step=duration_words(step), time_step=frequency_text(step))
        ratio = diffs / step
        facts["off_grid"] = int((ratio != ratio.round()).sum())
        gap_at = np.flatnonzero(diffs.to_numpy() > step.to_timedelta64())
        facts["missing"] = int((ratio.iloc[gap_at].round() - 1).sum())
    facts["gaps"] = [(_text(moments[i]), _text(moments[i + 1])) for i in gap_at]
    segment[gap_at + 1] = 1
    facts["segment"] = np.cumsum(segment)
    return facts


def _gap_text(facts: dict) -> str:
    gaps = facts["gaps"]
    if not gaps:
        return "no gap"
    shown = "; ".join(f"{a} -> {b}" for a, b in gaps[:5]) + (f"; and {len(gaps) - 5} more" if len(gaps) > 5 else "")
    return f"{len(gaps)} gap(s), {facts['missing']} missing frame(s): {shown}"


# -- gridded -------------------------------------------------------------------------------------

def _open(fmt: str, files: list[Path]):
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "zarr":
            return xr.open_zarr(files[0], decode_timedelta=False)
        if len(files) == 1:
            return xr.open_dataset(files[0], chunks={}, decode_timedelta=False)
        try:
            return xr.open_mfdataset([str(p) for p in files], combine="by_coords", chunks={}, data_vars="minimal",
                                     coords="minimal", compat="override", combine_attrs="override",
                                     decode_timedelta=False)
        except Exception as exc:  # noqa: BLE001 -- report, naming the files
            raise InspectError(f"{len(files)} files ({files[0]} ...) cannot be combined along time "
                               f"({type(exc).__name__}: {exc}); inspect them one by one") from None


def _dims_of(dataset) -> tuple[dict, dict]:
    """({'time': dim, 'y': dim, 'x': dim}, {dim: what says so}), by the gridded reader's own rules."""
    from nuwa.datasets.gridded import dim_role

    found, how = {}, {}
    for dim in map(str, dataset.dims):
        role, reason = dim_role(dataset, dim)
        if role and role not in found:
            found[role], how[dim] = dim, reason.split(", ")[0]  # the first evidence is enough for a comment
    return found, how


def _regular_step(values: np.ndarray) -> float | None:
    if values.size < 2 or not np.issubdtype(values.dtype, np.number):
        return None
    diffs = np.diff(values.astype(np.float64))
    return float(diffs[0]) if np.allclose(diffs, diffs[0], rtol=1e-6, atol=1e-9) else None


def _number(value) -> str:
    return f"{value:.6g}" if isinstance(value, (float, np.floating)) else str(value)


def _attrs_text(attrs: dict, keys=("units", "long_name", "standard_name")) -> str:
    return ", ".join(f"{k} {attrs[k]!s}" for k in keys if k in attrs)


def _grid_mapping(dataset, variables: list[str]) -> tuple[str | None, dict]:
    for name in variables:
        mapping = dataset[name].attrs.get("grid_mapping") or dataset[name].encoding.get("grid_mapping")
        if mapping:
            mapping = str(mapping).split(":")[0].split()[0]
            attrs = dict(dataset[mapping].attrs) if mapping in dataset.variables else {}
            return mapping, attrs
    return None, {}


def _trim(dataset, dim: str, size: int, factor: int) -> tuple[int, list | None]:
    """(cells kept after coarsen by ``factor``, crop pair) so that ``PATCH`` divides the side:
    the first source cells, by coordinate label; no crop when already a multiple or no labels."""
    out = size // factor
    keep = out - out % PATCH
    if keep == out or keep == 0 or dim not in dataset.indexes or keep < 0.75 * out:
        return out, None
    values = np.asarray(dataset.indexes[dim])
    if not np.issubdtype(values.dtype, np.number):
        return out, None
    return keep, [values[0].item(), values[keep * factor - 1].item()]


def _inspect_gridded(source: str, fmt: str, files: list[Path], scan: bool) -> Inspection:
    import dask

    dataset = _open(fmt, files)
    dims, how = _dims_of(dataset)
    missing = [role for role in ("time", "y", "x") if role not in dims]
    if missing:
        raise InspectError(f"{source}: no {' and no '.join(missing)} dimension found (dimensions: "
                           f"{', '.join(f'{d} {n}' for d, n in dataset.sizes.items())}; looked for CF axis T/Y/X, "
                           "standard_name time/latitude/longitude/projection_*_coordinate and the usual names)")
    time_dim, y_dim, x_dim = dims["time"], dims["y"], dims["x"]
    wanted = {time_dim, y_dim, x_dim}
    candidates = [str(v) for v, var in dataset.data_vars.items()
                  if wanted <= set(var.dims) and np.issubdtype(var.dtype, np.number)]
    if not candidates:
        raise InspectError(f"{source}: no numeric variable with dimensions {time_dim}, {y_dim} and {x_dim} "
                           f"(variables: {', '.join(f'{v} {tuple(dataset[v].dims)}' for v in dataset.data_vars)})")
    extra = [d for d in dataset[candidates[0]].dims if d not in wanted]
    variables = [v for v in candidates if set(dataset[v].dims) == set(dataset[candidates[0]].dims)]
    select = {}
    for dim in extra:
        select[str(dim)] = dataset[dim].values[0].item() if dim in dataset.coords else 0
    selected = dataset[variables].isel({d: 0 for d in extra}) if extra else dataset[variables]

    time_values = np.asarray(dataset.indexes[time_dim]) if time_dim in dataset.indexes else np.asarray(dataset[time_dim])
    if not (np.issubdtype(time_values.dtype, np.datetime64) or time_values.dtype == object):
        raise InspectError(f"{source}: time coordinate {time_dim!r} does not decode to dates (dtype "
                           f"{time_values.dtype}, units {dataset[time_dim].attrs.get('units')!r}): gridded needs "
                           "CF units such as 'hours since 1900-01-01'")
    time = analyse_time(time_values)
    calendar = str(dataset[time_dim].encoding.get("calendar") or dataset[time_dim].attrs.get("calendar") or "standard")

    # the grid: coarsen a large one, trim a side to a multiple of the patch
    ny, nx = dataset.sizes[y_dim], dataset.sizes[x_dim]
    factor = 1
    while max(ny // factor, nx // factor) > MAX_SIDE:
        factor += 1
    height, crop_y = _trim(dataset, y_dim, ny, factor)
    width, crop_x = _trim(dataset, x_dim, nx, factor)
    patch = next(p for p in (PATCH, 2, 1) if height % p == 0 and width % p == 0)

    # values: NaN per variable, per pixel and per frame; thresholds from sampled frames
    stats = {}
    if scan:
        lazy = []
        sample = np.unique(np.linspace(0, selected.sizes[time_dim] - 1, min(32, selected.sizes[time_dim])).astype(int))
        for name in variables:
            values = selected[name].transpose(time_dim, y_dim, x_dim)
            fill_like = abs(values) >= FILL_LIKE  # netCDF's default fill without a _FillValue: gridded reads NaN
            values = values.where(~fill_like)
            nan = values.isnull()
            lazy.append((nan.sum(), nan.sum(time_dim), nan.all((y_dim, x_dim)).sum(),
                         values.isel({time_dim: sample}), fill_like.sum()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (computed,) = dask.compute(lazy)
        frames = selected.sizes[time_dim]
        for name, (total, per_pixel, empty_frames, sampled, fill_like) in zip(variables, computed):
            per_pixel = np.asarray(per_pixel.values)
            finite = np.asarray(sampled.values, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            stats[name] = {"nan": int(total), "size": int(frames * ny * nx), "never": per_pixel == frames,
                           "partly": int(((per_pixel > 0) & (per_pixel < frames)).sum()),
                           "empty_frames": int(empty_frames), "fill_like": int(fill_like),
                           "quantiles": np.quantile(finite, (0.9, 0.99)) if finite.size else None}
        nevers = [stats[v]["never"] for v in variables]
        if any(not np.array_equal(nevers[0], other) for other in nevers[1:]):
            variables = variables[:1]  # never_observed: mask needs shared never-observed pixels

    # description
    sections = []
    attrs = dataset.attrs
    head = [f"{source}: " + ("Zarr store" if fmt == "zarr" else f"NetCDF, {len(files)} file(s)")
            + (f" ({files[0].name} .. {files[-1].name})" if len(files) > 1 else "")]
    for key in ("Conventions", "title", "institution", "source"):
        if key in attrs:
            head.append(f"{key}: {str(attrs[key])[:100]}")
    sections.append(("source", head))
    sections.append(("dimensions", [", ".join(f"{d} {n}" for d, n in dataset.sizes.items())]))
    lines = []
    for name, var in dataset.data_vars.items():
        dtype = var.encoding.get("dtype", var.dtype)
        packed = " (packed: scale_factor)" if "scale_factor" in var.encoding else ""
        line = (f"{name}  {tuple(map(str, var.dims))}  {' x '.join(map(str, var.shape))}  {dtype}{packed}"
                + (f"  {_attrs_text(var.attrs)}" if _attrs_text(var.attrs) else ""))
        if name in stats:
            s = stats[name]
            line += (f"; NaN {100 * s['nan'] / max(s['size'], 1):.1f} % (never observed: {int(s['never'].sum())} of "
                     f"{ny * nx} pixels; partly missing: {s['partly']} pixels; all-NaN frames: {s['empty_frames']})")
            if s["fill_like"]:
                line += (f"; {s['fill_like']} of the NaN are values of magnitude >= {FILL_LIKE:g} (netCDF's default "
                         "fill, 9.96921e36, with no _FillValue attribute: missing data, read as NaN)")
        lines.append(line)
    sections.append(("variables", lines))
    lines = []
    for name, var in dataset.coords.items():
        role = next((r for r, d in dims.items() if d == name), None)
        cf = ", ".join(f"{k} {var.attrs[k]}" for k in ("axis", "standard_name", "units") if k in var.attrs)
        span = ""
        if var.ndim == 1 and var.size:
            values = np.asarray(var.values)
            if role == "time":
                span = f"  {time['first']} .. {time['last']}"
            else:
                step = _regular_step(values)
                span = f"  {_number(values[0])} .. {_number(values[-1])}" + (
                    f", step {_number(step)}" if step is not None else ", irregular" if values.size > 1 else "")
        lines.append(f"{name}  {tuple(map(str, var.dims))}" + (f"  {cf}" if cf else "  (no CF axis/standard_name)")
                     + (f"  -> dims.{role}" if role else "") + span)
    sections.append(("coordinates", lines))
    time_line = (f"{time_dim}: {time['frames']} frames, {time['first']} .. {time['last']}, step "
                 f"{time['step'] or 'unknown (one frame)'}" + (f" (time_step {time['time_step']})" if time["time_step"] else "")
                 + f", calendar {calendar}; {_gap_text(time)}")
    if time["off_grid"]:
        time_line += f"; {time['off_grid']} step(s) not a multiple of the step (gridded refuses those)"
    sections.append(("time axis", [time_line]))
    mapping, mapping_attrs = _grid_mapping(dataset, variables)
    geographic = all(str(dataset[d].attrs.get("units", "")).lower().startswith("degree")
                     for d in (y_dim, x_dim) if d in dataset.coords)
    steps = {d: _regular_step(np.asarray(dataset[d].values)) if d in dataset.coords else None for d in (y_dim, x_dim)}
    grid = [f"{ny} x {nx} ({y_dim} x {x_dim}), "
            + ("latitude/longitude" if geographic and not mapping else "projected" if mapping else "unknown projection")
            + ", spacing " + " x ".join(_number(abs(s)) if s is not None else "irregular" for s in steps.values())
            + (" degrees" if geographic else "")]
    if mapping:
        grid.append(f"grid_mapping {mapping}: " + ", ".join(f"{k}={v}" for k, v in mapping_attrs.items()))
    else:
        grid.append("no grid_mapping attribute")
    sections.append(("grid", grid))

    # the entry
    comments = {}
    entry = {"kind": "gridded", "source": str(source), "variables": variables,
             "dims": {"time": time_dim, "y": y_dim, "x": x_dim}}
    comments["variables"] = "one channel each" + (f" ({len(candidates)} candidates: {', '.join(candidates)})"
                                                  if len(candidates) > len(variables) else "") + (
        "" if scan else "; --no-scan: NaN not counted (ingest refuses NaN unless never_observed or fill_missing)")
    comments["dims"] = "from " + "; ".join(f"{d}: {how.get(d, '?')}" for d in (time_dim, y_dim, x_dim))
    if select:
        entry["select"] = select
        comments["select"] = "fixes the other dimension(s) at their first value: choose yours"
    if time["time_step"]:
        entry["time_step"] = time["time_step"]
        comments["time_step"] = (f"{time['frames']} frames {time['first']} .. {time['last']}, {_gap_text(time).split(':')[0]}"
                                 + ("; times are not month starts" if time.get("month_starts") is False else ""))
    else:
        entry["time_step"] = "1D"
        comments["time_step"] = "one frame: no spacing to measure, set yours"
    if calendar.lower() not in STANDARD_CALENDARS:
        entry["calendar"] = calendar
        comments["calendar"] = "the time axis' calendar"
    crop = {k: v for k, v in (("y", crop_y), ("x", crop_x)) if v is not None}
    if crop:
        entry["crop"] = crop
        comments["crop"] = f"coordinate labels: trims the grid so that patch_size {patch} divides it"
    if factor > 1:
        entry["coarsen"] = factor
        comments["coarsen"] = f"block mean {factor} x {factor}: {ny} x {nx} -> {ny // factor} x {nx // factor}"
    units = {v: str(dataset[v].attrs.get("units", "")) for v in variables}
    convert = {v: CONVERSIONS[u] for v, u in units.items() if u in CONVERSIONS}
    if convert:
        entry["convert"] = {v: ({"factor": f} if f != 1 else {}) | ({"offset": o} if o else {}) | {"units": u}
                            for v, (f, o, u) in convert.items()}
        comments["convert"] = "; ".join(f"{v}: {units[v]} -> {u}" for v, (f, o, u) in convert.items())
    if stats:
        never = stats[variables[0]]["never"]
        if never.any() and not never.all():
            entry["never_observed"] = "mask"
            comments["never_observed"] = (f"{int(never.sum())} of {never.size} pixels ({100 * never.mean():.0f} %) NaN in "
                                          "every frame: left out of losses and metrics")
        partly = sum(stats[v]["partly"] for v in variables) + (sum(stats[v]["nan"] for v in variables) if never.all() else 0)
        if partly:
            entry["fill_missing"] = 0.0
            comments["fill_missing"] = (f"{partly} pixel(s) NaN in some frames only: filled with this value "
                                        "(in the converted units): choose yours")
    entry["height"], entry["width"] = height, width
    comments["height"] = f"{y_dim} cells after crop/coarsen" if (crop or factor > 1) else f"{y_dim} cells"
    comments["width"] = f"{x_dim} cells after crop/coarsen" if (crop or factor > 1) else f"{x_dim} cells"
    windows, note = choose_windows(time["segment"])
    entry.update({k: windows[k] for k in ("input_frames", "output_frames", "window_stride")})
    entry["patch_size"] = patch
    entry["split"] = windows["split"]
    comments["split"] = note
    thresholds = []
    if stats and stats[variables[0]]["quantiles"] is not None:
        factor_0, offset_0, _ = convert.get(variables[0], (1.0, 0.0, None))
        thresholds = sorted({float(f"{q * factor_0 + offset_0:.2g}") for q in stats[variables[0]]["quantiles"]})
        comments["csi_thresholds"] = (f"the 90th and 99th percentiles of {variables[0]} (sampled frames"
                                      + (", converted" if variables[0] in convert else "") + "): events scored by CSI")
    else:
        comments["csi_thresholds"] = "event thresholds in the data's units, scored by CSI (none: CSI left out)"
    entry["csi_thresholds"] = thresholds
    entry["seed"] = 0
    stem = files[0].stem if len(files) == 1 or fmt == "zarr" else (os.path.commonprefix([p.stem for p in files])
                                                                    or files[0].parent.name)
    return Inspection(source=str(source), family="gridded", format=fmt, files=files, sections=sections,
                      name=stem, entry=entry, comments=comments,
                      facts={"dims": dims, "time": {k: v for k, v in time.items() if k != "segment"},
                             "calendar": calendar, "variables": variables, "grid": (ny, nx),
                             "nan_fraction": {v: s["nan"] / max(s["size"], 1) for v, s in stats.items()}})


# -- radar ---------------------------------------------------------------------------------------

def _radar_format(path: Path) -> str:
    suffix = _suffix(path)
    if suffix == ".gif":
        return "mch_gif"
    if suffix in (".pgm", ".pgm.gz"):
        return "fmi_pgm"
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            conventions = handle.attrs.get("Conventions", b"")
            conventions = conventions.decode() if isinstance(conventions, bytes) else str(conventions)
            if conventions.startswith("ODIM_H5"):
                return "odim_hdf5"
            if "overview" in handle and "image1" in handle:
                return "knmi_hdf5"
    except OSError as exc:
        raise InspectError(f"{path}: not a readable HDF5 file ({exc})") from None
    raise InspectError(f"{path}: an HDF5 file of no known radar layout (neither ODIM_H5 nor KNMI's overview/image1)")


def _is_bom(path: Path) -> bool:
    try:
        import netCDF4

        with netCDF4.Dataset(path) as handle:
            return {"precipitation", "valid_time", "start_time"} <= set(handle.variables)
    except (OSError, ImportError):
        return False


def _knmi_kwargs(path: Path) -> tuple[dict, str]:
    import h5py

    with h5py.File(path, "r") as handle:
        parameter = handle["image1"].attrs.get("image_geo_parameter", b"")
        parameter = parameter.decode() if isinstance(parameter, bytes) else str(parameter)
        times = [handle["overview"].attrs.get(k) for k in ("product_datetime_start", "product_datetime_end")]
    qty = "DBZH" if "REFLECTIVITY" in parameter.upper() else "ACRR"
    accutime = 5.0
    try:
        start, end = (datetime.strptime(np.asarray(t).ravel()[0].decode()[:20], "%d-%b-%Y;%H:%M:%S") for t in times)
        accutime = (end - start).total_seconds() / 60 or 5.0
    except (TypeError, ValueError, AttributeError, IndexError):
        pass
    return {"qty": qty, "accutime": accutime}, f"image_geo_parameter {parameter}"


def _odim_kwargs(path: Path) -> tuple[dict, str]:
    import h5py

    quantities = []
    with h5py.File(path, "r") as handle:
        def visit(name, obj):
            if name.endswith("what") and "quantity" in obj.attrs:
                value = obj.attrs["quantity"]
                quantities.append(value.decode() if isinstance(value, bytes) else str(value))
        handle.visititems(visit)
    qty = next((q for q in ("RATE", "ACRR", "DBZH") if q in quantities), quantities[0] if quantities else "RATE")
    return {"qty": qty}, f"ODIM quantities {', '.join(sorted(set(quantities))) or 'none'}"


RADAR_IMPORTERS = {
    "knmi_hdf5": ("import_knmi_hdf5", "KNMI HDF5 composite"),
    "odim_hdf5": ("import_odim_hdf5", "ODIM HDF5 (OPERA) composite"),
    "mch_gif": ("import_mch_gif", "MeteoSwiss GIF composite"),
    "fmi_pgm": ("import_fmi_pgm", "FMI PGM composite"),
    "bom": ("import_bom_rf3", "BoM Rainfields3 NetCDF"),
}


def importer_call(fmt: str, path: Path) -> tuple[str, dict, str]:
    """(pysteps.io.importers function name, its keyword arguments, what they were read from)."""
    name = RADAR_IMPORTERS[fmt][0]
    if fmt == "knmi_hdf5":
        kwargs, why = _knmi_kwargs(path)
    elif fmt == "odim_hdf5":
        kwargs, why = _odim_kwargs(path)
    elif fmt == "mch_gif":
        product = re.match(r"[A-Za-z]{3}", path.name)
        minutes = re.search(r"_(\d{5})\.", path.name)
        kwargs = {"product": product.group(0).upper() if product else "AQC", "unit": "mm",
                  "accutime": float(int(minutes.group(1))) if minutes else 5.0}
        why = "the file name (product letters, _NNNNN accumulation minutes)"
    elif fmt == "fmi_pgm":
        kwargs, why = ({"gzipped": True} if path.name.lower().endswith(".gz") else {}), "the file suffix"
    else:
        kwargs, why = {}, "the precipitation, valid_time and start_time variables"
    return name, kwargs, why


def guess_timestamp_format(files: list[Path]) -> tuple[str, list[np.datetime64], str]:
    """(format, times, the matched text of the first name) for the first format of
    :data:`TIMESTAMP_FORMATS` (a MeteoSwiss name: with its product letters) that matches
    exactly once in every name and gives distinct times."""
    from nuwa.datasets.radar import timestamp_regex

    prefix = re.match(r"[A-Za-z]{3}", files[0].name)
    formats = ((f"{prefix.group(0)}%y%j%H%M",) if prefix and files[0].name.lower().endswith(".gif") else ()) \
        + TIMESTAMP_FORMATS
    for fmt in formats:
        regex = timestamp_regex(fmt)
        times, first = [], None
        for path in files:
            matches = sorted({m.group(0) for m in regex.finditer(path.name)})
            if len(matches) != 1:
                break
            try:
                times.append(np.datetime64(datetime.strptime(matches[0], fmt), "ns"))
            except ValueError:
                break
            first = first or matches[0]
        else:
            if len(set(times)) == len(times):
                return fmt, times, first
    raise InspectError(f"{files[0]}: no timestamp format found in the file names (tried "
                       f"{', '.join(formats)}); radar files need their time in the name")


def _product_key(path: Path) -> tuple[str, str]:
    """(letters before the first digit, extensions after the first dot): files of one product share it."""
    prefix = re.match(r"[^0-9]*", path.name).group(0)
    return prefix.split(".")[0], "".join(path.suffixes[-2:]) if path.name.count(".") > 1 else path.suffix


def _source_stem(source: str) -> str:
    """The last folder or file name of ``source`` before any glob character."""
    parts = [part for part in Path(str(source)).expanduser().parts if not glob.has_magic(part)]
    names = [part for part in parts if part not in ("..", ".", "/", "~")]
    return Path(names[-1]).stem if names else "data"


def _measured_box(valid: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if not rows.size:
        return 0, valid.shape[0], 0, valid.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _centred(low: int, high: int, size: int, limit: int) -> tuple[int, int]:
    """[a, b) of ``size`` cells centred on [low, high), inside [0, limit)."""
    start = max(0, min(limit - size, (low + high - size) // 2))
    return start, start + size


def _inspect_radar(source: str, fmt: str, files: list[Path], scan: bool) -> Inspection:
    import contextlib
    import io

    import pandas as pd

    groups = {}
    for path in files:  # one product per entry: files grouped by name prefix and extensions
        groups.setdefault(_product_key(path), []).append(path)
    files = max(groups.values(), key=len)
    others = [f"{len(group)} file(s) like {group[0].name}" for group in groups.values() if group is not files]
    time_format, times, _ = guess_timestamp_format(files)
    order = np.argsort(np.asarray(times))
    files = [files[i] for i in order]
    times = np.asarray(times)[order]
    first = files[0]
    _, _, matched = guess_timestamp_format([first])
    importer, kwargs, why = importer_call(fmt, first)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pysteps.io.importers as importers

        precip, _, metadata = getattr(importers, importer)(str(first), **kwargs)
    precip = np.ma.filled(np.ma.asarray(precip).astype(np.float64), np.nan)
    rows, cols = precip.shape
    sample = [first] + ([files[len(files) // 2], files[-1]] if scan and len(files) > 2 else [])
    valid = np.isfinite(precip)
    if scan:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for path in sample[1:]:
                other = np.ma.filled(np.ma.asarray(getattr(importers, importer)(str(path), **kwargs)[0])
                                     .astype(np.float64), np.nan)
                if other.shape == precip.shape:
                    valid |= np.isfinite(other)
    time = analyse_time(times)
    pixel_m = float(metadata.get("xpixelsize", 0)) * (1000.0 if metadata.get("cartesian_unit") == "km" else 1.0)

    # crop around the measured pixels, downsampled below RADAR_MAX_SIDE, patch 4 dividing the result
    r0, r1, c0, c1 = _measured_box(valid)
    factor = 1
    while max(r1 - r0, c1 - c0) / factor > RADAR_MAX_SIDE:
        factor *= 2
    block = factor * PATCH
    height = max(1, (r1 - r0) // block) * PATCH
    width = max(1, (c1 - c0) // block) * PATCH
    while height * factor > rows or width * factor > cols:
        factor //= 2 if factor > 1 else 1
        height, width = min(height, rows // factor // PATCH * PATCH), min(width, cols // factor // PATCH * PATCH)
    crop_rows = _centred(r0, r1, height * factor, rows)
    crop_cols = _centred(c0, c1, width * factor, cols)
    crop = [crop_rows[0], crop_rows[1], crop_cols[0], crop_cols[1]]
    inside = valid[crop[0]:crop[1], crop[2]:crop[3]]

    folder = Path(source).expanduser()
    if glob.has_magic(str(source)) or folder.is_file():
        folder = Path(os.path.commonpath([str(p.parent) for p in files]))
    if fmt == "mch_gif":  # the letter after the time (F, V) and the tail vary within one product
        name_pattern = f"{kwargs['product']}*{first.suffix}"
    else:
        name_pattern = first.name.replace(matched, "*", 1)
        star = name_pattern.index("*")
        dot = name_pattern.find(".", star)
        name_pattern = name_pattern[:star + 1] + (name_pattern[dot:] if dot >= 0 else "")
    pattern = f"**/{name_pattern}"

    sections = [
        ("source", [f"{source}: {RADAR_IMPORTERS[fmt][1]}, {len(files)} file(s) under {folder} ({first.name} .. "
                    f"{files[-1].name})",
                    f"read with pysteps.io.importers.{importer}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                    f"(arguments from {why})"]),
        *([("other files (another product or radar: inspect them with their own glob)", others)] if others else []),
        ("field", [f"{rows} x {cols} pixels, {metadata.get('unit')} over {metadata.get('accutime')} min "
                   f"(transform {metadata.get('transform')}), institution {metadata.get('institution', '?')}",
                   f"NaN (no measurement) in the first file: {100 * np.mean(~np.isfinite(precip)):.1f} %; "
                   f"never measured in {len(sample)} sampled file(s): {100 * np.mean(~valid):.1f} %, "
                   f"measured pixels in rows {r0}..{r1 - 1}, columns {c0}..{c1 - 1}"]),
        ("time axis", [f"from the file names ({time_format!r}): {time['frames']} frames, {time['first']} .. {time['last']}, "
                       f"step {time['step']}; {_gap_text(time)}"]),
        ("grid", [f"projection {metadata.get('projection')}",
                  f"pixel {pixel_m:g} m, x {metadata.get('x1')} .. {metadata.get('x2')}, y {metadata.get('y1')} .. "
                  f"{metadata.get('y2')} ({metadata.get('cartesian_unit', 'm')}), origin {metadata.get('yorigin')}"]),
    ]
    comments = {}
    entry = {"kind": "radar", "importer": importer, "importer_kwargs": kwargs, "source": str(folder),
             "pattern": pattern, "timestamp_format": time_format}
    comments["importer"] = f"pysteps.io.importers.{importer}: {RADAR_IMPORTERS[fmt][1]}"
    comments["pattern"] = f"{len(files)} files below source"
    comments["timestamp_format"] = f"{matched!r} in {first.name}"
    entry.update(quantity="rain_rate", crop=crop, downsample=factor, missing="zero")
    comments["quantity"] = "mm h-1 (or accumulation, mm; reflectivity, dBZ)"
    comments["crop"] = (f"[row0, row1, col0, col1] around the measured pixels: {100 * np.mean(~inside):.1f} % "
                        "never measured inside")
    comments["downsample"] = f"block mean {factor} x {factor}: {pixel_m * factor / 1000:g} km pixels"
    comments["missing"] = "no measurement -> 0 (recorded)"
    accutime = float(metadata.get("accutime") or 0)
    spacing = pd.to_timedelta(np.diff(times)).to_series().mode() if len(times) > 1 else None
    if spacing is not None and accutime and spacing.iloc[0] != pd.Timedelta(minutes=accutime):
        entry["time_step_minutes"] = int(spacing.iloc[0].total_seconds() // 60)
        comments["time_step_minutes"] = f"files every {entry['time_step_minutes']} min, accumulation {accutime:g} min"
    entry["height"], entry["width"] = height, width
    comments["height"] = f"crop / downsample: {crop[1] - crop[0]} / {factor}"
    comments["width"] = f"crop / downsample: {crop[3] - crop[2]} / {factor}"
    windows, note = choose_windows(time["segment"])
    entry.update({k: windows[k] for k in ("input_frames", "output_frames", "window_stride")})
    entry["patch_size"] = PATCH
    entry["split"] = windows["split"]
    comments["split"] = note
    entry["csi_thresholds"] = list(RADAR_CSI)
    comments["csi_thresholds"] = "mm h-1, as the shipped radar entries"
    entry["seed"] = 0
    return Inspection(source=str(source), family="radar", format=fmt, files=files, sections=sections,
                      name=f"radar_{_source_stem(source)}", entry=entry, comments=comments,
                      facts={"time": {k: v for k, v in time.items() if k != "segment"}, "grid": (rows, cols),
                             "importer": importer})


# -- text ----------------------------------------------------------------------------------------

def _flow(value) -> str:
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10 ** 6).strip()[1:-1]


def entry_yaml(name: str, entry: dict, comments: dict | None = None, column: int = 44) -> str:
    """The entry as YAML under ``datasets:``, one key a line, each with its comment."""
    comments = comments or {}
    lines = ["datasets:", f"  {name}:"]
    for key, value in entry.items():
        text = f"    {key}: {_flow(value)}"
        if comments.get(key):
            text = text.ljust(column) + f"  # {comments[key]}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def render(inspection: Inspection, entry_only: bool = False) -> str:
    """What ``nuwa inspect`` prints: the description, the entry, whether it passed validation."""
    entry = entry_yaml(inspection.name, inspection.entry, inspection.comments)
    if entry_only:
        return entry
    out = []
    for title, lines in inspection.sections:
        out.append(f"{title}:")
        out.extend(f"  {line}" for line in lines)
    if inspection.validation is None:
        verdict = "passes params validation (checked in-process, as `nuwa validate` checks an entry)"
    elif inspection.checked:
        verdict = f"does NOT pass params validation: {inspection.validation}"
    else:
        verdict = f"not checked: {inspection.validation}"
    out.append(f"suggested entry, kind {inspection.entry['kind']}: {verdict}")
    out.append(entry.rstrip("\n"))
    out.append(f"next: paste it under `datasets:` in params.yaml (or an experiment file), add {inspection.name} to "
               f"grid.datasets, then `nuwa validate` and `nuwa ingest --dataset {inspection.name}`")
    return "\n".join(out) + "\n"
