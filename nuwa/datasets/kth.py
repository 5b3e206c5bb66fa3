"""KTH human actions: the original AVI videos cut into their sub-sequences, read lazily.

Source: https://www.csc.kth.se/cvap/actions/ (Schuldt, Laptev and Caputo, ICPR 2004): six zip
files, one per action (``boxing.zip``, ``handclapping.zip``, ``handwaving.zip``,
``jogging.zip``, ``running.zip``, ``walking.zip``), plus the sequence file ``00sequences.txt``.

Videos. 25 persons x 6 actions x 4 scenarios (``d1`` outdoors, ``d2`` outdoors with scale
variation, ``d3`` outdoors in different clothes, ``d4`` indoors), named
``person{NN}_{action}_d{1..4}_uncomp.avi``: 160 x 120 pixels, 25 fps, grey content stored as
3-channel colour. One video, ``person13_handclapping_d3``, is not in the release (599 videos).
``source`` is a folder searched recursively, so the zips may be unpacked into it as they come
(one subfolder per action, or all in one folder); a video name found twice is an error.

Sequence file (``sequences_file``, default ``00sequences.txt``, relative to ``source`` unless
absolute). After a free-text header, one line per video::

    person01_boxing_d1\t\tframes\t1-95, 96-185, 186-245, 246-360

i.e. the video's stem, the word ``frames`` and comma-separated frame ranges, 1-based and
inclusive: the sub-sequences in which the person performs the action (the camera pans or
the person leaves the view between them). The real file has irregular whitespace (tabs
and spaces mixed), blank lines between persons, entries with three ranges instead of four
(e.g. ``person11_boxing_d4``), ranges listed out of order (``person07_jogging_d4``) or
overlapping by a few frames (``person21_handclapping_d1``). All of these are read as given:
sub-sequence ``k`` is the ``k``-th range listed, whatever its position in the video. One
entry has no ranges: ``person13_handclapping_d3\t*missing*``. Parsing rules, deterministic:

* lines that do not start with ``person{NN}_{action}_d{N}`` (header, blank lines) are ignored;
* an entry whose text after the name does not start with ``frames`` (the ``*missing*`` entry)
  has no sub-sequences: it is recorded in the attribute ``sequence_entries_without_ranges``
  and a video of that name, if present, is skipped (attribute ``videos_skipped``);
* an entry with ``frames`` but ranges that do not parse, a range that starts below 1 or
  ends before it starts, or a video listed twice is a :class:`nuwa.io.DataFileError` naming
  the file and the line;
* a video in the folder with no entry is skipped and listed in ``videos_skipped``; a
  selected video (its action in ``actions``, its person in ``persons``) listed in the file
  but absent from the folder is an error (set ``actions`` to the zips you unpacked).

Frames. Each frame kept is converted with ``cv2.cvtColor(..., COLOR_BGR2GRAY)`` (frames
already single-channel are taken as they are), resized to ``(height, width)`` with
``cv2.resize(..., interpolation=cv2.INTER_AREA)`` on the uint8 image, and divided by 255:
values in [0, 1], ``units`` "1", ``long_name`` "grey level", one channel ``grey``.
``frame_step`` keeps every n-th frame of each sub-sequence, starting at its first frame
(some papers subsample KTH in time). The videos' own frame counts are checked up front
against the ranges (from the container header); a frame that cannot be decoded while
reading (truncated or corrupt file) is an error naming the file and the frame.

Known defect of the release: ``person01_boxing_d4_uncomp.avi`` declares 370 frames but is
truncated inside its fourth listed range (246-370; reported decodable up to frame ~305, not
checked here). ``exclude_subsequences`` (ids ``stem#k``, ``k`` the 1-based position of the range
in the sequence file) leaves sub-sequences out; its default is ``["person01_boxing_d4#4"]``,
so the default ingest reads that video only up to frame 245. The sub-sequences actually left
out are listed in the attribute ``subsequences_excluded``; any other undecodable frame is
still an error (its message names the id to exclude).

Split, by person (the split KTH defines; no time fractions). The convention of the video
prediction literature (Srivastava et al. 2015, PredRNN, E3D-LSTM, SimVP, OpenSTL) is persons
1-16 for training and 17-25 for testing; those codebases select models on the test persons.
Here persons 15 and 16 are held out of training as a validation split for model selection,
so the defaults are ``persons: {train: [1..14], val: [15, 16], test: [17..25]}`` and the test
persons are the conventional ones. A person in two splits is a ``ValueError``.

Layout along ``time``. Ordered by split (train, val, test), then person, action (in the order
of ``actions``), scenario ``d``, sub-sequence: each sub-sequence is one ``segment`` (no window
crosses two sub-sequences, nor two videos). Coordinates along time: ``segment``, ``split``,
``person`` (int), ``action`` (str), ``video`` (the stem, e.g. ``person01_boxing_d1``),
``subsequence`` (1-based position of its range in the sequence file) and ``frame`` (the
original 1-based frame number in the video).

Laziness. The values are a dask array with one chunk per video, built with one
``dask.delayed`` read of that video (all its sub-sequences), so ingest streams the dataset
video by video. Only the sequence file and the videos' headers are read when the field is
built.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nuwa.datasets import field_array, register_dataset
from nuwa.errors import DataFileError

if TYPE_CHECKING:
    import xarray as xr

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
SPLITS = ("train", "val", "test")
N_PERSONS = 25
DEFAULT_PERSONS = {"train": list(range(1, 15)), "val": [15, 16], "test": list(range(17, 26))}
DEFAULT_SEQUENCES_FILE = "00sequences.txt"
CHANNEL = "grey"
# sub-sequences of the official release that cannot be decoded (``stem#k``: k-th range listed)
KNOWN_CORRUPT = ("person01_boxing_d4#4",)
ORIGIN = "https://www.csc.kth.se/cvap/actions/"

VIDEO_RE = re.compile(r"^(person(\d{2})_([a-z]+)_d(\d))_uncomp\.avi$", re.IGNORECASE)
ENTRY_RE = re.compile(r"^(person(\d+)_([a-z]+)_d(\d+))(?=\s|$)\s*(.*)$")
RANGES_RE = re.compile(r"^\d+\s*-\s*\d+(?:\s*,\s*\d+\s*-\s*\d+)*\s*,?$")
RANGE_RE = re.compile(r"(\d+)\s*-\s*(\d+)")

_person_list = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": N_PERSONS},
                "minItems": 1, "uniqueItems": True}
CONFIG_SCHEMA = {
    "source": {"type": "string", "minLength": 1},
    "sequences_file": {"type": "string", "minLength": 1},
    "actions": {"type": "array", "items": {"enum": list(ACTIONS)}, "minItems": 1, "uniqueItems": True},
    "persons": {
        "type": "object",
        "additionalProperties": False,
        "required": list(SPLITS),
        "properties": {name: _person_list for name in SPLITS},
    },
    "frame_step": {"type": "integer", "minimum": 1},
    "exclude_subsequences": {"type": "array", "uniqueItems": True,
                             "items": {"type": "string", "pattern": r"^person\d{2}_[a-z]+_d\d#\d+$"}},
}
DEFAULTS = {
    "sequences_file": DEFAULT_SEQUENCES_FILE,
    "actions": list(ACTIONS),
    "persons": DEFAULT_PERSONS,
    "frame_step": 1,
    "exclude_subsequences": list(KNOWN_CORRUPT),
}


@dataclass
class SequenceFile:
    """What ``00sequences.txt`` says: frame ranges per video stem, and entries without ranges."""

    path: Path
    ranges: dict[str, list[tuple[int, int]]] = dc_field(default_factory=dict)
    lines: dict[str, int] = dc_field(default_factory=dict)
    without_ranges: dict[str, str] = dc_field(default_factory=dict)  # stem -> text after the name


@dataclass
class Video:
    """One selected video and the frames to read from it."""

    stem: str
    path: Path
    person: int
    action: str
    scenario: int
    split: str
    indices: list[int]  # 1-based positions in the sequence file of the sub-sequences kept
    ranges: list[tuple[int, int]]  # their frame ranges
    frames: list[np.ndarray]  # per sub-sequence kept: original 1-based frame numbers kept

    @property
    def n_frames(self) -> int:
        return sum(len(f) for f in self.frames)

    @property
    def last_frame(self) -> int:
        return max(end for _, end in self.ranges)


def resolve_source(config: dict) -> Path:
    """The ``source`` folder; a relative path is taken from the current working directory."""
    if "source" not in config:
        raise KeyError("kth config is missing source (the folder holding the KTH videos and 00sequences.txt)")
    return Path(config["source"]).expanduser().resolve()


def resolve_sequences_file(config: dict, folder: Path) -> Path:
    name = Path(str(config.get("sequences_file", DEFAULT_SEQUENCES_FILE))).expanduser()
    return name if name.is_absolute() else folder / name


def check_persons(persons) -> dict[int, str]:
    """``{person: split}`` from the ``persons`` setting; a person in two splits is a ValueError."""
    if not isinstance(persons, dict) or set(persons) != set(SPLITS):
        raise ValueError(f"kth: persons must map exactly {', '.join(SPLITS)} to lists of person numbers, "
                         f"got {persons!r}")
    owner: dict[int, str] = {}
    for split in SPLITS:
        for person in persons[split]:
            if isinstance(person, bool) or not isinstance(person, (int, np.integer)) or not 1 <= person <= N_PERSONS:
                raise ValueError(f"kth: persons.{split} has {person!r}; person numbers are integers 1-{N_PERSONS}")
            person = int(person)
            if person in owner:
                raise ValueError(f"kth: person {person} is in both persons.{owner[person]} and persons.{split} "
                                 "(each person belongs to one split)")
            owner[person] = split
    return owner


def check_actions(actions) -> list[str]:
    actions = list(actions)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions or len(set(actions)) != len(actions):
        raise ValueError(f"kth: actions {actions!r} must be distinct names among {', '.join(ACTIONS)}")
    return actions


def parse_sequences(path: Path) -> SequenceFile:
    """Read the sequence file (format in the module docstring); errors name ``path`` and the line."""
    if not path.is_file():
        raise DataFileError(f"{path}: KTH sequence file not found (00sequences.txt from {ORIGIN}; "
                            "set sequences_file if it lives elsewhere)")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read the sequence file ({type(exc).__name__}: {exc})") from None
    result = SequenceFile(path=path)
    for number, raw in enumerate(text.splitlines(), start=1):
        match = ENTRY_RE.match(raw.strip())
        if match is None:
            continue
        stem, rest = match.group(1), match.group(5).strip()
        if stem in result.lines:
            raise DataFileError(f"{path}: line {number}: {stem} is listed twice (first on line {result.lines[stem]})")
        result.lines[stem] = number
        if not rest.startswith("frames"):
            result.without_ranges[stem] = rest
            continue
        spec = rest[len("frames"):].strip()
        if not RANGES_RE.match(spec):
            raise DataFileError(f"{path}: line {number}: {stem}: cannot read frame ranges {spec!r} "
                                "(expected e.g. 'frames 1-95, 96-185')")
        ranges = [(int(a), int(b)) for a, b in RANGE_RE.findall(spec)]
        for start, end in ranges:
            if start < 1 or end < start:
                raise DataFileError(f"{path}: line {number}: {stem}: frame range {start}-{end} is empty or starts "
                                    "before frame 1 (ranges are 1-based and inclusive)")
        result.ranges[stem] = ranges
    if not result.lines:
        raise DataFileError(f"{path}: no entries like 'person01_boxing_d1  frames  1-95, 96-185' found")
    return result


def find_videos(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of every ``person*_*_d*_uncomp.avi`` below ``folder``."""
    if not folder.is_dir():
        raise DataFileError(f"{folder}: KTH folder not found (unpack the six action zips from {ORIGIN} into it)")
    found: dict[str, Path] = {}
    zips = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        for name in sorted(names):
            match = VIDEO_RE.match(name)
            if match is None:
                if name.lower().endswith(".zip"):
                    zips.append(name)
                continue
            stem = match.group(1).lower()
            path = Path(directory) / name
            if stem in found:
                raise DataFileError(f"{path}: video {stem} found twice (also {found[stem]}); keep one copy")
            found[stem] = path
    if not found:
        hint = f" (unzip {', '.join(zips)} first)" if zips else ""
        raise DataFileError(f"{folder}: no KTH videos (person{{NN}}_{{action}}_d{{1-4}}_uncomp.avi) found in the "
                            f"folder or its subfolders{hint}")
    return found


def kept_frames(ranges: list[tuple[int, int]], step: int) -> list[np.ndarray]:
    """Original frame numbers kept per sub-sequence: every ``step``-th from its first frame."""
    return [np.arange(start, end + 1, step, dtype=np.int64) for start, end in ranges]


def _open(path: Path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise DataFileError(f"{path}: cannot be opened as a video (missing codec, or not a video file)")
    return capture


def probe(video: Video) -> tuple[int, int, int]:
    """``(frame count from the header, width, height)``; checks the ranges fit in the video."""
    import cv2

    capture = _open(video.path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        size = (count, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    finally:
        capture.release()
    if count > 0 and count < video.last_frame:
        worst = max(video.ranges, key=lambda r: r[1])
        raise DataFileError(f"{video.path}: video has {count} frames, but the sequence file lists frames up to "
                            f"{video.last_frame} (range {worst[0]}-{worst[1]} of {video.stem})")
    return size


def read_video(path: str, stem: str, frames: list[np.ndarray], height: int, width: int,
               header_count: int, subsequences: list[tuple[int, int, int]]) -> np.ndarray:
    """The kept frames of one video, ``(n, 1, height, width)`` float32 in [0, 1], in listed order."""
    import cv2

    path = Path(path)
    needed = {int(f) for sub in frames for f in sub}
    last = max(needed)
    grey: dict[int, np.ndarray] = {}
    capture = _open(path)
    try:
        for number in range(1, last + 1):
            ok = capture.grab()
            image = None
            if ok and number in needed:
                ok, image = capture.retrieve()
                ok = ok and image is not None and image.size > 0
            if not ok:
                if header_count <= 0:  # no frame count in the header: a short video and a bad frame look alike
                    raise DataFileError(f"{path}: video ends at frame {number - 1} or frame {number} cannot be "
                                        f"decoded, but the sequence file lists frames up to {last} for {stem}")
                ids = [f"{stem}#{k}" for k, start, end in subsequences if start <= number <= end]
                hint = f"; to leave it out, add {ids[0]!r} to exclude_subsequences" if ids else ""
                raise DataFileError(f"{path}: cannot decode frame {number} (1-based) of {stem}: file truncated or "
                                    f"corrupt{hint}")
            if image is None:
                continue
            if image.ndim == 3 and image.shape[2] == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            elif image.ndim == 3 and image.shape[2] == 1:
                image = image[:, :, 0]
            elif image.ndim != 2:
                raise DataFileError(f"{path}: frame {number} has shape {image.shape}, expected a colour or grey image")
            if image.dtype != np.uint8:
                raise DataFileError(f"{path}: frame {number} has dtype {image.dtype}, expected 8-bit")
            grey[number] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    finally:
        capture.release()
    order = np.concatenate(frames)
    out = np.stack([grey[int(f)] for f in order]).astype(np.float32) / np.float32(255.0)
    return out[:, None]


def check_frame_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"kth: frame_step is {step!r}; it must be a positive integer")
    return int(step)


def check_excluded(excluded, sequences: SequenceFile) -> set[tuple[str, int]]:
    """``{(stem, k)}`` from ``exclude_subsequences``; an id past its video's ranges is a ValueError."""
    result = set()
    for item in excluded:
        match = re.fullmatch(r"(person\d{2}_[a-z]+_d\d)#(\d+)", str(item))
        if match is None:
            raise ValueError(f"kth: exclude_subsequences has {item!r}; expected 'person01_boxing_d4#4' "
                             "(video stem, '#', 1-based position of the range in the sequence file)")
        stem, k = match.group(1), int(match.group(2))
        if stem in sequences.ranges and not 1 <= k <= len(sequences.ranges[stem]):
            raise ValueError(f"kth: exclude_subsequences has {item!r}, but {sequences.path.name} lists "
                             f"{len(sequences.ranges[stem])} range(s) for {stem}")
        result.add((stem, k))
    return result


def select_videos(config: dict, folder: Path, on_disk: dict[str, Path],
                  sequences: SequenceFile) -> tuple[list[Video], list[str], list[str]]:
    """The selected videos in output order, the stems skipped (no usable sequence entry) and the
    sub-sequences left out by ``exclude_subsequences``."""
    actions = check_actions(config.get("actions", ACTIONS))
    owner = check_persons(config.get("persons", DEFAULT_PERSONS))
    step = check_frame_step(config.get("frame_step", 1))
    excluded = check_excluded(config.get("exclude_subsequences", KNOWN_CORRUPT), sequences)
    left_out = []

    def selected(stem: str) -> tuple[int, str, int] | None:
        match = ENTRY_RE.match(stem)
        person, action, scenario = int(match.group(2)), match.group(3), int(match.group(4))
        if action in actions and person in owner:
            return person, action, scenario
        return None

    skipped = sorted(stem for stem in on_disk if stem not in sequences.ranges and selected(stem))
    videos = []
    for stem, ranges in sequences.ranges.items():
        key = selected(stem)
        if key is None:
            continue
        person, action, scenario = key
        if stem not in on_disk:
            raise DataFileError(f"{folder}: video {stem}_uncomp.avi (listed on line {sequences.lines[stem]} of "
                                f"{sequences.path.name}) not found in the folder or its subfolders; unpack its "
                                f"action's zip or leave {action!r} out of actions")
        indices = [k for k in range(1, len(ranges) + 1) if (stem, k) not in excluded]
        left_out += [f"{stem}#{k}" for k in range(1, len(ranges) + 1) if (stem, k) in excluded]
        if not indices:
            continue
        kept = [ranges[k - 1] for k in indices]
        videos.append(Video(stem=stem, path=on_disk[stem], person=person, action=action, scenario=scenario,
                            split=owner[person], indices=indices, ranges=kept, frames=kept_frames(kept, step)))
    videos.sort(key=lambda v: (SPLITS.index(v.split), v.person, actions.index(v.action), v.scenario))
    for action in actions:
        if not any(v.action == action for v in videos):
            raise DataFileError(f"{folder}: no videos of action {action!r} for the selected persons (with entries "
                                f"in {sequences.path.name}); leave it out of actions or add its files")
    for split in SPLITS:
        if not any(v.split == split for v in videos):
            persons = sorted(p for p, s in owner.items() if s == split)
            raise DataFileError(f"{folder}: no videos for split {split!r} (persons {persons}) with entries in "
                                f"{sequences.path.name}")
    return videos, skipped, sorted(left_out)


def _join(items, empty: str = "none") -> str:
    items = list(items)
    return " ".join(str(i) for i in items) if items else empty


@register_dataset("kth", config_schema=CONFIG_SCHEMA, defaults=DEFAULTS, defines_split=True)
def generate(config: dict, seed: int) -> xr.DataArray:
    """KTH grey videos as ``(time, 1, height, width)`` float32 in [0, 1], lazily (``seed`` unused)."""
    import dask
    import dask.array as da

    height, width = int(config["height"]), int(config["width"])
    # settings first: a bad config is reported before any file is touched
    actions = check_actions(config.get("actions", ACTIONS))
    persons = config.get("persons", DEFAULT_PERSONS)
    check_persons(persons)
    step = check_frame_step(config.get("frame_step", 1))
    folder = resolve_source(config)
    on_disk = find_videos(folder)
    sequences = parse_sequences(resolve_sequences_file(config, folder))
    videos, skipped, left_out = select_videos(config, folder, on_disk, sequences)

    blocks, sizes = [], set()
    coords = {key: [] for key in ("segment", "split", "person", "action", "video", "subsequence", "frame")}
    segment = 0
    for video in videos:
        count, src_width, src_height = probe(video)
        sizes.add(f"{src_width}x{src_height}")
        labels = [(k, a, b) for k, (a, b) in zip(video.indices, video.ranges)]
        task = dask.delayed(read_video, pure=True)(str(video.path), video.stem, video.frames, height, width, count,
                                                   labels)
        blocks.append(da.from_delayed(task, shape=(video.n_frames, 1, height, width), dtype=np.float32))
        for index, numbers in zip(video.indices, video.frames):
            n = len(numbers)
            coords["segment"] += [segment] * n
            coords["split"] += [video.split] * n
            coords["person"] += [video.person] * n
            coords["action"] += [video.action] * n
            coords["video"] += [video.stem] * n
            coords["subsequence"] += [index] * n
            coords["frame"] += numbers.tolist()
            segment += 1
    values = da.concatenate(blocks, axis=0)

    window = int(config.get("input_frames", 0)) + int(config.get("output_frames", 0))
    lengths = [len(f) for v in videos for f in v.frames]
    split_frames = {s: sum(v.n_frames for v in videos if v.split == s) for s in SPLITS}
    attrs = {
        "units": "1",
        "long_name": "grey level",
        "comment": "KTH human actions (Schuldt, Laptev and Caputo 2004): each sub-sequence of the sequence file is "
                   "one segment; frames converted BGR->grey (cv2.cvtColor), resized with cv2.INTER_AREA, divided "
                   "by 255. Split by person: the conventional persons 1-16 train / 17-25 test, with persons 15-16 "
                   "held out of training for validation by default.",
        "generator": "kth",
        "origin": ORIGIN,
        "source": str(config["source"]),  # as written in params: the same bytes on every machine
        # under the source folder as written there, not this machine's absolute path
        "sequences_file": (str(sequences.path.relative_to(folder)) if sequences.path.is_relative_to(folder)
                           else sequences.path.name),
        "actions": _join(actions),
        "persons_train": _join(sorted(persons["train"])),
        "persons_val": _join(sorted(persons["val"])),
        "persons_test": _join(sorted(persons["test"])),
        "frame_step": step,
        "resize": f"cv2.resize INTER_AREA to {height}x{width} (height x width)",
        "grey": "cv2.cvtColor COLOR_BGR2GRAY, then / 255",
        "source_frame_size": _join(sorted(sizes)),
        "videos": len(videos),
        "subsequences": segment,
        "frames": int(sum(lengths)),
        "frames_train": split_frames["train"],
        "frames_val": split_frames["val"],
        "frames_test": split_frames["test"],
        "videos_skipped": _join(skipped),
        "subsequences_excluded": _join(left_out),
        "sequence_entries_without_ranges": _join(f"{stem}({text or 'empty'})"
                                                 for stem, text in sorted(sequences.without_ranges.items())),
        "subsequences_shorter_than_window": int(sum(n < window for n in lengths)) if window else 0,
        "seed": int(seed),
    }
    along = {
        "person": ("time", np.asarray(coords["person"], dtype=np.int32), {"long_name": "KTH person number"}),
        "action": ("time", np.asarray(coords["action"], dtype=str), {"long_name": "KTH action"}),
        "video": ("time", np.asarray(coords["video"], dtype=str), {"long_name": "source video (file stem)"}),
        "subsequence": ("time", np.asarray(coords["subsequence"], dtype=np.int32),
                        {"long_name": "position of the frame range in the sequence file (1-based)"}),
        "frame": ("time", np.asarray(coords["frame"], dtype=np.int32),
                  {"long_name": "frame number in the source video (1-based)", "units": "frame"}),
    }
    return field_array(
        values,
        name="grey_level",
        channels=[CHANNEL],
        time_attrs={"long_name": "frame index in the concatenated sub-sequences", "units": "frame"},
        segment=coords["segment"],
        split=coords["split"],
        coords=along,
        attrs=attrs,
    )
