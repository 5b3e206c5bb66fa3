"""Saliency diagnostics: overlap of the environmental patches with the signal, rank correlations,
mask stability, the in-process driver and its figure."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from nuwa.diagnostics import (COLUMNS, PER_SEED_COLUMNS, diagnose, diagnose_importance, diagnose_tables,
                              empty_share, environmental, iou_chance, mask_iou, overlap, patch_anomaly, patch_change,
                              patch_mean, step_spearman, training_climatology)
from nuwa.figures import diagnostics_figure
from nuwa.saliency import causal_mask

from conftest import TINY_PARAMS

H, BLOB, P, T = 16, 8, 2, 4  # 8 x 8 patches of 2 x 2: L = 64, k = ⌊0.25·64⌋ = 16 = the blob's patches
RATIO = 0.25


def blob_series(length: int = 64) -> np.ndarray:
    """(time, 1, H, W): one bright 8 x 8 blob (1) over a flat background (0), moving (2, 4) pixels a step, wrapping."""
    field = np.zeros((length, 1, H, H), dtype=np.float32)
    blob = np.zeros((H, H), dtype=np.float32)
    blob[:BLOB, :BLOB] = 1.0
    for t in range(length):
        field[t, 0] = np.roll(blob, ((2 * t) % H, (4 * t) % H), axis=(0, 1))
    return field


@pytest.fixture(scope="module")
def blob():
    field = blob_series()
    climatology = field.mean(axis=0)  # 0.25 everywhere: the blob covers each pixel a quarter of the time
    starts = np.arange(0, len(field) - T + 1, 3)
    windows = field[starts[:, None] + np.arange(T)[None, :]]  # (N, T, 1, H, W)
    on_blob = patch_mean(windows, P) > 0.5  # (N, T, 8, 8): the 16 patches under the blob
    assert (on_blob.reshape(len(starts), T, -1).sum(axis=-1) == 16).all()
    return windows, climatology, on_blob


def test_patch_scores_on_hand_made_windows():
    windows = np.zeros((1, 3, 2, 4, 4), dtype=np.float32)
    windows[0, 1, 0, :2, :2] = 4.0  # step 1: top-left patch, one channel of two
    climatology = np.zeros((2, 4, 4))
    climatology[1] = 1.0  # channel 1 sits one above its mean everywhere
    anomaly = patch_anomaly(windows, climatology, 2)
    assert anomaly.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(anomaly[0, 1], [[2.5, 0.5], [0.5, 0.5]])  # mean over pixels and channels
    np.testing.assert_allclose(anomaly[0, 0], 0.5)
    change = patch_change(windows, 2)
    np.testing.assert_allclose(change[0, 1], [[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(change[0, 2], [[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(change[0, 0], change[0, 1])  # step 0 takes |x_1 - x_0|
    with pytest.raises(ValueError, match="does not divide"):
        patch_mean(windows, 3)
    with pytest.raises(ValueError, match="T >= 2"):
        patch_change(windows[:, :1], 2)


def test_blob_least_important_is_all_environmental(blob):
    windows, climatology, on_blob = blob
    importance = np.where(on_blob, 0.0, 1.0).astype(np.float32)  # the blob is the least important
    env = environmental(importance, RATIO)
    np.testing.assert_array_equal(env, on_blob)
    anomaly = patch_anomaly(windows, climatology, P)
    assert overlap(env, anomaly) == 1.0
    numbers = diagnose_importance(windows, climatology, importance, P, RATIO)
    assert numbers["k"] == 16 and numbers["patches"] == 64 and numbers["chance"] == RATIO
    assert numbers["overlap_anomaly"] == 1.0
    assert numbers["spearman_anomaly"] == pytest.approx(-1.0)  # two levels each, one the mirror of the other
    assert numbers["spearman_anomaly_skipped"] == 0 and numbers["spearman_steps"] == windows.shape[0] * T
    # every causal patch is background, at its step's median anomaly (0.25 against 0.75; 48 of 64 patches)
    assert numbers["causal_empty_share"] == 1.0 and numbers["empty_chance"] == pytest.approx(0.75)
    # the blob moves a patch or two a step: its edges change, its interior too (it moves by half its size)
    assert numbers["overlap_change"] > RATIO


def test_graded_importance_mirroring_the_anomaly_correlates_minus_one(blob):
    windows, climatology, _ = blob
    anomaly = patch_anomaly(windows, climatology, P)
    noise = np.random.default_rng(0).random(anomaly.shape) * 1e-3  # strictly ordered within each level
    importance = 1.0 - (anomaly + noise) / (anomaly + noise).max()
    rho, skipped, steps = step_spearman(importance, anomaly + noise)
    assert rho == pytest.approx(-1.0) and skipped == 0 and steps == anomaly.shape[0] * T


def test_blob_most_important_overlap_zero(blob):
    windows, climatology, on_blob = blob
    importance = np.where(on_blob, 1.0, 0.0).astype(np.float32)
    numbers = diagnose_importance(windows, climatology, importance, P, RATIO)
    assert numbers["overlap_anomaly"] == 0.0
    assert numbers["spearman_anomaly"] == pytest.approx(1.0)
    assert numbers["causal_empty_share"] == pytest.approx(32 / 48)  # 48 causal: the 16 blob + 32 background


def test_random_importance_overlap_near_chance(blob):
    windows, climatology, _ = blob
    importance = np.random.default_rng(7).random((windows.shape[0], T, H // P, H // P)).astype(np.float32)
    numbers = diagnose_importance(windows, climatology, importance, P, RATIO)
    assert numbers["overlap_anomaly"] == pytest.approx(RATIO, abs=0.06)
    assert numbers["overlap_change"] == pytest.approx(RATIO, abs=0.06)
    assert abs(numbers["spearman_anomaly"]) < 0.1
    assert numbers["causal_empty_share"] == pytest.approx(numbers["empty_chance"], abs=0.06)


def test_overlap_default_k_and_explicit_k():
    env = np.zeros((1, 1, 8), dtype=bool)
    env[..., :2] = True
    score = np.arange(8.0)[::-1].reshape(1, 1, 8)  # patch 0 scores highest
    assert overlap(env, score) == 1.0  # k = 2 environmental patches per step
    assert overlap(env, score, k=4) == 0.5
    ragged = np.zeros((1, 2, 8), dtype=bool)
    ragged[0, 0, 0] = True
    with pytest.raises(ValueError, match="pass k"):
        overlap(ragged, np.zeros((1, 2, 8)))


def test_step_spearman_matches_scipy_and_skips_constant_steps():
    rng = np.random.default_rng(1)
    importance = rng.random((5, 3, 4, 4))
    score = np.round(importance + rng.normal(0, 0.3, importance.shape), 1)  # ties in the score
    importance[0, 1] = 0.0  # constant importance (a normalised step with equal attention)
    score[2, 2] = 3.0  # constant score
    expected = [spearmanr(importance[n, t].ravel(), score[n, t].ravel()).statistic
                for n in range(5) for t in range(3) if (n, t) not in ((0, 1), (2, 2))]
    rho, skipped, steps = step_spearman(importance, score)
    assert skipped == 2 and steps == 15
    assert rho == pytest.approx(np.mean(expected), abs=1e-12)


def test_mask_iou_identical_disjoint_and_partial():
    importance = np.random.default_rng(2).random((3, 2, 4, 4))
    env = environmental(importance, RATIO)  # 4 of 16 per step
    assert mask_iou(env, env) == 1.0
    assert mask_iou(env, environmental(-importance, RATIO)) == 0.0  # the 4 most important: disjoint
    a = np.zeros((1, 1, 4), dtype=bool)
    b = a.copy()
    a[..., :2] = True
    b[..., 1:3] = True
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(np.zeros((2, 4), bool), np.zeros((2, 4), bool)) == 1.0
    # two unrelated random masks: the hypergeometric expectation, 0.146 for 16 of 64 patches
    rng = np.random.default_rng(4)
    random_a, random_b = (environmental(rng.random((200, 4, 8, 8)), RATIO) for _ in range(2))
    assert iou_chance(64, 16) == pytest.approx(0.1462, abs=1e-4)
    assert mask_iou(random_a, random_b) == pytest.approx(iou_chance(64, 16), abs=0.01)


def test_environmental_is_the_banks_mask():
    importance = np.round(np.random.default_rng(3).random((2, 3, 4, 4)), 1).astype(np.float32)  # ties
    expected = causal_mask(importance.reshape(2, 3, 16), RATIO).reshape(importance.shape) == 0
    np.testing.assert_array_equal(environmental(importance, RATIO), expected)


def test_empty_share_definition():
    anomaly = np.array([[0.0, 0.0, 1.0, 2.0, 3.0, 4.0],  # median 1.5: patches 0..2 are empty
                        [0.0, 0.0, 0.0, 0.0, 5.0, 6.0]])  # median 0 (a flat background): 0..3 are empty
    env = np.array([[False, True, False, True, False, False],
                    [False, False, False, False, True, True]])
    share, chance = empty_share(env, anomaly)
    assert share == pytest.approx((2 + 4) / (4 + 4)) and chance == pytest.approx((3 + 4) / 12)


@pytest.fixture(scope="module")
def tiny_glyphs(tmp_path_factory):
    from nuwa.ingest import ingest
    from nuwa.io import write_netcdf
    from nuwa.windows import load_series

    params = yaml.safe_load(TINY_PARAMS.read_text())
    path = tmp_path_factory.mktemp("diagnostics") / "moving_glyphs.nc"
    write_netcdf(ingest("moving_glyphs", params["datasets"]["moving_glyphs"]), path)
    return load_series(path), params


def test_driver_end_to_end_on_tiny_glyphs(tiny_glyphs):
    series, params = tiny_glyphs
    config = params["datasets"]["moving_glyphs"]
    pretrain_config = {**params["pretrain"], "depth": 2}
    table, per_seed = diagnose_tables(series, "moving_glyphs", config, pretrain_config, seeds=(0, 1),
                                      layer_choices=([-1], [0, 1]), steps=3, batch_size=32)
    assert list(table.columns) == list(COLUMNS)
    assert [(r.objective, r.layers) for r in table.itertuples()] == [
        (objective, layers) for objective in ("reconstruct", "masked", "next_frame") for layers in ("-1", "0,1")]
    assert (table["pretrain_steps"] == 3).all() and (table["seeds"] == "0,1").all()
    assert (table["k"] == 4).all() and (table["patches"] == 16).all() and (table["chance"] == 0.25).all()
    for column in ("overlap_anomaly", "overlap_change", "seed_iou", "causal_empty_share"):
        assert table[column].between(0, 1).all(), column
    for column in ("spearman_anomaly", "spearman_change"):
        assert table[column].between(-1, 1).all(), column
    assert table["overlap_anomaly_sd"].notna().all() and table["final_loss"].gt(0).all()
    # the windows are the training split's, the same for every row
    assert table["windows"].nunique() == 1
    assert table["spearman_steps"].eq(2 * table["windows"] * config["input_frames"]).all()  # two seeds' steps
    assert training_climatology(series).shape == series.field.shape[1:]
    assert list(per_seed.columns) == list(PER_SEED_COLUMNS) and len(per_seed) == 2 * len(table)
    means = per_seed.groupby(["objective", "layers"], sort=False)["overlap_anomaly"].mean().to_numpy()
    np.testing.assert_allclose(table["overlap_anomaly"].to_numpy(), means)

    figure = diagnostics_figure(table, "moving_glyphs")
    try:
        assert len(figure.axes) == 3
        overlap_axis = figure.axes[0]
        chance_lines = [line for line in overlap_axis.get_lines() if line.get_linestyle() == "--"]
        assert [tuple(line.get_ydata()) for line in chance_lines] == [(0.25, 0.25)]
        assert len(overlap_axis.patches) == 2 * len(table)  # anomaly and change bars
    finally:
        plt.close(figure)


def test_driver_one_seed_has_no_stability_numbers(tiny_glyphs):
    series, params = tiny_glyphs
    table = diagnose(series, "moving_glyphs", params["datasets"]["moving_glyphs"], params["pretrain"],
                     objectives=("reconstruct",), seeds=(0,), steps=2)
    assert len(table) == 1 and np.isnan(table["seed_iou"].iloc[0]) and np.isnan(table["overlap_anomaly_sd"].iloc[0])
    figure = diagnostics_figure(table, "moving_glyphs")
    try:
        assert len(figure.axes) == 2  # no IoU panel without two seeds
    finally:
        plt.close(figure)


def test_the_masks_in_use_are_a_last_row_beside_the_pretrained_ones(blob):
    import pandas as pd

    from nuwa.diagnostics import add_masks_in_use

    windows, climatology, on_blob = blob
    importance = np.where(on_blob, 0.0, 1.0).astype(np.float32)
    table = pd.DataFrame([{"dataset": "blob", "objective": "masked", "layers": "-1", "overlap_anomaly": 0.3}])
    both = add_masks_in_use(table, windows, climatology, importance, dataset_name="blob", patch_size=P, ratio=RATIO,
                            pretrain_config={"objective": "reconstruct", "seed": 0, "steps": 150}, layers=[-1],
                            source="sal.nc")
    assert list(both["masks"]) == ["pretrained here", "in use (sal.nc)"]
    last = both.iloc[-1]
    assert last["objective"] == "reconstruct" and last["layers"] == "-1" and last["seeds"] == "0"
    assert last["overlap_anomaly"] == diagnose_importance(windows, climatology, importance, P, RATIO)["overlap_anomaly"]
    assert "masks" not in table  # the caller's table is left as it was
