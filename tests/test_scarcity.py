"""The train-percent axis (data scarcity): which training windows a cell and its bank keep."""

from __future__ import annotations

import numpy as np
import pytest

from nuwa.windows import SeriesData, WindowDataset, training_subset


def series_with_segments(lengths):
    frames = sum(lengths)
    segment = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)]).astype(np.int64)
    # within each segment: train, then val, then test (70 / 10 / 20 %)
    split = np.concatenate([np.repeat([0, 1, 2], [int(0.7 * n), int(0.1 * n), n - int(0.7 * n) - int(0.1 * n)])
                            for n in lengths]).astype(np.int8)
    field = np.zeros((frames, 1, 4, 4), np.float32)
    return SeriesData(field=field, split=split, segment=segment, mean=np.zeros(1, np.float32),
                      std=np.ones(1, np.float32), data_range=1.0, name="x", attrs={})


@pytest.fixture
def train():
    return WindowDataset(series_with_segments([100, 60]), "train", 3, 2, 1)


def per_segment(windows):
    return np.bincount(windows.series.segment[windows.starts], minlength=2)


def test_all_windows_at_100_percent(train):
    assert training_subset(train, 100, "recent", 0, "x") is train


@pytest.mark.parametrize("percent", [10, 25, 50])
def test_recent_keeps_each_segments_last_windows(train, percent):
    subset = training_subset(train, percent, "recent", 0, "x")
    full = per_segment(train)
    assert (per_segment(subset) == np.ceil(full * percent / 100)).all()  # every event keeps its share
    for value in (0, 1):
        mine = train.starts[train.series.segment[train.starts] == value]
        kept = subset.starts[subset.series.segment[subset.starts] == value]
        np.testing.assert_array_equal(kept, mine[-len(kept):])  # the block just before validation
    assert len(train.starts) == full.sum()  # the full set is untouched


def test_seeded_is_a_seeded_random_subset(train):
    a = training_subset(train, 25, "seeded", 0, "x")
    again = training_subset(train, 25, "seeded", 0, "x")
    other_seed = training_subset(train, 25, "seeded", 1, "x")
    other_dataset = training_subset(train, 25, "seeded", 0, "y")
    np.testing.assert_array_equal(a.starts, again.starts)
    assert not np.array_equal(a.starts, other_seed.starts) and not np.array_equal(a.starts, other_dataset.starts)
    assert (np.diff(a.starts) > 0).all() and np.isin(a.starts, train.starts).all()
    assert (per_segment(a) == per_segment(training_subset(train, 25, "recent", 0, "x"))).all()


def test_at_least_one_window_per_segment_and_bad_values(train):
    assert (per_segment(training_subset(train, 1, "recent", 0, "x")) == 1).all()
    with pytest.raises(ValueError, match="train_percent 0"):
        training_subset(train, 0, "recent", 0, "x")
    with pytest.raises(ValueError, match="train.subset 'oldest'"):
        training_subset(train, 50, "oldest", 0, "x")
