"""TaxiBJ: half-hourly taxi crowd flows (inflow, outflow) on a 32 x 32 grid over Beijing.

Source: the ST-ResNet / DeepST authors' release (Zhang et al., AAAI 2017; github:
lucktroy/DeepST, ``data/TaxiBJ``). The reader takes the original HDF5 files, unchanged, from
the ``source`` folder; config key ``years`` (default ``[13, 14, 15, 16]``) picks which of

* ``BJ13_M32x32_T30_InOut.h5`` (2013-07-01 .. 2013-10-30),
* ``BJ14_M32x32_T30_InOut.h5`` (2014-03-01 .. 2014-06-30),
* ``BJ15_M32x32_T30_InOut.h5`` (2015-03-01 .. 2015-06-30),
* ``BJ16_M32x32_T30_InOut.h5`` (2015-11-01 .. 2016-04-10)

are read (every selected file must exist). Each file holds two datasets:

* ``data`` (N, 2, 32, 32), float64 in the release: ``data[i, 0]`` is the inflow and
  ``data[i, 1]`` the outflow map (taxis entering / leaving each cell during the interval);
  any real numeric dtype is accepted, the values are returned as float32 (exact: they are
  integer counts far below 2**24);
* ``date`` (N,) byte strings ``YYYYMMDDss``: the day and ``ss`` the half-hour timeslot,
  ``01`` .. ``48``. Slot ``ss`` starts at ``(ss - 1) * 30`` minutes past midnight, which is
  the time coordinate (``datetime64[ns]``, naive local Beijing time as in the files).

Rows are ordered by time within each file (they already are in the release); files follow
in year order and must not overlap in time. Like the authors' preprocessing
(``remove_incomplete_days`` in DeepST / ST-ResNet), every day that does not have all 48
timeslots is dropped; the number of dropped days and rows and the dropped dates are
recorded in the attributes. The time steps that remain are 30 minutes apart except at gaps
(dropped or absent days, the months between years); :func:`nuwa.datasets.segments_from_time`
turns each run of consecutive steps into a ``segment``, so no window crosses a gap, and the
gaps are summarised in the attributes.

The values are read lazily: a dask array over each file's ``data`` (chunks of
:data:`CHUNK_ROWS` rows, never spanning two files) indexed by the kept rows, so ingesting
streams the files; only ``date`` is read up front. Errors raise
:class:`nuwa.io.DataFileError` naming the file: missing file, missing ``data``/``date``,
wrong shapes, an unparsable timestamp or timeslot (with its index), duplicate timestamps
(both indices), files overlapping in time, non-finite values (when read), and unreadable or
truncated HDF5.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nuwa.datasets import (
    describe_gaps,
    field_array,
    register_dataset,
    segments_from_time,
)
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

# dask and h5py are imported where they are used: importing this module stays light

HEIGHT, WIDTH = 32, 32
CHANNELS = ("inflow", "outflow")
SLOTS_PER_DAY = 48
STEP = np.timedelta64(30, "m")
YEARS = (13, 14, 15, 16)
CHUNK_ROWS = 7 * SLOTS_PER_DAY  # one week of rows per dask chunk (about 5 MB as float64)
_STAMP = re.compile(r"\d{10}")


def file_name(year: int) -> str:
    return f"BJ{year:02d}_M32x32_T30_InOut.h5"


def resolve_source(config: dict) -> Path:
    """The ``source`` folder; a relative path is taken from the current working directory."""
    if "source" not in config:
        raise KeyError("taxibj config is missing source (the folder holding the BJ*_M32x32_T30_InOut.h5 files)")
    return Path(str(config["source"])).expanduser().resolve()


def check_grid(config: dict) -> None:
    """``height`` and ``width`` in the config must match the data's fixed 32 x 32 grid."""
    for key, actual in (("height", HEIGHT), ("width", WIDTH)):
        if key in config and int(config[key]) != actual:
            raise ValueError(f"taxibj: config {key} is {config[key]}, but the TaxiBJ grid is {HEIGHT} rows x "
                             f"{WIDTH} columns (set height: {HEIGHT}, width: {WIDTH})")


def selected_years(config: dict) -> list[int]:
    years = config.get("years", list(YEARS))
    if (not isinstance(years, (list, tuple)) or not years
            or any(isinstance(y, bool) or y not in YEARS for y in years) or len(set(years)) != len(years)):
        raise ValueError(f"taxibj: config years is {years!r}; expected a non-empty list of distinct years "
                         f"from {list(YEARS)}")
    return sorted(int(y) for y in years)


class LazyH5Dataset:
    """A picklable, lazily read view of one HDF5 dataset, for :func:`dask.array.from_array`.

    Every read opens the file read-only and closes it again, so no handle stays open and a
    worker process can read it too. Read errors (corrupt chunks) and non-finite values raise
    :class:`DataFileError` naming the file and the row.
    """

    def __init__(self, path: Path, name: str, shape: tuple, dtype):
        self.path, self.name = str(path), name
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        import h5py

        try:
            with h5py.File(self.path, "r") as handle:
                block = np.asarray(handle[self.name][key])
        except (OSError, KeyError, ValueError) as exc:
            raise DataFileError(f"{self.path}: reading {self.name} failed ({type(exc).__name__}: {exc})") from None
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            first = key[0] if isinstance(key, tuple) else key
            offset = (first.start or 0) if isinstance(first, slice) else 0
            row = offset + int(np.argwhere(~np.isfinite(block))[0][0])
            raise DataFileError(f"{self.path}: {self.name}[{row}] has non-finite values (NaN or Inf)")
        return block


def parse_dates(raw: np.ndarray, path: Path) -> np.ndarray:
    """``YYYYMMDDss`` strings -> datetime64[ns] start of each half-hour slot; errors name the index."""
    stamps = []
    for i, value in enumerate(raw.tolist()):
        try:
            text = value.decode("ascii") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            text = None
        if text is None or not _STAMP.fullmatch(text.strip()):
            raise DataFileError(f"{path}: date[{i}] is {value!r}, expected a YYYYMMDDss string "
                                f"(ss = half-hour timeslot 01..{SLOTS_PER_DAY})")
        stamps.append(text.strip())
    days = pd.to_datetime(pd.Series([s[:8] for s in stamps], dtype=object), format="%Y%m%d", errors="coerce")
    slots = np.array([int(s[8:]) for s in stamps], dtype=np.int64)
    bad_day = np.flatnonzero(days.isna().to_numpy())
    if bad_day.size:
        i = int(bad_day[0])
        raise DataFileError(f"{path}: date[{i}] is {raw[i]!r}: {stamps[i][:8]} is not a valid YYYYMMDD date")
    bad_slot = np.flatnonzero((slots < 1) | (slots > SLOTS_PER_DAY))
    if bad_slot.size:
        i = int(bad_slot[0])
        raise DataFileError(f"{path}: date[{i}] is {raw[i]!r}: timeslot {slots[i]} is outside "
                            f"01..{SLOTS_PER_DAY}")
    return days.to_numpy().astype("datetime64[ns]") + (slots - 1) * STEP.astype("timedelta64[ns]")


def read_file(path: Path) -> dict:
    """Check one file's layout and timestamps; return the lazy data and the kept rows."""
    import dask.array as da
    import h5py
    from dask.base import tokenize

    if not path.is_file():
        raise DataFileError(f"{path}: file not found (TaxiBJ needs the selected BJ*_M32x32_T30_InOut.h5 files "
                            f"in {path.parent})")
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in ("data", "date") if name not in handle]
            if missing:
                raise DataFileError(f"{path}: missing dataset(s) {', '.join(missing)} "
                                    f"(has: {', '.join(sorted(handle.keys())) or 'nothing'})")
            data, date = handle["data"], handle["date"]
            if not isinstance(data, h5py.Dataset) or not isinstance(date, h5py.Dataset):
                raise DataFileError(f"{path}: data and date must be datasets, not groups")
            shape, dtype = data.shape, data.dtype
            if len(shape) != 4 or shape[1:] != (len(CHANNELS), HEIGHT, WIDTH) or shape[0] < 1:
                raise DataFileError(f"{path}: data has shape {shape}, expected (N, {len(CHANNELS)}, {HEIGHT}, {WIDTH})")
            if dtype.kind not in "fiu":
                raise DataFileError(f"{path}: data has dtype {dtype}, expected a real number type (float64)")
            if date.shape != (shape[0],):
                raise DataFileError(f"{path}: date has shape {date.shape}, expected ({shape[0]},) to match data")
            raw = date[()]
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file, truncated or corrupt "
                            f"({type(exc).__name__}: {exc})") from None
    times = parse_dates(np.asarray(raw), path)

    order = np.argsort(times, kind="stable")
    repeats = np.flatnonzero(np.diff(times[order]) == np.timedelta64(0))
    if repeats.size:
        i, j = sorted((int(order[repeats[0]]), int(order[repeats[0] + 1])))
        raise DataFileError(f"{path}: duplicate timestamp {raw[i]!r} at date[{i}] and date[{j}]")

    # complete days: all 48 slots present (slots are valid and distinct, so 48 rows)
    day = times.astype("datetime64[D]")
    unique_days, counts = np.unique(day, return_counts=True)
    incomplete = unique_days[counts != SLOTS_PER_DAY]
    keep = ~np.isin(day, incomplete)
    kept = order[keep[order]]  # kept rows in time order
    lazy = LazyH5Dataset(path, "data", shape, dtype)
    values = da.from_array(lazy, chunks=(CHUNK_ROWS, len(CHANNELS), HEIGHT, WIDTH), lock=True, fancy=False,
                           name=f"taxibj-{tokenize(str(path), path.stat().st_size, path.stat().st_mtime_ns)}")
    return {
        "values": values[kept] if kept.size < shape[0] or np.any(np.diff(kept) < 0) else values,
        "times": times[kept],
        "rows": int(shape[0]),
        "kept": int(kept.size),
        "dropped_days": [str(d).replace("-", "") for d in incomplete],
        "reordered": bool(np.any(np.diff(order) < 0)),
    }


def _summary(days: list[str], limit: int = 60) -> str:
    if not days:
        return "none"
    return " ".join(days[:limit]) + (f" and {len(days) - limit} more" if len(days) > limit else "")


@register_dataset(
    "taxibj",
    config_schema={
        "source": {"type": "string", "minLength": 1},
        "years": {"type": "array", "items": {"enum": list(YEARS)}, "minItems": 1, "uniqueItems": True},
    },
    defaults={"years": list(YEARS)},
)
def generate(config: dict, seed: int) -> xr.DataArray:
    """TaxiBJ flows, dims ``(time, channel, y, x)`` = (kept slots, 2, 32, 32), float32, lazy (``seed`` unused)."""
    import dask.array as da

    check_grid(config)
    years = selected_years(config)
    folder = resolve_source(config)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: TaxiBJ folder not found (expected {', '.join(file_name(y) for y in years)})")
    paths = [folder / file_name(year) for year in years]
    files = [read_file(path) for path in paths]
    for (path_a, a), (path_b, b) in zip(zip(paths, files), zip(paths[1:], files[1:])):
        if a["kept"] and b["kept"] and b["times"][0] <= a["times"][-1]:
            raise DataFileError(f"{path_b}: starts at {str(b['times'][0])[:19]}, not after the end of {path_a} "
                                f"({str(a['times'][-1])[:19]}): the files overlap in time")
    used = [f for f in files if f["kept"]]
    if not used:
        raise DataFileError(f"{folder}: no complete day (all {SLOTS_PER_DAY} timeslots) in "
                            f"{', '.join(p.name for p in paths)}")
    times = np.concatenate([f["times"] for f in used])
    values = da.concatenate([f["values"] for f in used], axis=0)
    segment, gaps = segments_from_time(times, STEP, where=f"TaxiBJ time steps ({', '.join(p.name for p in paths)})")
    dropped_days = [d for f in files for d in f["dropped_days"]]
    rows = sum(f["rows"] for f in files)
    return field_array(
        values,
        name="taxi_flow",
        channels=CHANNELS,
        time=times,
        time_attrs={"long_name": "start of the 30-minute timeslot (local time, Beijing)", "standard_name": "time"},
        segment=segment,
        attrs={
            "units": "taxis per 30 min",
            "long_name": "taxi crowd flow",
            "comment": "inflow: taxis entering the cell during the 30-minute slot; outflow: taxis leaving it; "
                       "integer counts from GPS trajectories. Days without all 48 slots are dropped "
                       "(as DeepST/ST-ResNet remove_incomplete_days); no window crosses a gap.",
            "generator": "taxibj",
            "source": str(config["source"]),  # as written in params: the same bytes on every machine
            "source_files": " ".join(p.name for p in paths),
            "origin": "ST-ResNet / DeepST release (Zhang et al. 2017; github: lucktroy/DeepST, data/TaxiBJ)",
            "years": " ".join(f"20{y:02d}" for y in years),
            "rows_per_file": "; ".join(f"{p.name}: {f['rows']} read, {f['kept']} kept" for p, f in zip(paths, files)),
            "rows_read": int(rows),
            "rows_kept": len(times),
            "dropped_days": len(dropped_days),
            "dropped_rows": int(rows - len(times)),
            "dropped_day_list": _summary(dropped_days),
            "files_reordered": " ".join(p.name for p, f in zip(paths, files) if f["reordered"]) or "none",
            "time_step": "30 min",
            "segments": int(segment.max()) + 1,
            "gaps": describe_gaps(gaps),
            "seed": int(seed),
        },
    )
