"""NYCBike1: real hourly bike inflow/outflow on a 16 x 8 grid over New York, rebuilt from windows.

Source: the ST-SSL repository (github: Echo-Ji/ST-SSL, ``data/NYCBike1/``); see
``shared/data/README.md``. Only ``val.npz`` and ``test.npz`` are public. Each holds windows,
not a series:

* ``x`` (N, 19, 128, 2): 19 input frames at the hours ``x_offsets`` (N.B. not consecutive:
  -73..-69, -49..-45, -25..-21, -3..-1, 0) relative to the window's present hour;
* ``y`` (N, 1, 128, 2): the target at ``y_offsets`` = +1;
* 128 = 16 x 8 grid cells flattened, 2 channels (inflow, outflow).

Layout (checked against the files, not assumed). The cell axis is the row-major (C order)
flattening of a 16-row x 8-column grid: cell ``k`` is row ``k // 8``, column ``k % 8``. The
file ``adj_mx.npz`` (128 x 128, symmetric, 0/1) is exactly the 8-neighbourhood ("king's
move") adjacency of that grid: every one of its 884 edges joins cells with
``|drow| <= 1`` and ``|dcol| <= 1`` under 16 x 8 row-major, node degrees are 3 (4 corners),
5 (40 edge cells) and 8 (84 interior cells); under an 8 x 16 reading most edges would jump
7-9 columns. The mean-flow map read as 16 x 8 is also spatially smooth (Manhattan's long,
narrow shape). The channel order (inflow, outflow) follows the source's documentation;
the data are non-negative integer counts (bikes arriving in / leaving a cell during the
hour), stored as float64 and returned as float32 (exact: the largest count is 239).

Rebuilding the series. Window ``i``'s offset-0 frame is hour ``i`` of the validation file;
the test file continues it (its window ``j`` is hour ``n_val + j``), and the last test target
is the final hour: ``n_val + n_test + 1`` = 431 + 864 + 1 = 1,296 hours (54 days). The
loader does not trust this; it checks, exactly (the values are integers), that

1. within each file ``y[i] == x[i + 1, offset 0]`` for every window (overlap),
2. the first test window's offset-0 frame equals the last validation target (continuation),
3. every lagged input ``x[i, offset -k]`` equals the rebuilt series ``k`` hours earlier,
   wherever that hour lies inside the series (so the offset-0 frames are consecutive hours),

and raises :class:`nuwa.io.DataFileError` naming the file and the first mismatching window
index otherwise. The files carry no dates, so the time coordinate is the integer hour since
the start of the series. (The lagged inputs of the first 73 validation windows also hold
the 73 hours before the series start; they are not used here.)
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nuwa.datasets import field_array, register_dataset
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

HEIGHT, WIDTH = 16, 8
N_CELLS = HEIGHT * WIDTH
CHANNELS = ("inflow", "outflow")
FILES = ("val.npz", "test.npz")  # in time order: test continues val


def resolve_source(config: dict) -> Path:
    """The ``source`` folder; a relative path is taken from the current working directory."""
    if "source" not in config:
        raise KeyError("nycbike config is missing source (the NYCBike1 folder holding val.npz and test.npz)")
    return Path(config["source"]).expanduser().resolve()


def check_grid(config: dict) -> None:
    """``height`` and ``width`` in the config must match the data's fixed 16 x 8 grid."""
    for key, actual in (("height", HEIGHT), ("width", WIDTH)):
        if key in config and int(config[key]) != actual:
            raise ValueError(
                f"nycbike: config {key} is {config[key]}, but the NYCBike1 grid is {HEIGHT} rows x {WIDTH} columns "
                f"(set height: {HEIGHT}, width: {WIDTH})"
            )


def load_windows(path: Path) -> dict[str, np.ndarray]:
    """Read one window file and check its arrays' shapes; errors name ``path``."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (NYCBike1 needs {' and '.join(FILES)} in {path.parent})")
    try:
        # our own handle: np.load leaks its file when the archive is unreadable
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as handle:
            arrays = {key: handle[key] for key in handle.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    missing = [key for key in ("x", "y", "x_offsets", "y_offsets") if key not in arrays]
    if missing:
        raise DataFileError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    x, y = arrays["x"], arrays["y"]
    x_offsets = np.asarray(arrays["x_offsets"]).reshape(-1)
    y_offsets = np.asarray(arrays["y_offsets"]).reshape(-1)
    if x.ndim != 4 or x.shape[2:] != (N_CELLS, len(CHANNELS)) or x.shape[0] < 1:
        raise DataFileError(f"{path}: x has shape {x.shape}, expected (windows, steps, {N_CELLS}, {len(CHANNELS)})")
    if y.shape != (x.shape[0], 1, N_CELLS, len(CHANNELS)):
        raise DataFileError(f"{path}: y has shape {y.shape}, expected ({x.shape[0]}, 1, {N_CELLS}, {len(CHANNELS)})")
    if x_offsets.shape != (x.shape[1],) or not np.issubdtype(x_offsets.dtype, np.integer):
        raise DataFileError(f"{path}: x_offsets has shape {arrays['x_offsets'].shape} ({x_offsets.dtype}), "
                            f"expected {x.shape[1]} integer hour offsets")
    if x_offsets[-1] != 0 or np.any(np.diff(x_offsets) <= 0):
        raise DataFileError(f"{path}: x_offsets {x_offsets.tolist()} must increase strictly and end at 0 (the present hour)")
    if y_offsets.tolist() != [1]:
        raise DataFileError(f"{path}: y_offsets is {y_offsets.tolist()}, expected [1] (the next hour)")
    for key in ("x", "y"):
        if not np.isfinite(arrays[key]).all():
            bad = int(np.argwhere(~np.isfinite(arrays[key]))[0][0])
            raise DataFileError(f"{path}: {key} has non-finite values (first in window {bad})")
    return {"x": x, "y": y, "x_offsets": x_offsets}


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int | None:
    """First index along axis 0 where frames ``a`` and ``b`` differ (exactly), or None."""
    differs = (a != b).reshape(len(a), -1).any(axis=1)
    return int(np.argmax(differs)) if differs.any() else None


def rebuild_series(folder: Path) -> tuple[np.ndarray, dict[str, int]]:
    """The hourly series ``(hours, 128, 2)`` from the window files, with every overlap checked."""
    if not folder.is_dir():
        raise DataFileError(f"{folder}: NYCBike1 folder not found (expected {' and '.join(FILES)} in it)")
    paths = [folder / name for name in FILES]
    windows = [load_windows(path) for path in paths]

    # 1. within each file the target of window i is the offset-0 frame of window i + 1
    for path, w in zip(paths, windows):
        bad = _first_mismatch(w["y"][:-1, 0], w["x"][1:, -1])
        if bad is not None:
            raise DataFileError(f"{path}: y[{bad}] (target of window {bad}) differs from the offset-0 frame "
                                f"x[{bad + 1}, -1] of window {bad + 1}: windows do not overlap as expected")

    # 2. the test file continues the validation file
    (val_path, test_path), (val, test) = paths, windows
    if not np.array_equal(test["x"][0, -1], val["y"][-1, 0]):
        raise DataFileError(f"{test_path}: offset-0 frame of window 0 differs from the last target "
                            f"(window {len(val['y']) - 1}) of {val_path}: test does not continue val")

    series = np.concatenate([val["x"][:, -1], test["x"][:, -1], test["y"][-1:, 0]])

    # 3. every lagged input equals the series that many hours earlier (where inside the series)
    start = 0
    for path, w in zip(paths, windows):
        n = len(w["x"])
        first_bad: tuple[int, int] | None = None
        for step, offset in enumerate(w["x_offsets"][:-1]):
            hours = start + np.arange(n) + int(offset)
            inside = hours >= 0
            if not inside.any():
                continue
            window_index = np.flatnonzero(inside)
            bad = _first_mismatch(w["x"][window_index, step], series[hours[inside]])
            if bad is not None and (first_bad is None or window_index[bad] < first_bad[0]):
                first_bad = (int(window_index[bad]), int(offset))
        if first_bad is not None:
            index, offset = first_bad
            raise DataFileError(f"{path}: x[{index}] at offset {offset} h differs from the series {-offset} hours "
                                f"before window {index}'s present hour: lagged inputs are inconsistent")
        start += n
    return series, {"val_windows": len(val["x"]), "test_windows": len(test["x"])}


@register_dataset("nycbike", config_schema={"source": {"type": "string", "minLength": 1}})
def generate(config: dict, seed: int) -> xr.DataArray:
    """NYCBike1 hourly flows, dims ``(time, channel, y, x)`` = (1296, 2, 16, 8), float32 (``seed`` unused)."""
    check_grid(config)
    folder = resolve_source(config)
    series, counts = rebuild_series(folder)
    hours = len(series)
    # (hours, 128, 2) -> (hours, 2, 16, 8): cell k is row k // 8, column k % 8 (row-major)
    field = series.reshape(hours, HEIGHT, WIDTH, len(CHANNELS)).transpose(0, 3, 1, 2)
    return field_array(
        field,
        name="bike_flow",
        channels=CHANNELS,
        time_attrs={"long_name": "hours since the first frame of the series (the files carry no dates)", "units": "1"},  # not a CF "since" unit: there is no reference date
        attrs={
            "units": "bikes per hour",
            "long_name": "bike flow",
            "comment": "inflow: bikes arriving in the cell during the hour; outflow: bikes leaving it; "
                       "integer counts. No dates in the source files: time is hours since the first frame.",
            "generator": "nycbike",
            "source": str(config["source"]),  # as written in params: the same bytes on every machine
            "source_files": " ".join(FILES),
            "origin": "ST-SSL repository (github: Echo-Ji/ST-SSL), data/NYCBike1",
            "cell_layout": "cell k of the files' 128 = row k // 8, column k % 8 (row-major 16 x 8; matches adj_mx.npz)",
            "val_windows": counts["val_windows"],
            "test_windows": counts["test_windows"],
            "checks": "y[i] == x[i+1, offset 0] in each file; test continues val; "
                      "lagged inputs equal the series where inside it (all exact)",
            "seed": int(seed),
        },
    )
