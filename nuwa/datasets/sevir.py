"""SEVIR VIL: radar vertically integrated liquid, 4-hour storm events on a 384 x 384 km grid.

Source: the Storm EVent ImagRy dataset (Veillette et al., NeurIPS 2020), AWS open data
bucket ``s3://sevir``. The reader takes the original layout, unchanged, from ``source``:

* ``source/CATALOG.csv``: one row per event and image type. Columns used: ``id`` (SEVIR
  event id, ``S...`` for NOAA storm events, ``R...`` for random ones), ``file_name`` (path
  of the HDF5 file below ``source/data/``), ``file_index`` (the event's row in that file),
  ``img_type`` (only ``vil`` rows are read), ``time_utc`` (e.g. ``2019-06-01 18:05:00``),
  ``event_type`` (NOAA storm event type such as ``Hail``; empty for random events) and
  ``event_id`` (NOAA storm event id; empty for random events), all required;
  ``minute_offsets`` (colon-separated minutes of each frame relative to ``time_utc``, e.g.
  ``-120:-115:...:115:120``: 49 frames over 4 hours, ``time_utc`` at the middle one) and
  ``pct_missing`` are used when present; a missing or empty ``minute_offsets`` means the
  nominal ``-120, -115, ..., 120`` (5-minute spacing). Offsets must increase; irregular
  spacings are kept as given (counted in the attributes).
* ``source/data/<file_name>``, e.g. ``vil/2019/SEVIR_VIL_STORMEVENTS_2019_0101_0630.h5``:
  HDF5 with ``id`` (N,) byte strings and ``vil`` (N, 384, 384, 49) uint8, 49 frames every
  5 minutes on the last axis; the catalog's ``id`` must be ``id[file_index]`` (checked).
  The reader insists on exactly that shape and dtype (the real format; 1 km pixels).

Selection (config): ``event_types`` (list of catalog ``event_type`` strings; ``[]`` = every
VIL event, random ones included), ``max_events`` (the first N selected events in time order,
or null for all), ``downsample`` (block-mean factor: 384 / downsample must equal ``height``
and ``width``). Events are ordered by ``time_utc`` (ties by ``id``), so the selection is
deterministic.

Result. The events are stacked along ``time``, 49 frames each, channel ``vil``; rows and
columns as stored in the files (row = first spatial axis). Each event is its own
``segment`` (no window crosses two events); ``time`` is the integer frame index and the
coordinates ``valid_time`` (UTC, ``time_utc`` + minute offset), ``event_id`` (NOAA event id,
empty for random events) and ``sevir_id`` (catalog ``id``) run along it. Values stay on
SEVIR's uint8 VIL scale (digital levels 0-255, as float32; block means of them when
downsampling), so the conventional SEVIR CSI thresholds 16, 74, 133, 160, 181, 219 apply
unchanged.

The values are lazy: one dask chunk per event, read from its file (opened read-only per
read) when ingest streams it; only the catalog and the files' ``id`` arrays are read up
front. Errors raise :class:`nuwa.io.DataFileError` naming the file: missing
``CATALOG.csv`` or columns, unparsable catalog values, no event matching the selection
(naming the selection and the event types that exist), missing data file, missing
``vil``/``id``, wrong ``vil`` shape or dtype, an ``id`` not found at ``file_index``, and
unreadable or truncated HDF5.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nuwa.datasets import field_array, register_dataset
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

# dask and h5py are imported where they are used: importing this module stays light

SIZE = 384  # pixels (1 km) per side
FRAMES = 49  # frames per event
STEP_MINUTES = 5
NOMINAL_OFFSETS = np.arange(-120, -120 + STEP_MINUTES * FRAMES, STEP_MINUTES)  # -120 .. 120
CATALOG = "CATALOG.csv"
REQUIRED_COLUMNS = ("id", "file_name", "file_index", "img_type", "time_utc", "event_type", "event_id")
CSI_THRESHOLDS = (16, 74, 133, 160, 181, 219)
DEFAULTS = {"event_types": [], "max_events": None, "downsample": 1}


def resolve_source(config: dict) -> Path:
    """The ``source`` folder; a relative path is taken from the current working directory."""
    if "source" not in config:
        raise KeyError("sevir config is missing source (the SEVIR folder holding CATALOG.csv and data/)")
    return Path(str(config["source"])).expanduser().resolve()


def read_settings(config: dict) -> dict:
    """The kind's keys (defaults filled in), checked, plus the grid check; errors name the key."""
    settings = {key: config.get(key, value) for key, value in DEFAULTS.items()}
    types = settings["event_types"]
    if not isinstance(types, (list, tuple)) or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"sevir: config event_types is {types!r}; expected a list of catalog event_type strings")
    settings["event_types"] = list(dict.fromkeys(types))
    limit = settings["max_events"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"sevir: config max_events is {limit!r}; expected a positive integer or null (all)")
    factor = settings["downsample"]
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or SIZE % factor:
        raise ValueError(f"sevir: config downsample is {factor!r}; expected a positive integer dividing {SIZE}")
    side = SIZE // factor
    for key in ("height", "width"):
        if key in config and int(config[key]) != side:
            raise ValueError(f"sevir: config {key} is {config[key]}, but SEVIR VIL is {SIZE} x {SIZE} pixels and "
                             f"downsample {factor} gives {side} x {side} (set height: {side}, width: {side})")
    return settings


def read_catalog(folder: Path) -> pd.DataFrame:
    path = folder / CATALOG
    if not folder.is_dir():
        raise DataFileError(f"{folder}: SEVIR folder not found (expected {CATALOG} and data/ in it)")
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (SEVIR needs {CATALOG} and data/ in {folder})")
    try:
        catalog = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataFileError(f"{path}: not a readable CSV catalog ({type(exc).__name__}: {exc})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in catalog.columns]
    if missing:
        raise DataFileError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(catalog.columns)})")
    return catalog


def _text(value) -> str:
    """A catalog cell as text: '' for empty, integral floats without '.0' (event ids)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def select_events(catalog: pd.DataFrame, settings: dict, path: Path) -> pd.DataFrame:
    """The VIL rows selected by ``event_types`` and ``max_events``, in time order, checked."""
    img_type = catalog["img_type"].fillna("").str.strip()
    vil = catalog[img_type == "vil"].copy()
    if vil.empty:
        types = sorted(set(img_type) - {""})
        raise DataFileError(f"{path}: no rows with img_type 'vil' (img types present: {', '.join(types) or 'none'})")
    vil["event_type"] = vil["event_type"].fillna("").str.strip()
    wanted = settings["event_types"]
    chosen = vil[vil["event_type"].isin(wanted)] if wanted else vil
    if chosen.empty:
        counts = vil["event_type"].replace("", "(random, no type)").value_counts().sort_index()
        present = ", ".join(f"{name!r} ({count})" for name, count in counts.items())
        raise DataFileError(f"{path}: no VIL events match event_types {wanted} (event types of the VIL rows: {present})")
    chosen = chosen.copy()
    chosen["id"] = chosen["id"].fillna("").str.strip()
    times = pd.to_datetime(chosen["time_utc"], errors="coerce", utc=True)
    bad = times.isna().to_numpy()
    if bad.any():
        row = chosen.iloc[int(np.flatnonzero(bad)[0])]
        raise DataFileError(f"{path}: event {row['id']!r}: time_utc {row['time_utc']!r} is not a date and time")
    chosen["time"] = times.dt.tz_convert(None).astype("datetime64[ns]")
    chosen = chosen.sort_values(["time", "id"], kind="mergesort")
    if settings["max_events"] is not None:
        chosen = chosen.iloc[:settings["max_events"]]
    duplicated = chosen["id"].duplicated(keep=False)
    if duplicated.any():
        raise DataFileError(f"{path}: VIL event id {chosen['id'][duplicated].iloc[0]!r} appears in more than one row")
    index = pd.to_numeric(chosen["file_index"], errors="coerce")
    bad = (index.isna() | (index < 0) | (index % 1 != 0)).to_numpy()
    if bad.any():
        row = chosen.iloc[int(np.flatnonzero(bad)[0])]
        raise DataFileError(f"{path}: event {row['id']!r}: file_index {row['file_index']!r} is not a row number")
    chosen["file_index"] = index.astype(np.int64)
    bad_name = chosen["file_name"].isna().to_numpy()
    if bad_name.any():
        raise DataFileError(f"{path}: event {chosen['id'].iloc[int(np.flatnonzero(bad_name)[0])]!r}: empty file_name")
    chosen["file_name"] = chosen["file_name"].str.strip()
    chosen["offsets"] = [parse_offsets(row, path) for _, row in chosen.iterrows()]
    return chosen


def parse_offsets(row: pd.Series, path: Path) -> np.ndarray:
    """The 49 frame offsets (minutes from time_utc) of a catalog row; nominal when absent."""
    text = row.get("minute_offsets")
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return NOMINAL_OFFSETS
    try:
        offsets = np.array([int(part) for part in str(text).strip().split(":")], dtype=np.int64)
    except ValueError:
        offsets = None
    if offsets is None or offsets.shape != (FRAMES,) or np.any(np.diff(offsets) <= 0):
        raise DataFileError(f"{path}: event {row['id']!r}: minute_offsets {str(text)[:60]!r} is not {FRAMES} "
                            "increasing colon-separated integers")
    return offsets


def check_file(path: Path, rows: pd.DataFrame) -> None:
    """The file's layout, and each row's id at its file_index."""
    import h5py

    if not path.is_file():
        raise DataFileError(f"{path}: file not found (catalog event {rows['id'].iloc[0]!r} is in it)")
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in ("id", "vil") if not isinstance(handle.get(name), h5py.Dataset)]
            if missing:
                raise DataFileError(f"{path}: missing dataset(s) {', '.join(missing)} "
                                    f"(has: {', '.join(sorted(handle.keys())) or 'nothing'})")
            vil, ids = handle["vil"], handle["id"]
            if vil.ndim != 4 or vil.shape[1:] != (SIZE, SIZE, FRAMES):
                raise DataFileError(f"{path}: vil has shape {vil.shape}, expected (N, {SIZE}, {SIZE}, {FRAMES})")
            if vil.dtype != np.uint8:
                raise DataFileError(f"{path}: vil has dtype {vil.dtype}, expected uint8 (SEVIR's 0-255 VIL scale)")
            if ids.shape != (vil.shape[0],):
                raise DataFileError(f"{path}: id has shape {ids.shape}, expected ({vil.shape[0]},) to match vil")
            names = [v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in ids[()].tolist()]
    except OSError as exc:
        raise DataFileError(f"{path}: not a readable HDF5 file, truncated or corrupt "
                            f"({type(exc).__name__}: {exc})") from None
    for _, row in rows.iterrows():
        index, wanted = int(row["file_index"]), row["id"]
        found = names[index] if index < len(names) else None
        if found != wanted:
            where = f"id[{index}] is {found!r}" if found is not None else f"file_index {index} is past its {len(names)} events"
            elsewhere = f"; {wanted!r} is at index {names.index(wanted)}" if wanted in names else ""
            raise DataFileError(f"{path}: {CATALOG} puts event {wanted!r} at file_index {index}, but {where}{elsewhere}")


def read_event(path: str, index: int, factor: int) -> np.ndarray:
    """One event as float32 (49, 1, 384 / factor, 384 / factor): frames first, block means."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            frames = np.asarray(handle["vil"][index])  # (384, 384, 49) uint8
    except (OSError, KeyError, ValueError) as exc:
        raise DataFileError(f"{path}: reading vil[{index}] failed ({type(exc).__name__}: {exc})") from None
    frames = np.moveaxis(frames, -1, 0)
    if factor > 1:
        side = SIZE // factor
        frames = frames.reshape(FRAMES, side, factor, side, factor).mean(axis=(2, 4), dtype=np.float64)
    return frames[:, None].astype(np.float32)


@register_dataset(
    "sevir",
    config_schema={
        "source": {"type": "string", "minLength": 1},
        "event_types": {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True},
        "max_events": {"type": ["integer", "null"], "minimum": 1},
        "downsample": {"type": "integer", "minimum": 1, "maximum": SIZE},
    },
    defaults=DEFAULTS,
)
def generate(config: dict, seed: int) -> xr.DataArray:
    """SEVIR VIL events, dims ``(time, channel, y, x)`` = (49 x events, 1, side, side), float32, lazy."""
    import dask
    import dask.array as da

    settings = read_settings(config)
    folder = resolve_source(config)
    catalog_path = folder / CATALOG
    events = select_events(read_catalog(folder), settings, catalog_path)
    data_dir = folder / "data"
    for name, rows in events.groupby("file_name", sort=True):
        check_file(data_dir / name, rows)

    factor = settings["downsample"]
    side = SIZE // factor
    read = dask.delayed(read_event, pure=True)
    values = da.concatenate([
        da.from_delayed(read(str(data_dir / row.file_name), int(row.file_index), factor),
                        shape=(FRAMES, 1, side, side), dtype=np.float32)
        for row in events.itertuples()
    ], axis=0)
    n = len(events)
    offsets = np.stack(events["offsets"].to_list())
    valid_time = (events["time"].to_numpy()[:, None] + offsets.astype("timedelta64[m]")).reshape(-1)
    event_id = np.repeat([_text(v) for v in events["event_id"]], FRAMES)
    sevir_id = np.repeat(events["id"].to_numpy(dtype=str), FRAMES)
    types = events["event_type"].replace("", "(random)").value_counts().sort_index()
    attrs = {
        "units": "1",
        "long_name": "vertically integrated liquid (SEVIR digital level)",
        "comment": "SEVIR VIL on its uint8 scale: digital levels 0-255 stored as float32"
                   + (f" (block means over {factor} x {factor} pixels)" if factor > 1 else "")
                   + "; the conventional SEVIR CSI thresholds 16, 74, 133, 160, 181, 219 apply to these values. "
                   "Events are stacked in time_utc order, 49 frames (5 min) each; each event is a segment.",
        "generator": "sevir",
        "source": str(config["source"]),  # as written in params: the same bytes on every machine
        "catalog": str(catalog_path),
        "origin": "SEVIR (Veillette et al. 2020), AWS open data s3://sevir",
        "source_files": " ".join(sorted(events["file_name"].unique())),
        "events": int(n),
        "frames_per_event": FRAMES,
        "event_types": " | ".join(settings["event_types"]) if settings["event_types"] else "all",
        "event_type_counts": "; ".join(f"{name}: {count}" for name, count in types.items()),
        "max_events": settings["max_events"] if settings["max_events"] is not None else "none",
        "downsample": int(factor),
        "pixel_size_km": float(factor),
        "csi_thresholds_conventional": " ".join(map(str, CSI_THRESHOLDS)),
        "value_scale": "uint8 digital level 0-255 (not converted to kg m-2)",
        "first_time_utc": str(events["time"].iloc[0])[:19],
        "last_time_utc": str(events["time"].iloc[-1])[:19],
        "events_with_irregular_offsets": int(sum(not np.array_equal(o, NOMINAL_OFFSETS) for o in events["offsets"])),
        "seed": int(seed),
    }
    if "pct_missing" in events.columns:
        missing = pd.to_numeric(events["pct_missing"], errors="coerce")
        attrs["pct_missing_max"] = float(missing.max()) if missing.notna().any() else "unknown"
    return field_array(
        values,
        name="vil",
        channels=["vil"],
        time_attrs={"long_name": f"frame index (events in time_utc order, {FRAMES} frames each)", "units": "frame"},
        segment=np.repeat(np.arange(n, dtype=np.int32), FRAMES),
        coords={
            "valid_time": ("time", valid_time.astype("datetime64[ns]"),
                           {"long_name": "valid time of the frame (UTC): catalog time_utc + minute offset"}),
            "event_id": ("time", event_id, {"long_name": "NOAA storm event id (catalog event_id; empty for random events)"}),
            "sevir_id": ("time", sevir_id, {"long_name": "SEVIR event id (catalog id)"}),
        },
        attrs=attrs,
    )
