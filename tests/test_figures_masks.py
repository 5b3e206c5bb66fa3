"""mask_figure: the saliency file's importance plus the environmental patches a bank actually used."""

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.patches import Rectangle

from nuwa.bank import bank_dataset
from nuwa.figures import mask_figure, saliency_overlay
from nuwa.io import DataFileError, open_netcdf, write_netcdf
from nuwa.saliency import causal_mask, saliency_dataset

T, C, H, W, P = 3, 2, 8, 8, 2
GY, GX = H // P, W // P
STARTS = np.array([0, 2, 4, 6])


def cyan_rectangles(figure) -> list[tuple[int, int, float, float]]:
    """(row of axes, step, x, y) of every cyan outline."""
    found = []
    for index, axis in enumerate(figure.axes):
        for patch in axis.patches:
            if isinstance(patch, Rectangle) and patch.get_edgecolor()[:3] == (0.0, 1.0, 1.0):
                found.append((index // T, index % T, *patch.get_xy()))
    return found


def expected_rectangles(causal: np.ndarray) -> list[tuple[int, int, float, float]]:
    cells = [(step, col * P - 0.5, row * P - 0.5) for step, row, col in np.argwhere(causal == 0)]
    return sorted((axes_row, *cell) for axes_row in (0, 1) for cell in cells)


@pytest.fixture
def saliency():
    importance = np.random.default_rng(0).random((len(STARTS), T, GY, GX)).astype(np.float32)
    return saliency_dataset(STARTS, importance, patch_size=P, layers=[-1], depth=1, dataset_name="toy")


@pytest.fixture
def field():
    return np.random.default_rng(1).random((20, C, H, W)).astype(np.float32)


def make_bank(ratio=0.25, copies=2, seed=2):
    """Random masks (not the saliency ranking: the figure must draw the bank's own), two copies per window."""
    rng = np.random.default_rng(seed)
    n = len(STARTS) * copies
    causal = causal_mask(rng.random((n, T, GY * GX)), ratio).reshape(n, T, GY, GX)
    bank = {"augmented": rng.random((n, T, C, H, W)).astype(np.float32),
            "source_index": np.repeat(STARTS, copies).astype(np.int64),
            "copy": np.tile(np.arange(copies), len(STARTS)).astype(np.int32),
            "intervened": np.ones((n, T), np.int8), "causal": causal}
    return bank_dataset(bank, channels=[str(c) for c in range(C)], units="1", method="saliency",
                        settings={"environment_ratio": ratio, "copies": copies}, patch_size=P, dataset_name="toy",
                        variant="nuwa")


@pytest.mark.parametrize("sample,copy", [(0, 0), (4, 1), (6, 0)])
def test_outlines_exactly_the_banks_environmental_patches(saliency, field, sample, copy):
    bank = make_bank()
    row = int(np.flatnonzero((bank["source_index"].values == sample) & (bank["copy"].values == copy))[0])
    causal = bank["causal"].values[row]
    figure = mask_figure(saliency, field, sample, bank=bank, copy=copy)
    try:
        found = sorted(cyan_rectangles(figure))
        assert len(found) == 2 * int((causal == 0).sum()) == 2 * T * 4  # ⌊0.25·16⌋ per step, on both rows
        assert found == expected_rectangles(causal)
        # not the saliency ranking's own mask at the same ratio
        ranked = causal_mask(saliency["importance"].sel(sample=sample).values.reshape(T, -1), 0.25).reshape(T, GY, GX)
        assert not np.array_equal(ranked, causal)
        # the window's input frames (channel 0) and its importance are what is drawn
        np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), field[sample, 0])
        heat = figure.axes[T].images[1].get_array()
        np.testing.assert_array_equal(heat[::P, ::P], saliency["importance"].sel(sample=sample).values[0])
        assert "bank nuwa copy" in figure._suptitle.get_text() and "0.25" in figure._suptitle.get_text()
    finally:
        plt.close(figure)


def test_another_ratio_outlines_more(saliency, field):
    figure = mask_figure(saliency, field, 2, bank=make_bank(ratio=0.5))
    try:
        assert len(cyan_rectangles(figure)) == 2 * T * 8
    finally:
        plt.close(figure)


def test_without_a_bank_nothing_is_outlined_and_the_title_says_so(saliency, field):
    figure = mask_figure(saliency, field, 2, title_prefix="[x] ")
    try:
        assert cyan_rectangles(figure) == []
        assert not any(axis.patches for axis in figure.axes)
        title = figure._suptitle.get_text()
        assert title.startswith("[x] toy: window t=2") and "no bank" in title
    finally:
        plt.close(figure)


def test_overlay_accepts_no_mask():
    figure = saliency_overlay(np.zeros((2, 4, 4)), np.zeros((2, 2, 2)), None, 2)
    try:
        assert not any(axis.patches for axis in figure.axes)
    finally:
        plt.close(figure)


def test_unknown_samples_name_the_file_and_the_valid_range(tmp_path, saliency, field):
    write_netcdf(saliency, tmp_path / "toy.nc")
    write_netcdf(make_bank(), tmp_path / "seed0.nc")
    saliency_file = open_netcdf(tmp_path / "toy.nc", variables=("importance",))
    bank_file = open_netcdf(tmp_path / "seed0.nc", variables=("causal", "source_index", "copy"))
    with pytest.raises(DataFileError, match=rf"^{re.escape(str(tmp_path / 'toy.nc'))}: no sample 3 \(.* 0\.\.6\)"):
        mask_figure(saliency_file, field, 3, bank=bank_file)
    with pytest.raises(DataFileError, match=r"^saliency.nc: no sample 99 "):
        mask_figure(saliency, field, 99, source="saliency.nc")
    partial = bank_file.isel(bank_sample=bank_file["source_index"].values < 4)  # windows 0 and 2 only
    partial.encoding["source"] = bank_file.encoding["source"]
    bank_name = re.escape(str(tmp_path / "seed0.nc"))
    with pytest.raises(DataFileError, match=rf"^{bank_name}: no augmented window for sample 4 copy 0 "
                                            r"\(.* 0\.\.2, copies 0\.\.1\)"):
        mask_figure(saliency_file, field, 4, bank=partial)
    with pytest.raises(DataFileError, match=r"no augmented window for sample 2 copy 5 .*copies 0\.\.1"):
        mask_figure(saliency_file, field, 2, bank=bank_file, copy=5)
    assert not plt.get_fignums()  # nothing drawn before the checks


def test_empty_bank_and_wrong_grid_are_refused(saliency, field):
    empty = make_bank().isel(bank_sample=slice(0, 0))
    with pytest.raises(DataFileError, match=r"^bank.nc: the bank has no augmented windows"):
        mask_figure(saliency, field, 0, bank=empty, bank_source="bank.nc")
    other = make_bank().isel(patch_x=slice(0, 2))
    with pytest.raises(DataFileError, match=r"causal has \(step, patch_y, patch_x\) = \(3, 4, 2\)"):
        mask_figure(saliency, field, 0, bank=other)
