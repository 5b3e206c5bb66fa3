"""NYTaxi: real half-hourly taxi inflow/outflow on a 16 x 12 grid over New York (TaxiBJ's stand-in).

Source: the STSAN repository (github: haoxingl/STSAN, commit f5d09f8, ``data/NYTaxi/``); see
``shared/data/README.md``. Three files, one series cut in time order:

* ``flow_train.npz``: 2,784 frames (58 days, 2016-01-01 .. 2016-02-27);
* ``flow_val.npz``: 672 frames (14 days, 2016-02-28 .. 2016-03-12);
* ``flow_test.npz``: 864 frames (18 days, 2016-03-13 .. 2016-03-30);

each holding one array ``flow`` (T, 16, 12, 2), float64: whole trip counts per grid cell and
30-minute slot, channel 0 the inflow (trips ending in the cell during the slot), channel 1
the outflow (trips starting there). 4,320 consecutive half-hours = 90 days from 2016-01-01
00:00. The files carry no timestamps; the time coordinate is that documented start plus 30
minutes a frame, naive New York local time.

What the files themselves confirm (checked on the shipped data; the tests repeat it):

* Every trip is counted once as outflow and once as inflow, so over the whole series the two
  totals are equal (28,090,811 trips), and at every frame the trips started so far are at
  least the trips ended so far (cumulative outflow - inflow = trips under way, never
  negative; about 5,000 at each file boundary, midnight). This holds for the three files
  joined in the order train, val, test and for no other order, and fails when inflow and
  outflow are swapped: it fixes both the join and the channel order. The reader checks it,
  exactly (integer counts), and names the file where it first fails.
* The daily totals fall to their minimum on day 22 = 2016-01-23 (the "Jonas" blizzard, with
  a driving ban) and the daily cycle bottoms out at 05:00: the dates are right.
* The slots 2016-03-13 02:00 and 02:30 (test frames 4 and 5) hold 36 and 41 trips (in + out)
  against about 17,000 either side: in local time the hour 02:00-03:00 did not exist that day (clocks
  went forward). The frames are kept as they are, like every user of the files does; the
  ``dst_note`` attribute records them.

The split is the files' own cut (train, val, test = the three files), so the kind is
registered with ``defines_split=True`` and its params entry has no ``split`` fractions.

Errors raise :class:`nuwa.io.DataFileError` naming the file: missing folder or file, not a
readable ``.npz``, no ``flow`` array, wrong shape (the exact documented frame count: the
timestamps follow from it), non-numeric dtype, non-finite, negative or fractional values (with
the first index), and a series that does not join (see above).
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

HEIGHT, WIDTH = 16, 12
CHANNELS = ("inflow", "outflow")
SPLITS = ("train", "val", "test")
FILES = ("flow_train.npz", "flow_val.npz", "flow_test.npz")  # in time order, one per split
FRAMES = {"flow_train.npz": 2784, "flow_val.npz": 672, "flow_test.npz": 864}
START = np.datetime64("2016-01-01T00:00", "ns")
STEP = np.timedelta64(30, "m")
# the hour 02:00-03:00 did not exist in New York on 2016-03-13 (start of daylight saving time)
DST_SLOTS = (np.datetime64("2016-03-13T02:00", "ns"), np.datetime64("2016-03-13T02:30", "ns"))


def resolve_source(config: dict) -> Path:
    """The ``source`` folder; a relative path is taken from the current working directory."""
    if "source" not in config:
        raise KeyError(f"nytaxi config is missing source (the NYTaxi folder holding {', '.join(FILES)})")
    return Path(str(config["source"])).expanduser().resolve()


def check_grid(config: dict) -> None:
    """``height`` and ``width`` in the config must match the data's fixed 16 x 12 grid."""
    for key, actual in (("height", HEIGHT), ("width", WIDTH)):
        if key in config and int(config[key]) != actual:
            raise ValueError(f"nytaxi: config {key} is {config[key]}, but the NYTaxi grid is {HEIGHT} rows x "
                             f"{WIDTH} columns (set height: {HEIGHT}, width: {WIDTH})")


def timestamps(n_frames: int = sum(FRAMES.values())) -> np.ndarray:
    """Start of each 30-minute slot from 2016-01-01 00:00, datetime64[ns] (naive New York local time)."""
    return START + np.arange(n_frames) * STEP.astype("timedelta64[ns]")


def load_flow(path: Path, frames: int) -> np.ndarray:
    """Read one file's ``flow`` (frames, 16, 12, 2) and check it; errors name ``path``."""
    if not path.is_file():
        raise DataFileError(f"{path}: file not found (NYTaxi needs {', '.join(FILES)} in {path.parent})")
    try:
        # our own handle: np.load leaks its file when the archive is unreadable
        with open(path, "rb") as stream, np.load(stream, allow_pickle=False) as handle:
            if "flow" not in handle.files:
                raise DataFileError(f"{path}: no array 'flow' (has: {', '.join(sorted(handle.files)) or 'nothing'})")
            flow = handle["flow"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    expected = (frames, HEIGHT, WIDTH, len(CHANNELS))
    if flow.shape != expected:
        raise DataFileError(f"{path}: flow has shape {flow.shape}, expected {expected} "
                            f"(frames, rows, columns, inflow/outflow)")
    if flow.dtype.kind not in "fiu":
        raise DataFileError(f"{path}: flow has dtype {flow.dtype}, expected a real number type (float64)")
    if flow.dtype.kind == "f":
        finite = np.isfinite(flow)
        if not finite.all():
            where = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise DataFileError(f"{path}: flow has {int((~finite).sum())} non-finite value(s) (NaN or Inf), "
                                f"first at index (frame, row, column, channel) = {where}")
    negative = flow < 0
    if negative.any():
        where = tuple(int(i) for i in np.argwhere(negative)[0])
        raise DataFileError(f"{path}: flow has {int(negative.sum())} negative value(s), first {flow[where]} at "
                            f"index (frame, row, column, channel) = {where}; trip counts are non-negative")
    fractional = flow != np.round(flow)
    if fractional.any():
        where = tuple(int(i) for i in np.argwhere(fractional)[0])
        raise DataFileError(f"{path}: flow has {int(fractional.sum())} non-integer value(s), first {flow[where]} at "
                            f"index (frame, row, column, channel) = {where}; expected whole trip counts "
                            "(not normalised or scaled data)")
    return flow.astype(np.float64, copy=False)


def check_join(paths: list[Path], flows: list[np.ndarray]) -> dict:
    """The files joined in order must balance trips: cumulative outflow >= inflow, equal at the end.

    Returns the number of trips and the trips under way at the end of each file.
    """
    totals = [f.sum(axis=(1, 2)) for f in flows]  # (frames, channel), exact: integers far below 2**53
    balance = np.cumsum(np.concatenate(totals) @ np.array([1.0, -1.0]))  # inflow - outflow so far
    ends = np.cumsum([len(f) for f in flows])
    over = np.flatnonzero(balance > 0)
    if over.size:
        t = int(over[0])
        k = int(np.searchsorted(ends, t, side="right"))
        local = t - (int(ends[k - 1]) if k else 0)
        raise DataFileError(
            f"{paths[k]}: at frame {local} ({str(START + t * STEP)[:16]}) more trips have ended than started "
            f"since the series start (cumulative inflow exceeds outflow by {balance[t]:.0f}): the files do not join "
            f"into one series in the order {', '.join(FILES)} (a file out of order, from another series or altered, "
            "or inflow and outflow swapped)")
    if balance[-1] != 0:
        per_file = "; ".join(f"{p.name}: {t[:, 0].sum() - t[:, 1].sum():+.0f}" for p, t in zip(paths, totals))
        raise DataFileError(
            f"{paths[-1].parent}: total inflow and outflow over {', '.join(FILES)} differ by {balance[-1]:+.0f} "
            f"(inflow - outflow per file: {per_file}); every trip is counted once as outflow and once as inflow, "
            "so over the whole series they are equal: a file is altered, truncated or from another series")
    return {"trips": int(sum(t[:, 1].sum() for t in totals)),
            "under_way": [int(-balance[e - 1]) for e in ends[:-1]]}


@register_dataset("nytaxi", config_schema={"source": {"type": "string", "minLength": 1}}, defines_split=True)
def generate(config: dict, seed: int) -> xr.DataArray:
    """NYTaxi half-hourly flows, dims ``(time, channel, y, x)`` = (4320, 2, 16, 12), float32, with the
    files' split (``seed`` unused)."""
    check_grid(config)
    folder = resolve_source(config)
    if not folder.is_dir():
        raise DataFileError(f"{folder}: NYTaxi folder not found (expected {', '.join(FILES)} in it)")
    paths = [folder / name for name in FILES]
    flows = [load_flow(path, FRAMES[path.name]) for path in paths]
    joined = check_join(paths, flows)
    series = np.concatenate(flows)  # (time, row, column, channel)
    times = timestamps(len(series))
    split = np.concatenate([[name] * len(f) for name, f in zip(SPLITS, flows)])
    dst = [int(np.flatnonzero(times == slot)[0]) for slot in DST_SLOTS]
    dst_trips = ", ".join(f"{str(times[i])[:16]}: {series[i].sum(axis=(0, 1))[0]:.0f} in / "
                          f"{series[i].sum(axis=(0, 1))[1]:.0f} out" for i in dst)
    return field_array(
        series.transpose(0, 3, 1, 2),
        name="taxi_flow",
        channels=CHANNELS,
        time=times,
        time_attrs={"long_name": "start of the 30-minute slot (local time, New York; the files carry no dates: "
                                 "2016-01-01 00:00 plus 30 min a frame)", "standard_name": "time"},
        split=split,
        attrs={
            "units": "trips per 30 min",
            "long_name": "taxi trip flow",
            "comment": "inflow: taxi trips ending in the cell during the 30-minute slot; outflow: trips starting "
                       "there; whole counts. Split: the files' own cut (flow_train / flow_val / flow_test).",
            "generator": "nytaxi",
            "source": str(config["source"]),  # as written in params: the same bytes on every machine
            "source_files": " ".join(FILES),
            "origin": "STSAN repository (github: haoxingl/STSAN, commit f5d09f8, data/NYTaxi)",
            "frames_per_file": "; ".join(f"{p.name}: {len(f)}" for p, f in zip(paths, flows)),
            "split_rule": "defined by the files: " + ", ".join(
                f"{s} = {p.name} ({str(times[a])[:16]} .. {str(times[b - 1])[:16]})"
                for s, p, a, b in zip(SPLITS, paths, np.cumsum([0] + [len(f) for f in flows[:-1]]),
                                      np.cumsum([len(f) for f in flows]))),
            "time_step": "30 min",
            "trips": joined["trips"],
            "trips_under_way_at_file_ends": " ".join(str(n) for n in joined["under_way"]),
            "checks": "shapes as documented; finite, non-negative whole counts; joined in order train, val, test: "
                      "cumulative outflow >= cumulative inflow at every frame and equal at the end (every trip "
                      "counted once each way)",
            "dst_note": f"2016-03-13 02:00-03:00 did not exist in New York local time (clocks went forward); "
                        f"the files hold near-empty frames there, kept as they are ({dst_trips})",
            "seed": int(seed),
        },
    )
