"""Stage 1, ingest: a registered dataset becomes ``data/processed/{dataset}.nc``.

The file holds the field with dims ``(time, channel, y, x)``, a ``split`` flag per time step,
a ``segment`` id per time step (no window crosses segments: separate videos, events, gaps
in time) and normalisation statistics computed on the training split only. Splits are
contiguous blocks in time order (train, val, test) unless the dataset defines its own
(KTH's subject split).

The field may be a dask array (file readers build one lazily): statistics are reduced chunk
by chunk and the NetCDF is written chunk by chunk, so peak memory is a few chunks of
``chunk_frames`` frames whatever the dataset's length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Iterator

import dask
import dask.array as da
import numpy as np
import xarray as xr

from nuwa.datasets import defines_split, get_dataset, with_defaults
from nuwa.io import DataFileError, params_entry_sha256
# the split layout and the window count live in nuwa.windows (numpy only: params validation uses
# them too); re-exported here, where they were first defined
from nuwa.windows import SPLIT_CODES, SPLITS, TIME_STEP_KEYS, empty_split_message, split_flags  # noqa: F401

DEFAULT_CHUNK_FRAMES = 64
DIMS = ("time", "channel", "y", "x")
WINDOW_KEYS = ("input_frames", "output_frames", "window_stride")


def _dataset_split(field: xr.DataArray, config: dict, dataset_name: str) -> np.ndarray:
    if "split" not in field.coords:
        return split_flags(field.sizes["time"], config["split"])
    names = np.asarray(field["split"].values).astype(str)
    unknown = sorted(set(names) - set(SPLITS))
    if unknown:
        raise ValueError(f"dataset {dataset_name!r}: split coordinate has value(s) {unknown} (allowed: {', '.join(SPLITS)})")
    return np.array([SPLIT_CODES[name] for name in names], dtype=np.int8)


def _first_nonfinite(values: da.Array) -> tuple[int, ...]:
    """Index of the first NaN/Inf, found frame by frame (only called when there is one)."""
    per_frame = (~da.isfinite(values)).any(axis=(1, 2, 3)).compute()
    t = int(np.flatnonzero(per_frame)[0])
    frame = np.asarray(values[t])
    return (t, *(int(i) for i in np.argwhere(~np.isfinite(frame))[0]))


def build_processed(field: xr.DataArray, config: dict, dataset_name: str,
                    chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> xr.Dataset:
    """Attach split flags, segments, train-only statistics and CF attributes to a raw field.

    The result's field stays lazy when ``field`` is (dask); everything else is small.
    """
    if tuple(field.dims) != DIMS:
        raise ValueError(f"dataset {dataset_name!r}: generator returned dims {tuple(field.dims)}, expected {DIMS}")
    n_times = field.sizes["time"]
    flags = _dataset_split(field, config, dataset_name)
    segment = (np.asarray(field["segment"].values, dtype=np.int32) if "segment" in field.coords
               else np.zeros(n_times, dtype=np.int32))
    values = da.asarray(field.data).astype(np.float32).rechunk((chunk_frames, -1, -1, -1))
    is_train = flags == SPLIT_CODES["train"]
    if not is_train.any():
        fix = (f"split.train {config['split']['train']} of {n_times} frames gives none: raise split.train"
               if "split" in config and "split" not in field.coords else
               f"the split is the dataset's own (kind {config.get('kind')})")
        raise ValueError(f"{_where(field, dataset_name)}: the training split is empty ({fix})")
    if all(key in config for key in WINDOW_KEYS):  # a params entry (not a bare reader test): check its windows
        check_windows(field, flags, segment, config, dataset_name)
    train = values[np.flatnonzero(is_train)].astype(np.float64)
    nonfinite, mean, std, data_min, data_max = dask.compute(
        (~da.isfinite(values)).sum(), train.mean(axis=(0, 2, 3)), train.std(axis=(0, 2, 3)), train.min(), train.max())
    if nonfinite:
        first = _first_nonfinite(values)
        source = f" (source {field.attrs['source']})" if field.attrs.get("source") else ""
        raise DataFileError(f"dataset {dataset_name!r}{source}: {int(nonfinite)} non-finite value(s) (NaN or Inf), "
                            f"first at index (time, channel, y, x) = {first}, time {str(field['time'].values[first[0]])[:19]}; "
                            "the reader must fill or drop missing data explicitly" + _nan_hint(config.get("kind")))
    if (std == 0).any():
        constant = [str(c) for c, s in zip(field["channel"].values, std) if s == 0]
        raise ValueError(f"dataset {dataset_name!r}: channel(s) {', '.join(constant)} constant over the training "
                         "split (zero variance): cannot normalise")
    name = field.name or "field"
    # .variable: a coordinate DataArray would bring the other coordinates (split, segment) along
    coords = {c: field.coords[c].variable for c in field.coords if c not in ("split", "segment")}
    dataset = xr.Dataset(
        {
            name: (DIMS, values, dict(field.attrs)),
            "split": ("time", flags, {
                "long_name": "data split of each time step",
                "flag_values": np.arange(len(SPLITS), dtype=np.int8),
                "flag_meanings": " ".join(SPLITS),
                "comment": "defined by the dataset" if "split" in field.coords else "contiguous time blocks",
            }),
            "segment": ("time", segment, {
                "long_name": "segment of consecutive frames (no window crosses a segment boundary)", "units": "1"}),
            "norm_mean": ("channel", mean.astype(np.float32),
                          {"long_name": "per-channel mean over the training split", "units": field.attrs.get("units", "1")}),
            "norm_std": ("channel", std.astype(np.float32),
                         {"long_name": "per-channel standard deviation over the training split",
                          "units": field.attrs.get("units", "1")}),
        },
        coords=coords,
    )
    for dim, long_name in (("y", "grid row"), ("x", "grid column")):
        if dim not in dataset.coords:
            dataset = dataset.assign_coords({dim: np.arange(field.sizes[dim], dtype=np.int32)})
            dataset[dim].attrs.update({"long_name": long_name, "units": "1"})
    if not _dates(dataset["time"].values):  # a frame index; dates carry their CF units in the encoding
        dataset["time"].attrs.setdefault("long_name", "time step index")
        dataset["time"].attrs.setdefault("units", "1")
    split_text = ("defined by the dataset" if "split" in field.coords else
                  f"train={config['split']['train']} val={config['split']['val']} test={config['split']['test']}")
    dataset.attrs = {
        "title": f"nuwa processed dataset {dataset_name}",
        "Conventions": "CF-1.10",
        "nuwa_dataset": dataset_name,
        "nuwa_kind": config["kind"],
        "nuwa_variable": name,
        "data_min": float(data_min),
        "data_max": float(data_max),
        # metrics (SSIM, PSNR) use the real range of the data, from the training split
        "data_range": max(float(data_max) - float(data_min), 1e-12),
        "split_fractions": split_text,
        "segments": int(len(np.unique(segment))),
    }
    return dataset


def _nan_hint(kind: str | None) -> str:
    """'; ' + the kind's module's ``NAN_HINT`` (the params keys that fill missing data), if it has one."""
    if not kind:
        return ""
    try:
        module = sys.modules.get(get_dataset(kind).__module__)
    except KeyError:
        return ""
    hint = getattr(module, "NAN_HINT", None)
    return f"; {hint}" if hint else ""


def _dates(values: np.ndarray) -> bool:
    """datetime64, or cftime dates (a non-standard CF calendar: kind gridded's ``calendar``)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.datetime64):
        return True
    return values.dtype == object and values.size > 0 and hasattr(values.flat[0], "calendar")


def _where(field: xr.DataArray, dataset_name: str) -> str:
    source = field.attrs.get("source")
    return f"dataset {dataset_name!r}" + (f" (source {source})" if source else "")


def check_windows(field: xr.DataArray, flags: np.ndarray, segment: np.ndarray, config: dict,
                  dataset_name: str) -> None:
    """Refuse, before anything is computed, a dataset whose frames cut into mostly one-frame
    segments (a time step setting finer than the frames' spacing makes every step a gap) or a
    split without a single window (found today at training time only). The window count is
    :func:`nuwa.windows.window_starts`', the one that serves the windows later."""
    where = _where(field, dataset_name)
    problem = single_frame_segments(field, segment, config)
    if problem:
        raise DataFileError(f"{where}: {problem}")
    message = empty_split_message(flags, config, segment,
                                  split_by_dataset=config["kind"] if "split" not in config else None)
    if message:
        raise ValueError(f"{where}: {message}")


def single_frame_segments(field: xr.DataArray, segment: np.ndarray, config: dict) -> str | None:
    """The problem when single-frame segments hold at least half of the frames (and there are at
    least two): no window can use them. With a datetime axis, the spacing found is named."""
    lengths = np.bincount(np.unique(segment, return_inverse=True)[1])
    singles = int((lengths == 1).sum())
    if singles < 2 or 2 * singles < len(segment):
        return None
    step_key = next((key for key in TIME_STEP_KEYS if key in config), None)
    setting = f"{step_key}: {config[step_key]!r}" if step_key else "the reader's segments"
    spacing = describe_spacing(np.asarray(field["time"].values))
    found = f"; the frames are {spacing} apart" if spacing else ""
    fix = (f"set {step_key} to the spacing of the frames" + (" (calendar months: 1MS)" if "month" in found else "")
           if step_key else "check how the reader cuts the frames into segments")
    return (f"{singles} of {len(lengths)} segments are a single frame ({singles} of {len(segment)} frames), so no "
            f"window can use them: with {setting} every larger step between frames is a gap that starts a new "
            f"segment{found}; {fix}")


def describe_spacing(times: np.ndarray) -> str | None:
    """The spacing of consecutive times in words ('1 day', '28 to 31 days (calendar months)',
    'mostly 6:00:00 (3:00:00 to 12:00:00)'); None for times that are not dates."""
    import pandas as pd

    if times.size < 2:
        return None
    try:
        diffs = pd.to_timedelta(pd.Series(np.diff(times)))
    except (TypeError, ValueError):
        return None
    counts = diffs.value_counts()
    low, high = diffs.min(), diffs.max()
    if low == high:
        return duration_words(low)
    days = {d.days for d in diffs if d.seconds == 0}
    if len(days) == len(set(diffs)) and days <= {28, 29, 30, 31}:
        return f"{min(days)} to {max(days)} days (calendar months)"
    return f"mostly {duration_words(counts.index[0])} ({duration_words(low)} to {duration_words(high)})"


def duration_words(delta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return str(delta)


#: Set to 1 to let ``ingest.scheduler`` name a dask scheduler on another machine (README, 'Ingest on a dask cluster').
ALLOW_REMOTE_SCHEDULER = "NUWA_ALLOW_REMOTE_SCHEDULER"
#: dask.distributed's transports that take a host (``inproc://`` never leaves the process).
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")
_SCHEDULER_ALLOWED = ("local, threads, or a loopback address: tcp://127.0.0.1:PORT, tcp://[::1]:PORT or "
                      "tcp://localhost:PORT (also tls, ucx, ws, wss)")
_HOST_PORT = re.compile(r"(\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*))(:(?P<port>[0-9]{1,5}))?")


def check_scheduler_address(value: object, allow_remote: bool | None = None) -> str | None:
    """The problem with ``ingest.scheduler`` = ``value`` (one line, starting ``ingest.scheduler:``),
    or None when ingest may use it. Nothing is looked up but ``localhost`` (the hosts file) and
    nothing is connected to.

    dask.distributed exchanges pickles with the scheduler: whoever listens at the address can run
    code in the ingest process. A parameter file is untrusted input, so an address is allowed only
    on the loopback interface (127.0.0.0/8, ::1, ``localhost`` when it resolves to loopback only)
    unless ``allow_remote`` (default: the environment variable ``NUWA_ALLOW_REMOTE_SCHEDULER`` is
    ``1``). ``local``, ``threads`` and ``inproc://`` addresses start no connection. Unix sockets:
    dask.distributed has no such transport, so ``unix://`` is refused like any unknown scheme."""
    if value is None or value in ("local", "threads"):
        return None
    if not isinstance(value, str):
        return f"ingest.scheduler: {value!r} has type {type(value).__name__}, expected text ({_SCHEDULER_ALLOWED})"
    scheme, separator, location = value.partition("://")
    if not separator:  # dask reads a bare host:port as tcp
        scheme, location = "tcp", value
    if scheme == "inproc":
        return None
    if scheme not in SCHEDULER_SCHEMES:
        return (f"ingest.scheduler: {value!r}: {scheme!r} is not a transport of dask.distributed "
                f"(allowed: {_SCHEDULER_ALLOWED})")
    match = _HOST_PORT.fullmatch(location)
    if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
        return (f"ingest.scheduler: {value!r} is not an address of the form {scheme}://HOST:PORT "
                f"(allowed: {_SCHEDULER_ALLOWED})")
    if allow_remote is None:
        allow_remote = os.environ.get(ALLOW_REMOTE_SCHEDULER) == "1"
    if allow_remote:
        return None
    host = match["v6"] or match["host"]
    problem = _not_loopback(host)
    if problem is None:
        return None
    return (f"ingest.scheduler: {value!r}: {problem}, and dask exchanges pickles with its scheduler: whoever "
            f"listens there could run code here (allowed: {_SCHEDULER_ALLOWED}; for a remote cluster you trust, "
            f"set {ALLOW_REMOTE_SCHEDULER}=1)")


def _not_loopback(host: str) -> str | None:
    """Why ``host`` is not a loopback host, or None. Only IP literals and ``localhost`` count: any
    other name would need a DNS answer, which may differ when dask connects."""
    import ipaddress
    import socket

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        mapped = getattr(address, "ipv4_mapped", None)
        return None if (mapped or address).is_loopback else f"{host} is not a loopback address"
    if host.lower() != "localhost":
        return f"host name {host!r} is not a loopback address (no name but localhost is looked up)"
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError as exc:
        return f"localhost does not resolve ({exc})"
    outside = sorted(a for a in found if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    return f"localhost resolves to {', '.join(outside)}" if outside else None


@contextlib.contextmanager
def dask_scheduler(scheduler: str | None, threads: int = 1, source: str | None = None) -> Iterator[object]:
    """Where ingest's dask work runs, from ``ingest.scheduler`` in params.yaml.

    * ``local`` (default): a dask.distributed LocalCluster started for this job (in-process
      workers, ``threads`` threads), closed at the end; its transport is in-process and its two
      HTTP servers (which dask starts anyway) listen on 127.0.0.1 only;
    * ``threads``: dask's plain threaded scheduler, no cluster;
    * an address such as ``tcp://127.0.0.1:8786``: an existing dask.distributed cluster (its
      workers must import nuwa and reach the source files). Only a loopback address, unless
      ``NUWA_ALLOW_REMOTE_SCHEDULER=1`` (:func:`check_scheduler_address`): refused before any
      connection, with ``source`` (the params file) first in the message when given.
    """
    problem = check_scheduler_address(scheduler)
    if problem:
        from nuwa.config import ParamsError

        raise ParamsError(f"{source}: {problem}" if source else problem)
    if scheduler in (None, "threads"):
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        # silence_logs: a reader's error is re-raised here and reported in one line; the
        # worker's own "Compute Failed" traceback would only repeat it. No dashboard; the
        # scheduler's and the worker's HTTP servers (started anyway) on free loopback ports:
        # 8787 would be taken by ingest jobs running at once, and every interface (dask's
        # default) would publish them to the network
        with LocalCluster(n_workers=1, threads_per_worker=max(1, threads), processes=False,
                          dashboard_address=None, worker_dashboard_address="127.0.0.1:0",
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                          silence_logs=logging.CRITICAL) as cluster, \
                Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except OSError as exc:
        raise ValueError(f"ingest.scheduler: cannot reach the dask scheduler at {scheduler!r} ({exc})") from None
    with client:
        yield client


def ingest(dataset_name: str, config: dict, chunk_frames: int = DEFAULT_CHUNK_FRAMES) -> xr.Dataset:
    entry_sha256 = params_entry_sha256(config)  # the params entry as given, before the kind's defaults
    config = with_defaults(config)
    if defines_split(config["kind"]) and "split" in config:
        raise ValueError(f"dataset {dataset_name!r}: kind {config['kind']!r} defines its own split; remove 'split'")
    field = get_dataset(config["kind"])(config, int(config["seed"]))
    processed = build_processed(field, config, dataset_name, chunk_frames=chunk_frames)
    # which params entry the file was made of: every stage that reads it compares its own
    # (nuwa.windows.check_processed_identity)
    processed.attrs["nuwa_params_sha256"] = entry_sha256
    return processed
