"""Sliding windows over a processed dataset, and the map-style dataset on top of them.

A window is identified by its start index in the time axis (``source_index``); every stage
carries that index, so masks and bank samples always meet their own source window.

torch is imported only where a tensor is made: the stages that read physical-unit windows
(bank, figures) never import it, which saves each of their jobs about 2 s of start-up.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field as dataclass_field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import torch

# numpy only at import time: params validation (nuwa.config) counts windows with this module's
# split_flags and window_starts before any job starts, without loading xarray or dask
SPLITS = ("train", "val", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
# params keys of the readers' nominal time step (a larger step between frames is a gap: a new segment)
TIME_STEP_KEYS = ("time_step", "time_step_minutes")


@dataclass
class SeriesData:
    """A processed dataset in memory: field (time, channel, y, x) and what windows need."""

    field: np.ndarray  # physical units, float32
    split: np.ndarray  # int8 flag per time step
    mean: np.ndarray  # (channel,)
    std: np.ndarray  # (channel,)
    data_range: float
    name: str
    attrs: dict
    segment: np.ndarray | None = None  # int per time step; None: one segment
    # bool (y, x): pixels observed in at least one frame (the processed file's ``observed``);
    # None: every pixel is. Never-observed pixels hold a fill and are left out of every loss and metric
    observed: np.ndarray | None = None
    # the processed file's coordinates ``time``, ``channel``, ``y``, ``x``: name -> (values, attrs);
    # what example predictions are labelled with (timestamps, lead times, map coordinates)
    coords: dict = dataclass_field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.observed is not None:  # a bool (y, x) mask, or None when every pixel is observed
            observed = np.asarray(self.observed).astype(bool)
            if observed.shape != self.field.shape[2:]:
                raise ValueError(f"observed has shape {observed.shape}, the field's (y, x) is {self.field.shape[2:]}")
            if not observed.any():
                raise ValueError("observed marks every pixel never observed: nothing to score")
            self.observed = None if observed.all() else observed

    @cached_property
    def normalised(self) -> torch.Tensor:
        """The whole field normalised (float32), computed on first use and shared by every split's windows."""
        import torch

        return torch.from_numpy(self.normalise(self.field))

    def normalise(self, values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(values - mean) / std per channel (channel axis third from last), as float32.

        ``out`` (float32, may be ``values``): written in place, with the same arithmetic (the
        same bits) as without it.
        """
        mean, std = self.mean[:, None, None], self.std[:, None, None]
        if out is None:
            return ((values - mean) / std).astype(np.float32)
        if values.dtype == mean.dtype == std.dtype == out.dtype == np.float32:
            # float32 throughout, as above: subtract, then divide, each rounded to float32
            np.subtract(values, mean, out=out)
            return np.divide(out, std, out=out)
        out[...] = self.normalise(values)
        return out

    def denormalise(self, values):
        """values * std + mean per channel, for a numpy array or a torch tensor (same type back)."""
        mean, std = self.mean[:, None, None], self.std[:, None, None]
        if not isinstance(values, np.ndarray):  # a tensor: torch is already imported
            import torch

            mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        return values * std + mean


def load_series(path, dataset_name: str | None = None, entry: dict | None = None) -> SeriesData:
    """The processed file ``path`` (``nuwa ingest``'s), checked. ``dataset_name``: the dataset it
    must be (its ``nuwa_dataset`` attribute); ``entry``: that dataset's params entry, whose
    ``height``/``width`` its grid must have and whose SHA-256 (:func:`nuwa.io.params_entry_sha256`)
    its ``nuwa_params_sha256`` attribute must be (:func:`check_processed_identity`)."""
    from nuwa.io import check_finite, open_netcdf

    dataset = open_netcdf(path, variables=("split", "norm_mean", "norm_std"))
    name = dataset.attrs.get("nuwa_variable")
    if name not in dataset.data_vars:
        raise DataFileError(f"{path}: attribute nuwa_variable={name!r} does not name a data variable")
    field = dataset[name]
    if tuple(field.dims) != ("time", "channel", "y", "x"):
        raise DataFileError(f"{path}: variable {name!r} has dims {tuple(field.dims)}, expected ('time', 'channel', 'y', 'x')")
    check_processed_identity(path, dataset.attrs, tuple(field.shape), dataset_name, entry)
    values = np.asarray(field.values, dtype=np.float32)
    check_finite(values, f"{path}: variable {name!r}")
    for variable, dim in (("split", "time"), ("segment", "time"), ("norm_mean", "channel"), ("norm_std", "channel")):
        if variable in dataset.variables and tuple(dataset[variable].dims) != (dim,):
            raise DataFileError(f"{path}: variable {variable!r} has dims {tuple(dataset[variable].dims)}, "
                                f"expected ({dim!r},)")
    split = dataset["split"].values
    unknown = sorted(set(np.unique(split).tolist()) - set(SPLIT_CODES.values()))
    if unknown:
        raise DataFileError(f"{path}: variable 'split' has value(s) {unknown} (allowed: "
                            f"{', '.join(f'{code} = {name}' for name, code in SPLIT_CODES.items())})")
    mean, std = (dataset[v].values.astype(np.float32) for v in ("norm_mean", "norm_std"))
    channels = [str(c) for c in (dataset["channel"].values if "channel" in dataset.coords else range(len(std)))]
    for variable, stat in (("norm_mean", mean), ("norm_std", std)):
        bad = [c for c, v in zip(channels, stat) if not np.isfinite(v) or (variable == "norm_std" and v <= 0)]
        if bad:
            raise DataFileError(f"{path}: variable {variable!r} is {stat[channels.index(bad[0])]} for channel "
                                f"{bad[0]!r}: cannot normalise (ingest refuses a constant or non-finite channel; "
                                "was the file edited?)")
    data_range = dataset.attrs.get("data_range")
    if not isinstance(data_range, (int, float, np.number)) or not np.isfinite(data_range) or data_range <= 0:
        raise DataFileError(f"{path}: attribute data_range is {data_range!r}, expected a positive number "
                            "(the metrics' data range, written by ingest)")
    # files written before segments existed hold one segment
    segment = dataset["segment"].values.astype(np.int64) if "segment" in dataset.variables else None
    return SeriesData(field=values, split=split.astype(np.int8), segment=segment, mean=mean, std=std,
                      data_range=float(data_range), name=name, observed=_observed_mask(dataset, values.shape, path),
                      coords={dim: (np.asarray(dataset[dim].values), dict(dataset[dim].attrs))
                              for dim in ("time", "channel", "y", "x") if dim in dataset.coords},
                      attrs={**dataset.attrs, "units": field.attrs.get("units", "1"),
                             "long_name": field.attrs.get("long_name", name)})


_NOTED_UNHASHED: set[str] = set()  # old processed files already noted (once per file and process)


def check_processed_identity(path, attrs: dict, shape: tuple[int, ...], dataset_name: str | None,
                             entry: dict | None) -> None:
    """That a processed file (its global ``attrs``, its field's (time, channel, y, x) ``shape``)
    is the one ingest made of params entry ``datasets.<dataset_name>`` as it is now: its
    ``nuwa_dataset``, its grid against the entry's height and width, and its
    ``nuwa_params_sha256`` against the entry's. A file made before ingest recorded the hash is
    accepted on the checks that can be made (name and grid), with a note on stderr. Each
    mismatch: one :class:`DataFileError` line naming the file, the field, both values."""
    if dataset_name is None:
        return
    from nuwa.io import params_entry_sha256

    rerun = f"nuwa ingest --dataset {dataset_name}"
    found = attrs.get("nuwa_dataset")
    if found is None:
        raise DataFileError(f"{path}: attribute nuwa_dataset is missing, expected {dataset_name!r}: not a processed "
                            f"file written by nuwa ingest ({rerun} writes one)")
    if str(found) != dataset_name:
        raise DataFileError(f"{path}: attribute nuwa_dataset is {str(found)!r}, expected {dataset_name!r}: the "
                            f"processed file of another dataset ({rerun} writes {dataset_name}'s)")
    if entry is None:
        return
    grid = {"height": shape[2], "width": shape[3]}
    for key, size in grid.items():
        if key in entry and int(entry[key]) != int(size):
            raise DataFileError(f"{path}: field has (y, x) = ({shape[2]}, {shape[3]}), but datasets.{dataset_name} "
                                f"has {key} {entry[key]}: made with another version of that entry; rerun {rerun}")
    recorded, expected = attrs.get("nuwa_params_sha256"), params_entry_sha256(entry)
    if recorded is None:
        if str(path) not in _NOTED_UNHASHED:
            _NOTED_UNHASHED.add(str(path))
            import sys

            print(f"nuwa: note: {path}: made before nuwa ingest recorded its params entry (no attribute "
                  f"nuwa_params_sha256): only its dataset name and grid were checked against "
                  f"datasets.{dataset_name}; {rerun} records it", file=sys.stderr)
        return
    if str(recorded) != expected:
        raise DataFileError(f"{path}: attribute nuwa_params_sha256 is {str(recorded)[:12]}..., expected "
                            f"{expected[:12]}... (the SHA-256 of params datasets.{dataset_name}): made with another "
                            f"version of that entry; rerun {rerun}")


def _observed_mask(dataset, shape: tuple[int, ...], path) -> np.ndarray | None:
    """The processed file's ``observed(y, x)`` flags (1 observed, 0 never observed: nuwa.datasets.gridded's
    ``never_observed: mask``) as a bool array, or None when the file has none or every pixel is observed
    (then losses and metrics are computed exactly as without a mask)."""
    if "observed" not in dataset.variables:
        return None
    flags = dataset["observed"]
    if tuple(flags.dims) != ("y", "x") or flags.shape != tuple(shape[2:]):
        raise DataFileError(f"{path}: variable 'observed' has dims {tuple(flags.dims)} and shape {flags.shape}, "
                            f"expected ('y', 'x') and {tuple(shape[2:])}")
    values = np.asarray(flags.values)
    unknown = sorted(set(np.unique(values).tolist()) - {0, 1})
    if unknown:
        raise DataFileError(f"{path}: variable 'observed' has value(s) {unknown} (allowed: 0 = never observed, "
                            "1 = observed)")
    if not values.any():
        raise DataFileError(f"{path}: variable 'observed' marks every pixel never observed: nothing to score")
    return None if values.all() else values.astype(bool)


def window_starts(split_flags: np.ndarray, split: str, window_length: int, stride: int,
                  segment: np.ndarray | None = None) -> np.ndarray:
    """Start indices of windows whose frames all lie in ``split`` and in one segment.

    Windows are laid out from the start of each run of consecutive frames sharing split and
    segment, ``stride`` apart, so a contiguous split in one segment gives
    ``first, first + stride, ...`` as before segments existed.
    """
    flags = np.asarray(split_flags)
    if segment is None:
        segment = np.zeros(len(flags), dtype=np.int64)
    segment = np.asarray(segment)
    if len(segment) != len(flags):
        raise DataFileError(f"segment has {len(segment)} entries but split has {len(flags)}")
    if len(flags) == 0:
        return np.zeros(0, dtype=np.int64)
    boundary = np.flatnonzero((np.diff(flags) != 0) | (np.diff(segment) != 0)) + 1
    run_starts = np.concatenate([[0], boundary])
    run_ends = np.concatenate([boundary, [len(flags)]])
    code = SPLIT_CODES[split]
    # within one segment (one continuous series) a split must be one block: frames of a split
    # scattered between another's would leak neighbouring frames across the split
    pairs = list(zip(segment[run_starts].tolist(), flags[run_starts].tolist()))
    if len(set(pairs)) != len(pairs):
        seg, flag = next(pair for pair in pairs if pairs.count(pair) > 1)
        raise DataFileError(f"split {SPLITS[flag]!r} is not one contiguous block of time steps in segment {seg}")
    starts = [np.arange(first, end - window_length + 1, stride, dtype=np.int64)
              for first, end in zip(run_starts, run_ends) if flags[first] == code]
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


def split_flags(n_times: int, fractions: dict) -> np.ndarray:
    """Contiguous blocks: the first ``train`` fraction of steps, then val, then the rest test."""
    n_train = int(n_times * fractions["train"])
    n_val = int(n_times * fractions["val"])
    flags = np.full(n_times, SPLIT_CODES["test"], dtype=np.int8)
    flags[:n_train] = SPLIT_CODES["train"]
    flags[n_train:n_train + n_val] = SPLIT_CODES["val"]
    return flags


def window_counts(flags: np.ndarray, window_length: int, stride: int,
                  segment: np.ndarray | None = None) -> dict[str, int]:
    """Windows per split (train, val, test): the windows :class:`WindowDataset` serves, counted by
    :func:`window_starts` itself (the one place windows are laid out)."""
    return {name: len(window_starts(flags, name, window_length, stride, segment)) for name in SPLITS}


def _segment_lengths(segment: np.ndarray) -> list[int]:
    """Frames per segment, in time order (segments are runs of one id)."""
    segment = np.asarray(segment)
    if segment.size == 0:
        return []
    boundary = np.flatnonzero(np.diff(segment) != 0) + 1
    return np.diff(np.concatenate([[0], boundary, [segment.size]])).tolist()


def _smallest_fraction(frames: int, length: int) -> float:
    """The smallest fraction (in hundredths) whose block of ``frames`` (truncated, as in
    :func:`split_flags`) holds ``length`` frames."""
    hundredths = math.ceil(100 * length / frames)
    while hundredths < 100 and int(frames * (hundredths / 100)) < length:
        hundredths += 1
    return hundredths / 100


def describe_lengths(lengths: list[int], limit: int = 8) -> str:
    """'40, 40, 40' or, for many, '54 (1 to 1 frames; 54 of a single frame)'."""
    if len(lengths) <= limit:
        return ", ".join(map(str, lengths))
    singles = sum(1 for n in lengths if n == 1)
    return (f"{min(lengths)} to {max(lengths)} (median {int(np.median(lengths))}"
            + (f"; {singles} of a single frame" if singles else "") + ")")


def empty_split_message(flags: np.ndarray, config: dict, segment: np.ndarray | None = None,
                        frames_from: str = "", split_by_dataset: str | None = None) -> str | None:
    """None when every split (train, val, test) has at least one window; else one sentence: the
    frames and windows per split and the settings to change. ``config``: the params entry
    (``input_frames``, ``output_frames``, ``window_stride``; ``split`` and ``length`` when it has
    them). ``frames_from``: where the frame count comes from, e.g. '(length 160)'.
    ``split_by_dataset``: the kind, when the dataset defines its own split (not ``split``).

    Params validation (frame count known from the params alone) and ingest (the real frames and
    segments) both refuse with it, so the two say the same thing."""
    flags = np.asarray(flags)
    inputs, outputs, stride = (int(config[k]) for k in ("input_frames", "output_frames", "window_stride"))
    length = inputs + outputs
    windows = window_counts(flags, length, stride, segment)
    empty = [name for name in SPLITS if windows[name] == 0]
    if not empty:
        return None
    frames = {name: int((flags == SPLIT_CODES[name]).sum()) for name in SPLITS}
    lengths = _segment_lengths(segment) if segment is not None else [flags.size]
    where = f"{flags.size} frames{' ' + frames_from if frames_from else ''}"
    if len(lengths) > 1:
        where += (f" in {len(lengths)} segments of {describe_lengths(lengths)} frames "
                  "(no window crosses a segment boundary)")
    listed = ", ".join(empty[:-1]) + (" and " if len(empty) > 1 else "") + empty[-1]
    counts = (f"{where} split into {' / '.join(str(frames[n]) for n in SPLITS)} (train / val / test) give "
              f"{' / '.join(str(windows[n]) for n in SPLITS)} windows of input_frames + output_frames = "
              f"{inputs} + {outputs} = {length} frames, window_stride {stride}")
    fixes = [f"lower input_frames or output_frames (each split's block needs at least {length} consecutive frames"
             + (" within one segment" if len(lengths) > 1 else "") + ")"]
    if split_by_dataset:
        fixes[0] += f" (the split is kind {split_by_dataset}'s own: there is no split key to change)"
    elif "split" in config:
        if len(lengths) == 1 and 3 * length <= flags.size:
            needed = _smallest_fraction(flags.size, length)
            fixes.append(f"raise {' and '.join(f'split.{name}' for name in empty)} to at least {needed:g} "
                         f"({length} of {flags.size} frames{', taking it from the others' if len(empty) < 3 else ''})")
        elif len(lengths) == 1:
            fixes.append(f"change split ({flags.size} frames cannot hold three blocks of {length})")
        else:
            fixes.append("change split (fractions of each segment's frames for kinds that split per segment, "
                         "else of all frames)")
    if "length" in config:
        fixes.append("raise length")
    if len(lengths) > 1:
        step_key = next((key for key in TIME_STEP_KEYS if key in config), None)
        fixes.append("make the segments longer (" + (f"a gap in time starts a new segment: check {step_key} against "
                                                     "the spacing of the frames" if step_key else
                                                     "the dataset's events, videos or gaps in time") + ")")
    return (f"no window fits in the {listed} split{'s' if len(empty) > 1 else ''} (every split needs at least "
            f"one): {counts}; to fix: {', or '.join(fixes)}")


class WindowDataset:
    """Normalised (index, input, target) windows of one split; index = window start.

    A map-style dataset (``__len__`` and ``__getitem__``), as torch's DataLoader takes it.
    """

    def __init__(self, series: SeriesData, split: str, input_frames: int, output_frames: int, stride: int):
        self.series = series
        self.input_frames = input_frames
        self.output_frames = output_frames
        self.starts = window_starts(series.split, split, input_frames + output_frames, stride, series.segment)

    @property
    def normalised(self) -> torch.Tensor:
        """The normalised field (the series', computed once: not by stages that read physical units only)."""
        return self.series.normalised

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, item: int):
        start = int(self.starts[item])
        middle = start + self.input_frames
        window = self.normalised
        return start, window[start:middle], window[middle:middle + self.output_frames]

    def inputs(self, starts: np.ndarray) -> np.ndarray:
        """Physical-unit inputs (N, T_in, C, H, W) for the given window starts."""
        index = np.asarray(starts)[:, None] + np.arange(self.input_frames)[None, :]
        return self.series.field[index]

    def targets_normalised(self, starts) -> torch.Tensor:
        import torch

        index = torch.as_tensor(np.asarray(starts))[:, None] + self.input_frames + torch.arange(self.output_frames)[None, :]
        return self.normalised[index]


def select_dataset(series: SeriesData, config: dict, split: str) -> WindowDataset:
    return WindowDataset(series, split, config["input_frames"], config["output_frames"], config["window_stride"])


SUBSET_SELECTIONS = ("recent", "seeded")


def training_subset(train: WindowDataset, percent: int, selection: str, seed: int, *names: str) -> WindowDataset:
    """The windows of ``train`` that a cell with ``percent`` % of the training data uses (data
    scarcity): ``ceil(percent / 100 · n)`` windows of each segment's ``n`` (at least one), so that
    every event of a pooled dataset keeps its share. ``recent``: each segment's last windows, the
    block just before validation (what a forecaster with a short record has); ``seeded``: a
    random subset drawn from (``seed``, ``names``), the same for every variant of a seed (the
    paired design). 100: ``train`` itself. The bank of such a cell is built from the same windows."""
    from nuwa.seeding import derive_seed

    if not 1 <= int(percent) <= 100:
        raise ValueError(f"train_percent {percent!r}: expected an integer in 1..100")
    if selection not in SUBSET_SELECTIONS:
        raise ValueError(f"train.subset {selection!r}: expected one of {', '.join(SUBSET_SELECTIONS)}")
    if percent == 100:
        return train
    starts = np.asarray(train.starts)
    segment = train.series.segment
    segment_of = segment[starts] if segment is not None else np.zeros(len(starts), dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "train-subset", *names))
    keep = []
    for value in dict.fromkeys(segment_of.tolist()):  # segments in time order
        mine = np.flatnonzero(segment_of == value)
        count = max(1, math.ceil(len(mine) * percent / 100))
        keep.append(mine[-count:] if selection == "recent" else np.sort(rng.choice(mine, count, replace=False)))
    subset = copy.copy(train)
    subset.starts = starts[np.sort(np.concatenate(keep))]
    return subset


def patch_grid(series: SeriesData, config: dict) -> tuple[int, int, int]:
    """(steps, patch rows, patch columns) of a dataset's input windows: the shape of one window's
    saliency importance and bank mask."""
    return (config["input_frames"], *(n // config["patch_size"] for n in series.field.shape[2:]))
