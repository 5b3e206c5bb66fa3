"""kth: the original KTH AVIs and 00sequences.txt, on tiny fixture videos written with cv2."""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from nuwa.datasets import dataset_config_schema, defines_split, get_dataset, with_defaults
from nuwa.ingest import SPLIT_CODES, ingest
from nuwa.io import DataFileError, write_netcdf

# stem -> (frames in the file, ranges in the sequence file); index = position = square's row
VIDEOS = {
    "person01_boxing_d1": (20, [(1, 8), (9, 14), (16, 20)]),  # three ranges, frame 15 left out
    "person01_boxing_d2": (16, [(1, 6), (7, 16)]),
    "person01_walking_d1": (18, [(1, 9), (10, 18)]),
    "person02_boxing_d1": (12, [(5, 12), (1, 4)]),  # listed out of order, as in the real file
    "person15_boxing_d1": (14, [(1, 7), (8, 14)]),
    "person15_walking_d1": (12, [(1, 12)]),
    "person17_boxing_d1": (16, [(1, 8), (9, 16)]),
    "person18_walking_d3": (14, [(1, 14)]),
}
UNLISTED = {"person02_walking_d1": 10, "person17_walking_d2": 10}  # '*missing*' entry / no entry at all
ORDER = list(VIDEOS)  # expected output order: split, person, action, d (the dict is written in it)
SPLIT_OF = {1: "train", 2: "train", 15: "val", 17: "test", 18: "test"}
ROW = {stem: i for i, stem in enumerate([*VIDEOS, *UNLISTED])}

SEQUENCES = """
This database contains sequences of six classes of actions performed by
25 subjects in four different conditions (see below).

Training:   person11, 12, 13, 14, 15, 16, 17, 18
Test:       person22, 02, 03, 05, 06, 07, 08, 09, 10 \n

person15_walking_d1\t\tframes\t1-12
person15_boxing_d1    \t\tframes\t1-7, 8-14

person01_boxing_d1\t\tframes\t1-8, 9-14, 16-20
person01_walking_d1\tframes\t1-9,10-18
person01_boxing_d2    \tframes  1-6, 7-16\t

person02_boxing_d1\t\tframes\t5-12, 1-4
person02_walking_d1\t*missing*
person05_jogging_d1\t\tframes\t1-50, 51-100, 101-150, 151-200
person17_boxing_d1\t\tframes\t1-8, 9-16
person18_walking_d3\t\tframes\t1-14
"""

BACKGROUND = 20
COLOUR = (255, 255, 0)  # BGR cyan: grey 179 with BGR2GRAY, 226 if channels were read as RGB
SQUARE = 16
FACTOR = 4  # 120 x 160 -> 30 x 40: area resize is the mean of 4 x 4 blocks


def frame_image(row: int, number: int) -> np.ndarray:
    """Frame ``number`` (1-based) of the video with index ``row``: a square moving 4 px per frame."""
    image = np.full((120, 160, 3), BACKGROUND, dtype=np.uint8)
    y, x = 8 + 8 * row, 8 + 4 * (number - 1)
    image[y:y + SQUARE, x:x + SQUARE] = COLOUR
    return image


def write_video(path: Path, row: int, n_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    assert writer.isOpened()
    for number in range(1, n_frames + 1):
        writer.write(frame_image(row, number))
    writer.release()


def video_path(folder: Path, stem: str) -> Path:
    return folder / stem.split("_")[1] / f"{stem}_uncomp.avi"  # one subfolder per action, as the zips unpack


@pytest.fixture(scope="module")
def kth_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("KTH")
    for stem, (n_frames, _) in VIDEOS.items():
        write_video(video_path(folder, stem), ROW[stem], n_frames)
    for stem, n_frames in UNLISTED.items():
        write_video(video_path(folder, stem), ROW[stem], n_frames)
    (folder / "00sequences.txt").write_text(SEQUENCES)
    return folder


def config(source, **overrides) -> dict:
    entry = {
        "kind": "kth", "height": 30, "width": 40, "input_frames": 3, "output_frames": 3, "window_stride": 1,
        "patch_size": 2, "csi_thresholds": [], "seed": 0, "source": str(source), "actions": ["boxing", "walking"],
    }
    return entry | overrides


@pytest.fixture(scope="module")
def field(kth_folder):
    return get_dataset("kth")(config(kth_folder), 0)


@pytest.fixture
def copy(kth_folder, tmp_path) -> Path:
    return Path(shutil.copytree(kth_folder, tmp_path / "KTH"))


def expected_frames(step: int = 1):
    """(stem, subsequence, frame) per time step in the expected order."""
    return [(stem, k, f) for stem in ORDER for k, (a, b) in enumerate(VIDEOS[stem][1], start=1)
            for f in range(a, b + 1, step)]


def square_position(frame: np.ndarray) -> tuple[float, float]:
    """Centre (row, column) of the bright square in a resized (30 x 40) frame."""
    rows, cols = np.nonzero(frame > 0.4)
    return rows.mean(), cols.mean()


def test_shape_coords_attrs_and_laziness(field):
    expected = expected_frames()
    assert field.dims == ("time", "channel", "y", "x")
    assert field.shape == (len(expected), 1, 30, 40)
    assert field.dtype == np.float32
    assert field.chunks is not None and field.data.numblocks[0] == len(VIDEOS)  # one chunk per video, not computed
    assert list(field["channel"].values) == ["grey"]
    assert field.attrs["units"] == "1" and field.attrs["long_name"] == "grey level"
    for value in field.attrs.values():  # NetCDF-safe attributes
        assert isinstance(value, (str, int, float)) and not isinstance(value, bool)
    assert field.attrs["videos"] == len(VIDEOS)
    assert field.attrs["subsequences"] == sum(len(r) for _, r in VIDEOS.values())
    assert field.attrs["videos_skipped"] == "person02_walking_d1 person17_walking_d2"
    assert field.attrs["sequence_entries_without_ranges"] == "person02_walking_d1(*missing*)"
    assert field.attrs["source_frame_size"] == "160x120"
    assert field.attrs["frames_val"] == 14 + 12
    assert [(v, int(k), int(f)) for v, k, f in zip(field["video"].values, field["subsequence"].values,
                                                   field["frame"].values)] == expected
    assert defines_split("kth")


def test_segments_split_and_persons(field):
    video, sub = field["video"].values, field["subsequence"].values
    segment = field["segment"].values
    # a new segment exactly where the (video, sub-sequence) pair changes, numbered 0, 1, ...
    change = (video[1:] != video[:-1]) | (sub[1:] != sub[:-1])
    np.testing.assert_array_equal(np.diff(segment), change.astype(int))
    assert segment[0] == 0
    lengths = np.bincount(segment)
    assert lengths.tolist() == [b - a + 1 for stem in ORDER for a, b in VIDEOS[stem][1]]
    person = field["person"].values
    assert [int(p) for p in person] == [int(v[6:8]) for v in video]
    assert list(field["action"].values) == [v.split("_")[1] for v in video]
    assert list(field["split"].values) == [SPLIT_OF[int(p)] for p in person]
    # tidy: train, then val, then test, each one block
    codes = np.array([SPLIT_CODES[s] for s in field["split"].values])
    assert (np.diff(codes) >= 0).all()


def test_content_matches_frame_and_video(field):
    values = field.values
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    for t, (stem, frame) in enumerate(zip(field["video"].values, field["frame"].values)):
        row, col = square_position(values[t, 0])
        # the 16 px square at (8 + 8 * index, 8 + 4 * (frame - 1)) is 4 x 4 cells after the 4x area resize
        assert round(col - 2.5) == frame, (t, stem)
        assert round((row - 3.5) / 2) == ROW[stem], (t, stem)


def test_resize_against_independent_area_mean(field, kth_folder):
    values = field.values
    stem = "person01_boxing_d1"
    at = np.flatnonzero(field["video"].values == stem)
    # against the frames as written: BGR->grey weights, 4 x 4 block means (MJPG is lossy: tolerance)
    weights = np.array([0.114, 0.587, 0.299])  # B, G, R
    for t in at:
        source = frame_image(ROW[stem], int(field["frame"].values[t])) @ weights
        blocks = source.reshape(30, FACTOR, 40, FACTOR).mean(axis=(1, 3)) / 255
        np.testing.assert_allclose(values[t, 0], blocks, atol=0.06)
    # against the frames as decoded (no JPEG error left): within the rounding of two uint8 steps
    capture = cv2.VideoCapture(str(video_path(kth_folder, stem)))
    decoded = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        decoded.append(image)
    capture.release()
    assert len(decoded) == VIDEOS[stem][0]
    for t in at:
        grey = decoded[int(field["frame"].values[t]) - 1] @ weights
        blocks = grey.reshape(30, FACTOR, 40, FACTOR).mean(axis=(1, 3)) / 255
        np.testing.assert_allclose(values[t, 0], blocks, atol=1.01 / 255)


def test_frame_step(kth_folder, field):
    stepped = get_dataset("kth")(config(kth_folder, frame_step=3), 0)
    expected = expected_frames(step=3)
    assert stepped.sizes["time"] == len(expected)
    assert [(v, int(k), int(f)) for v, k, f in zip(stepped["video"].values, stepped["subsequence"].values,
                                                   stepped["frame"].values)] == expected
    assert stepped.attrs["frame_step"] == 3
    # the same frames as the full field, picked by (video, frame)
    full = {(v, int(f)): t for t, (v, f) in enumerate(zip(field["video"].values, field["frame"].values))}
    picks = [full[(v, int(f))] for v, f in zip(stepped["video"].values, stepped["frame"].values)]
    np.testing.assert_array_equal(stepped.values, field.values[picks])


def test_custom_persons_and_overlap(kth_folder):
    persons = {"train": [15, 1], "val": [2], "test": [17, 18]}
    custom = get_dataset("kth")(config(kth_folder, persons=persons, actions=["walking", "boxing"]), 0)
    videos = list(dict.fromkeys(custom["video"].values))
    # train persons sorted (1 before 15), actions in the order given, then val, then test
    assert videos == ["person01_walking_d1", "person01_boxing_d1", "person01_boxing_d2", "person15_walking_d1",
                      "person15_boxing_d1", "person02_boxing_d1", "person17_boxing_d1", "person18_walking_d3"]
    assert custom.attrs["persons_train"] == "1 15"
    split = {v: s for v, s in zip(custom["video"].values, custom["split"].values)}
    assert split["person15_boxing_d1"] == "train" and split["person02_boxing_d1"] == "val"
    with pytest.raises(ValueError, match=r"person 15 .*persons\.train and persons\.val"):
        get_dataset("kth")(config(kth_folder, persons={"train": [1, 15], "val": [15], "test": [17]}), 0)


def test_ingest(kth_folder, field, tmp_path):
    processed = ingest("kth_fixture", config(kth_folder))
    values = processed["grey_level"]
    assert values.dims == ("time", "channel", "y", "x") and values.shape == field.shape
    np.testing.assert_array_equal(values.values, field.values)
    np.testing.assert_array_equal(processed["split"].values,
                                  [SPLIT_CODES[s] for s in field["split"].values])
    np.testing.assert_array_equal(processed["segment"].values, field["segment"].values)
    for name in ("person", "action", "video", "frame"):
        np.testing.assert_array_equal(processed[name].values, field[name].values)
    train = field.values[field["split"].values == "train"].astype(np.float64)
    np.testing.assert_allclose(processed["norm_mean"].values, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(processed["norm_std"].values, train.std(axis=(0, 2, 3)), rtol=1e-5)
    assert processed.attrs["nuwa_kind"] == "kth"
    write_netcdf(processed, tmp_path / "kth.nc")  # string coordinates along time survive NetCDF
    import xarray as xr
    with xr.open_dataset(tmp_path / "kth.nc") as back:
        assert list(back["video"].values) == list(field["video"].values)


def test_config_schema(kth_folder):
    import jsonschema

    schema = dataset_config_schema("kth")
    jsonschema.validate(config(kth_folder), schema)
    jsonschema.validate(config(kth_folder, frame_step=2, sequences_file="seq.txt",
                               persons={"train": [1], "val": [2], "test": [3]}), schema)
    for bad in (config(kth_folder, split={"train": 0.7, "val": 0.1, "test": 0.2}),
                config(kth_folder, actions=["dancing"]), config(kth_folder, frame_step=0),
                config(kth_folder, persons={"train": [1], "val": [26], "test": [3]}),
                config(kth_folder, persons={"train": [1], "test": [3]}),
                config(kth_folder, exclude_subsequences=["person01_boxing_d4"])):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    entry = config(kth_folder)
    del entry["source"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, schema)
    filled = with_defaults({"kind": "kth"})
    assert filled["exclude_subsequences"] == ["person01_boxing_d4#4"]  # the release's truncated range
    assert filled["persons"] == {"train": list(range(1, 15)), "val": [15, 16], "test": list(range(17, 26))}
    assert filled["frame_step"] == 1 and filled["sequences_file"] == "00sequences.txt" and len(filled["actions"]) == 6


# ---- bad input: every error is a DataFileError naming the file ----

def test_missing_and_empty_folder(tmp_path):
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "absent")) + ".*not found"):
        get_dataset("kth")(config(tmp_path / "absent"), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "empty")) + ".*no KTH videos"):
        get_dataset("kth")(config(tmp_path / "empty"), 0)


def test_missing_sequence_file(copy):
    (copy / "00sequences.txt").unlink()
    with pytest.raises(DataFileError, match=re.escape(str(copy / "00sequences.txt")) + ".*not found"):
        get_dataset("kth")(config(copy), 0)


def test_truncated_video_names_file_and_frame(copy):
    path = video_path(copy, "person17_boxing_d1")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    field = get_dataset("kth")(config(copy), 0)  # the header still claims 16 frames: found while reading
    message = r".*cannot decode frame \d+ .*truncated or corrupt; to leave it out, add 'person17_boxing_d1#1'"
    with pytest.raises(DataFileError, match=re.escape(str(path)) + message):
        field.compute()


def test_truncated_video_can_be_cut_at_a_subsequence(copy, field):
    path = video_path(copy, "person17_boxing_d1")  # 16 frames, ranges 1-8 and 9-16
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])  # about 10 frames still decode
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*frame (9|1[0-6]) .*'person17_boxing_d1#2'"):
        get_dataset("kth")(config(copy), 0).compute()
    cut = get_dataset("kth")(config(copy, exclude_subsequences=["person17_boxing_d1#2"]), 0)
    assert cut.attrs["subsequences_excluded"] == "person17_boxing_d1#2"
    keep = ~((field["video"].values == "person17_boxing_d1") & (field["subsequence"].values == 2))
    np.testing.assert_array_equal(cut["frame"].values, field["frame"].values[keep])
    np.testing.assert_array_equal(cut.values, field.values[keep])


def test_exclude_subsequences(kth_folder, field):
    excluded = ["person01_boxing_d1#2", "person09_boxing_d1#1"]  # the second video is not in the folder
    cut = get_dataset("kth")(config(kth_folder, exclude_subsequences=excluded), 0)
    at = cut["video"].values == "person01_boxing_d1"
    assert sorted(set(cut["subsequence"].values[at].tolist())) == [1, 3]  # original positions kept
    assert cut.sizes["time"] == field.sizes["time"] - 6
    assert cut.attrs["subsequences_excluded"] == "person01_boxing_d1#2"  # only those actually selected
    assert field.attrs["subsequences_excluded"] == "none"
    assert len(np.unique(cut["segment"].values)) == field.attrs["subsequences"] - 1
    with pytest.raises(ValueError, match=r"person01_boxing_d2#3.*2 range\(s\)"):
        get_dataset("kth")(config(kth_folder, exclude_subsequences=["person01_boxing_d2#3"]), 0)


def test_ranges_past_the_end(copy):
    text = SEQUENCES.replace("person15_walking_d1\t\tframes\t1-12", "person15_walking_d1\t\tframes\t1-6, 7-15")
    (copy / "00sequences.txt").write_text(text)
    path = video_path(copy, "person15_walking_d1")
    with pytest.raises(DataFileError, match=re.escape(str(path)) + r".*12 frames.*up to 15"):
        get_dataset("kth")(config(copy), 0)


def test_unreadable_and_absent_listed_video(copy):
    path = video_path(copy, "person01_walking_d1")
    path.write_bytes(b"not a video" * 100)
    with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*cannot be opened"):
        get_dataset("kth")(config(copy), 0)
    path.unlink()
    message = r"person01_walking_d1_uncomp\.avi.*line \d+ of 00sequences\.txt.*not found"
    with pytest.raises(DataFileError, match=message):
        get_dataset("kth")(config(copy), 0)


def test_malformed_ranges_and_duplicates(copy):
    sequences = copy / "00sequences.txt"
    line = next(i for i, text in enumerate(SEQUENCES.splitlines(), start=1) if "1-9,10-18" in text)
    sequences.write_text(SEQUENCES.replace("1-9,10-18", "1-9, 10-"))
    with pytest.raises(DataFileError, match=re.escape(str(sequences)) + rf": line {line}: person01_walking_d1"):
        get_dataset("kth")(config(copy), 0)
    sequences.write_text(SEQUENCES.replace("1-9,10-18", "1-9, 18-10"))
    with pytest.raises(DataFileError, match=rf"line {line}: .*range 18-10"):
        get_dataset("kth")(config(copy), 0)
    sequences.write_text(SEQUENCES + "person01_boxing_d1\tframes\t1-5\n")
    with pytest.raises(DataFileError, match=r"person01_boxing_d1 is listed twice"):
        get_dataset("kth")(config(copy), 0)
    sequences.write_text(SEQUENCES)
    shutil.copy(video_path(copy, "person01_boxing_d1"), copy / "person01_boxing_d1_uncomp.avi")
    with pytest.raises(DataFileError, match=r"person01_boxing_d1 found twice"):
        get_dataset("kth")(config(copy), 0)


def test_selected_action_without_videos(kth_folder):
    with pytest.raises(DataFileError, match=r"action 'running'"):
        get_dataset("kth")(config(kth_folder, actions=["boxing", "running"]), 0)


def test_cli_ingest_of_a_corrupt_video_fails_cleanly(copy, tmp_path):
    """The error surfaces mid-stream (while dask reads the video): one line naming the file, nothing written."""
    import subprocess
    import sys

    import yaml

    from conftest import TINY_PARAMS, tool_env

    path = video_path(copy, "person17_boxing_d1")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["datasets"]["kth"] = config(copy)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "processed" / "kth.nc"
    result = subprocess.run([sys.executable, "-m", "nuwa", "ingest", "--params", str(tmp_path / "params.yaml"),
                             "--dataset", "kth", "--out", str(out)], capture_output=True, text=True, env=tool_env())
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and "Traceback" not in result.stderr
    leftovers = list(out.parent.glob("*")) if out.parent.exists() else []
    assert leftovers == [], leftovers  # neither the NetCDF nor its temporary file
