"""radar_pool: several radar events (radar / radar_knmi / radar_mch / radar_bom entries) as one dataset.

One shipped event leaves about forty training windows; a radar comparison needs more. This
kind pools events: its entry lists ``members``, each an inline radar config exactly as the
radar kinds take it (``kind``: ``radar`` | ``radar_knmi`` | ``radar_mch`` | ``radar_bom``,
``importer`` and ``importer_kwargs`` (``radar``: required importer; a preset's is fixed),
``source``, ``pattern``, ``crop``, ``downsample``, ``quantity``, ``missing``,
``timestamp_format``, ``time_step_minutes``; see :mod:`nuwa.datasets.radar`). Each member is read by its kind's own
reader (:func:`nuwa.datasets.radar.read_radar`, called once per member; nothing is re-implemented
here), so a member's frames are bit for bit what its own ingest writes.

Entry keys (besides the common ones: ``height``, ``width``, ``split``...):

* ``source``: a folder; a member's relative ``source`` is taken from it (an absolute one is used
  as it is). ``nuwa datasets`` and the workflow look at this folder (present / changed), so it
  should hold every member's files, e.g. ``../shared/data/radar`` with members ``KNMI``, ``mch``.
* ``members``: the list of member configs, in pooling order.
* ``allow_mixed_time_steps`` (default false) and ``allow_mixed_grid_spacing`` (default false):
  see "Time steps and pixel size" below.

Layout along ``time``: the members' frames one after another, in the order listed; each
member's segments (an event, or the two sides of a gap: the three MeteoSwiss events are three
segments of one member) become segments of the pool, numbered 0, 1, ... in order, so no window
ever crosses from one event into another. Times stay the members' real times (UTC, end of the
accumulation interval), so the time axis of a pool increases only where the members are listed
in time order.

Split: per segment. Within every segment, the first ``split.train`` fraction of its frames is
train, then ``split.val``, the rest test (:func:`nuwa.ingest.split_flags` applied to each segment),
returned as the ``split`` coordinate, so every event contributes to each split and each split
is one contiguous block per segment (what :func:`nuwa.windows.window_starts` requires). Whether
a block also holds a whole window depends on its length: with 6 -> 6 windows (12 frames), a
40-frame MeteoSwiss event gives val and test a window only if their fractions are at least 0.3.
(The radar kinds split their whole series into three blocks instead: radar_mch's first two
events are all training.) The processed file's ``split`` variable says "defined by the dataset";
the data variable's ``split_method`` and ``segment_source`` attributes give the fractions and
each segment's train/val/test frames.

Time steps and pixel size. The models see frame indices, not minutes: a window of
``input_frames`` + ``output_frames`` frames spans 60 min at 5-min steps but 72 min at 6-min steps,
and the motion per step (in pixels) scales with the step and with the pixel size. Pooling 5-min
KNMI/MeteoSwiss with 6-min BoM would mix forecast horizons (lead time ``k`` means 5k or 6k
minutes, in training and in the per-lead-time scores) for 10% more frames. So members must share
one nominal time step (``time_step_minutes`` of each member's reader, after its default: the
accumulation period, 5 min KNMI/MeteoSwiss, 6 min BoM prcp-cscn, 10 min prcp-c10) and one output
pixel size (``grid_spacing_m``: 8 km for the KNMI/MeteoSwiss entries, 4 km for the BoM entry):
a member that differs is a ``ValueError`` naming it, unless ``allow_mixed_time_steps`` /
``allow_mixed_grid_spacing`` is true (then the per-frame ``frame_step_minutes`` coordinate and the
member attributes record which frames have which step). The shipped 5-min, 8-km pool is KNMI +
the three MeteoSwiss events; BoM joins only with both flags.

Same quantity. Every member must give the same ``height`` x ``width`` (the entry's: the members'
readers check their crop / downsample against it) and the same quantity and units; also the
same fill value (reflectivity: the dBZ floor differs with the Z-R relation, 2.01 dBZ KNMI/BoM,
5.00 dBZ MeteoSwiss, so pooled reflectivity from both is refused) and, for ``accumulation``
(mm per accumulation period), the same accumulation period. Two members of one kind that share
time steps over overlapping crops (the same frames twice: one event in train and test) are an
error too.

Records. Coordinates along ``time``: ``segment``, ``split``, ``member`` (index of the member the
frame came from), ``frame_step_minutes`` (its member's nominal step), ``missing_fraction`` (the
members' own, concatenated). Along ``(y, x)``: ``missing_frequency`` (fraction of all pooled frames
whose block held a missing source pixel: the members' own frequencies weighted by their frame
counts) and ``member_{i}_missing_frequency`` (member ``i``'s own); ``member_{i}_y`` / ``member_{i}_x``
are member ``i``'s projected pixel centres (metres; the members lie on different projections, so
the pool's ``y``/``x`` are grid indices). Attributes: ``members``, ``member_{i}`` (a one-line
summary), ``member_{i}_attrs`` (all the reader's attributes, JSON), ``segment_member`` (member of
each segment), ``segment_source`` (per segment: member, kind, source, first and last time, frames
per split), the missing-data totals over the pool, and the time step(s) and pixel size(s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nuwa.datasets import field_array, register_dataset
from nuwa.datasets.radar import GENERIC_KIND, KINDS as RADAR_KINDS, PRESETS, SCHEMA as RADAR_SCHEMA, defaults_for
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

KIND = "radar_pool"
MEMBER_KINDS = tuple(RADAR_KINDS)
MEMBER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"kind": {"enum": list(MEMBER_KINDS)}, **RADAR_SCHEMA},
    "required": ["kind", "source"],
    "allOf": [  # kind radar names its importer and files; a preset's importer is its own
        {"if": {"properties": {"kind": {"const": GENERIC_KIND}}},
         "then": {"required": ["importer", "pattern", "timestamp_format"]}},
        *({"if": {"properties": {"kind": {"const": kind}}},
           "then": {"properties": {"importer": {"enum": [preset.importer]}}}} for kind, preset in PRESETS.items()),
    ],
}
SCHEMA = {
    "source": {"type": "string", "minLength": 1},
    "members": {"type": "array", "minItems": 1, "items": MEMBER_SCHEMA},
    "allow_mixed_time_steps": {"type": "boolean"},
    "allow_mixed_grid_spacing": {"type": "boolean"},
}
DEFAULTS = {"allow_mixed_time_steps": False, "allow_mixed_grid_spacing": False}
SPLITS = ("train", "val", "test")  # nuwa.ingest.SPLITS (not imported at module level: it loads dask)


def _member_name(index: int, member: dict, source: Path | None = None) -> str:
    where = source if source is not None else member.get("source")
    return f"{KIND} member {index} ({member.get('kind')}, source {where})"


def _member_configs(config: dict) -> list[tuple[dict, Path]]:
    """Each member's config for its reader (the pool's height/width, absolute source) and source."""
    members = config.get("members")
    if not isinstance(members, list) or not members:
        raise ValueError(f"{KIND} config members must be a non-empty list of radar configs, got {members!r}")
    if not config.get("source"):
        raise KeyError(f"{KIND} config is missing source (the folder the members' relative sources are taken from)")
    root = Path(str(config["source"])).expanduser()
    out = []
    allowed = set(MEMBER_SCHEMA["properties"])
    for index, member in enumerate(members):
        if not isinstance(member, dict):
            raise ValueError(f"{KIND} member {index} must be a mapping (a radar config), got {member!r}")
        if member.get("kind") not in MEMBER_KINDS:
            raise ValueError(f"{_member_name(index, member)}: kind must be one of {', '.join(MEMBER_KINDS)}")
        unknown = sorted(set(member) - allowed)
        if unknown:
            raise ValueError(f"{_member_name(index, member)}: unknown key(s) {unknown} "
                             f"(allowed: {', '.join(sorted(allowed))}; height and width are the pool's)")
        if not member.get("source"):
            raise KeyError(f"{KIND} member {index} ({member['kind']}) is missing source")
        source = Path(str(member["source"])).expanduser()
        # the joined path as written (not resolved): the processed file records it, the same on every machine
        source = Path(os.path.normpath(source if source.is_absolute() else root / source))
        settings = {**defaults_for(member["kind"]), **member, "source": str(source)}
        for key in ("height", "width"):
            if key in config:
                settings[key] = config[key]
        out.append((settings, source))
    first_quantity = out[0][0]["quantity"]
    for index, (settings, source) in enumerate(out):
        if settings["quantity"] != first_quantity:
            raise ValueError(f"{_member_name(index, settings, source)}: quantity {settings['quantity']!r} differs from "
                             f"member 0's {first_quantity!r}; all members must give the same quantity and units")
    return out


def _read_member(index: int, settings: dict, source: Path, seed: int) -> xr.DataArray:
    """The member's own reader; its errors are re-raised naming the member."""
    from nuwa.datasets.radar import read_radar

    try:
        return read_radar(settings["kind"], settings, seed)
    except (DataFileError, ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise type(exc)(f"{_member_name(index, settings, source)}: {message}") from None


def _check_compatible(index: int, settings: dict, source: Path, field: xr.DataArray, first: xr.DataArray,
                      config: dict) -> None:
    """A member against member 0: units, fill, accumulation period, time step, pixel size."""
    name = _member_name(index, settings, source)
    a, b = field.attrs, first.attrs
    if (a["quantity"], a["units"]) != (b["quantity"], b["units"]):
        raise ValueError(f"{name}: quantity {a['quantity']} ({a['units']}) differs from member 0's "
                         f"{b['quantity']} ({b['units']}); all members must give the same quantity and units")
    if field.shape[1:] != first.shape[1:]:
        raise ValueError(f"{name}: frames of shape {field.shape[1:]} (channel, height, width) differ from member 0's "
                         f"{first.shape[1:]}")
    if a["missing_fill_value"] != b["missing_fill_value"]:
        raise ValueError(f"{name}: no-rain / missing fill value {a['missing_fill_value']:.4g} {a['units']} differs from "
                         f"member 0's {b['missing_fill_value']:.4g} (reflectivity floors depend on the service's Z-R "
                         "relation): pool rain_rate instead, or members of one service")
    if a["quantity"] == "accumulation" and a["accumulation_minutes"] != b["accumulation_minutes"]:
        raise ValueError(f"{name}: accumulation over {a['accumulation_minutes']:g} min differs from member 0's "
                         f"{b['accumulation_minutes']:g} min (mm per period is not the same quantity): pool rain_rate")
    if a["time_step_minutes"] != b["time_step_minutes"] and not config["allow_mixed_time_steps"]:
        raise ValueError(f"{name}: time step {a['time_step_minutes']} min differs from member 0's "
                         f"{b['time_step_minutes']} min ({b['generator']}); a window of frames would span a different "
                         "time per event and lead time k would mean different minutes: leave the member out, or set "
                         "allow_mixed_time_steps: true to pool them anyway")
    if a["grid_spacing_m"] != b["grid_spacing_m"] and not config["allow_mixed_grid_spacing"]:
        raise ValueError(f"{name}: output pixel size {a['grid_spacing_m']:g} m differs from member 0's "
                         f"{b['grid_spacing_m']:g} m (rain cells and their motion per step would have different sizes "
                         "in pixels): change crop/downsample, or set allow_mixed_grid_spacing: true")


def _crop_box(settings: dict, field: xr.DataArray) -> tuple[int, int, int, int]:
    if settings.get("crop") is not None:
        return tuple(int(v) for v in settings["crop"])
    rows, cols = (int(v) for v in str(field.attrs["source_grid"]).split(" x "))
    return 0, rows, 0, cols


def _check_no_repeats(members: list[tuple[dict, Path, xr.DataArray]]) -> None:
    """Two members of one kind (kind radar: and importer) with common times over overlapping crops hold the
    same frames twice."""
    for j, (settings_j, source_j, field_j) in enumerate(members):
        for i, (settings_i, source_i, field_i) in enumerate(members[:j]):
            if (settings_i["kind"], settings_i.get("importer")) != (settings_j["kind"], settings_j.get("importer")):
                continue
            common = np.intersect1d(field_i["time"].values, field_j["time"].values)
            r0, r1, c0, c1 = _crop_box(settings_i, field_i)
            s0, s1, d0, d1 = _crop_box(settings_j, field_j)
            if common.size and r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1:
                raise ValueError(f"{_member_name(j, settings_j, source_j)}: shares {common.size} time step(s) "
                                 f"(first {str(common[0])[:19]}) with member {i} ({source_i}) over overlapping crops: "
                                 "the same frames would be pooled twice (and could land in train and test)")


def _split_per_segment(segment: np.ndarray, fractions: dict) -> np.ndarray:
    """Split names per frame: train / val / test blocks inside every segment."""
    from nuwa.ingest import split_flags

    names = np.empty(segment.size, dtype=object)
    for seg in np.unique(segment):
        index = np.flatnonzero(segment == seg)
        names[index] = np.array(SPLITS, dtype=object)[split_flags(index.size, fractions)]
    return names.astype(str)


def _summary(settings: dict, field: xr.DataArray, segments: range) -> str:
    a = field.attrs
    return (f"{settings['kind']}: source {a['source']}, pattern {a['pattern']}, {field.sizes['time']} frames "
            f"{a['first_time']} to {a['last_time']}, {a['segments']} segment(s) (pool segments "
            f"{segments.start}-{segments.stop - 1}), step {a['time_step_minutes']} min, accumulation "
            f"{a['accumulation_minutes']:g} min, crop {a['crop']}, downsample {a['downsample']}, pixel "
            f"{a['grid_spacing_m']:g} m, {a['quantity']} ({a['units']}), missing fraction mean "
            f"{a['missing_fraction_mean']:.4g}")


def _distinct(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in dict.fromkeys(values))


@register_dataset(KIND, config_schema=SCHEMA, defaults=DEFAULTS)
def generate_radar_pool(config: dict, seed: int) -> xr.DataArray:
    """Pooled radar events: dims (time, channel, y, x), float32, lazy; see the module docstring."""
    import dask.array as da

    config = {**DEFAULTS, **config}
    if "split" not in config:
        raise KeyError(f"{KIND} config is missing split (train/val/test fractions, applied within every segment)")
    members = []
    for index, (settings, source) in enumerate(_member_configs(config)):
        field = _read_member(index, settings, source, seed)
        if members:
            _check_compatible(index, settings, source, field, members[0][2], config)
        members.append((settings, source, field))
    _check_no_repeats(members)

    values = da.concatenate([field.data for _, _, field in members], axis=0)
    segments, member_of_frame, steps, offset = [], [], [], 0
    segment_member, segment_ranges = [], []
    for index, (_, _, field) in enumerate(members):
        own = np.asarray(field["segment"].values, dtype=np.int64)
        segments.append(own + offset)
        segment_ranges.append(range(offset, offset + int(own.max()) + 1))
        segment_member += [index] * (int(own.max()) + 1)
        offset += int(own.max()) + 1
        member_of_frame.append(np.full(field.sizes["time"], index, dtype=np.int32))
        steps.append(np.full(field.sizes["time"], int(field.attrs["time_step_minutes"]), dtype=np.int32))
    segment = np.concatenate(segments).astype(np.int32)
    member = np.concatenate(member_of_frame)
    times = np.concatenate([field["time"].values for _, _, field in members])
    split = _split_per_segment(segment, config["split"])
    missing_fraction = np.concatenate([field["missing_fraction"].values for _, _, field in members])
    n_frames = np.array([field.sizes["time"] for _, _, field in members], dtype=np.float64)
    frequencies = [field["missing_frequency"].values for _, _, field in members]
    missing_frequency = sum(f * n for f, n in zip(frequencies, n_frames)) / n_frames.sum()

    segment_source = []
    for seg, index in enumerate(segment_member):
        settings, _, field = members[index]
        inside = np.flatnonzero(segment == seg)
        counts = {name: int((split[inside] == name).sum()) for name in SPLITS}
        segment_source.append(f"{seg}: member {index} {settings['kind']} {field.attrs['source']} "
                              f"{str(times[inside[0]])[:19]} to {str(times[inside[-1]])[:19]}, {inside.size} frames "
                              f"(train {counts['train']}, val {counts['val']}, test {counts['test']})")

    first = members[0][2].attrs
    fractions = config["split"]
    attrs = {
        "units": first["units"],
        "long_name": first["long_name"],
        "generator": KIND,
        "source": str(config["source"]),  # as written in params: the same bytes on every machine
        "members": len(members),
        "member_kinds": " ".join(settings["kind"] for settings, _, _ in members),
        "n_files": int(sum(field.attrs["n_files"] for _, _, field in members)),
        "segments": int(offset),
        "segment_member": " ".join(map(str, segment_member)),
        "segment_source": "; ".join(segment_source),
        "split_method": (f"per segment: the first {fractions['train']} of each segment's frames train, the next "
                         f"{fractions['val']} val, the rest test (nuwa.ingest.split_flags on each segment)"),
        "time_reference": "end of the accumulation interval, UTC, from the file names (members in the order listed)",
        "time_steps_minutes": _distinct(int(field.attrs["time_step_minutes"]) for _, _, field in members),
        "grid_spacings_m": _distinct(float(field.attrs["grid_spacing_m"]) for _, _, field in members),
        "allow_mixed_time_steps": int(bool(config["allow_mixed_time_steps"])),
        "allow_mixed_grid_spacing": int(bool(config["allow_mixed_grid_spacing"])),
        "quantity": first["quantity"],
        "missing_fill_value": float(first["missing_fill_value"]),
        "missing_fraction_mean": float(missing_fraction.mean()),
        "missing_fraction_max": float(missing_fraction.max()),
        "frames_with_missing": int((missing_fraction > 0).sum()),
        "missing_frequency_max": float(missing_frequency.max()),
        "seed": int(seed),
    }
    if len({int(field.attrs["time_step_minutes"]) for _, _, field in members}) == 1:  # else: frame_step_minutes
        attrs["time_step_minutes"] = int(first["time_step_minutes"])
    if len({float(field.attrs["grid_spacing_m"]) for _, _, field in members}) == 1:
        attrs["grid_spacing_m"] = float(first["grid_spacing_m"])
    coords = {
        "member": ("time", member, {"long_name": "index of the pool member (params entry members list) the frame "
                                                 "came from", "units": "1"}),
        "frame_step_minutes": ("time", np.concatenate(steps), {
            "long_name": "nominal time step of the frame's member", "units": "min"}),
        "missing_fraction": ("time", missing_fraction.astype(np.float64), {
            "long_name": "fraction of the cropped source frame's pixels missing before filling", "units": "1"}),
        "missing_frequency": (("y", "x"), missing_frequency.astype(np.float64), {
            "long_name": "fraction of all pooled frames in which the pixel's block held a missing source pixel",
            "units": "1"}),
    }
    for index, (settings, _, field) in enumerate(members):
        attrs[f"member_{index}"] = _summary(settings, field, segment_ranges[index])
        attrs[f"member_{index}_attrs"] = json.dumps(field.attrs, sort_keys=True)
        coords[f"member_{index}_missing_frequency"] = (("y", "x"), frequencies[index].astype(np.float64), {
            "long_name": f"member {index}: fraction of its frames in which the pixel's block held a missing "
                         "source pixel", "units": "1"})
        for dim in ("y", "x"):
            coords[f"member_{index}_{dim}"] = (dim, field[dim].values, {
                "long_name": f"member {index}: projected {dim} of the pixel centre ({field.attrs.get('projection', '')})",
                "units": "m"})
    time_attrs = {"long_name": "end of the accumulation interval (UTC)", "standard_name": "time"}
    return field_array(values, name=first["quantity"], channels=[first["quantity"]], attrs=attrs, time=times,
                       time_attrs=time_attrs, segment=segment, split=split, coords=coords)
