"""Tests for nuwa.metrics.

scikit-image is used here only as an independent reference implementation of
SSIM / PSNR; the package itself never imports it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from nuwa import metrics as M

skm = pytest.importorskip("skimage.metrics")

EPS = 1e-4  # Earthformer's epsilon


def smooth_field(rng, shape, sigma=2.0, scale=1.0, offset=0.0):
    """Spatially correlated noise of shape (B, T, C, H, W): white noise blurred over H, W."""
    x = gaussian_filter(rng.standard_normal(shape), sigma=(0, 0, 0, sigma, sigma))
    x = x / x.std()
    return offset + scale * x


def pair(rng, shape, noise=0.4, scale=1.0, offset=0.0):
    """A (pred, truth) pair where pred is truth plus smaller structured noise."""
    truth = smooth_field(rng, shape, scale=scale, offset=offset)
    pred = truth + smooth_field(rng, shape, sigma=1.0, scale=noise * scale)
    return pred, truth


def sk_ssim_images(pred, truth, data_range):
    B, T, C = pred.shape[:3]
    out = np.empty((B, T, C))
    for b in range(B):
        for t in range(T):
            for c in range(C):
                out[b, t, c] = skm.structural_similarity(
                    truth[b, t, c], pred[b, t, c], data_range=data_range
                )
    return out


def sk_psnr_frames(pred, truth, data_range):
    B, T = pred.shape[:2]
    out = np.empty((B, T))
    for b in range(B):
        for t in range(T):
            out[b, t] = skm.peak_signal_noise_ratio(
                truth[b, t], pred[b, t], data_range=data_range
            )
    return out


SHAPES = [
    (2, 3, 1, 16, 16),  # square
    (1, 2, 3, 9, 20),  # non-square, several channels
    (3, 1, 2, 7, 7),  # edge case: a single valid SSIM pixel per image
    (1, 2, 1, 33, 8),  # tall and narrow
]


# --------------------------------------------------------------------------- #
# SSIM
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (40.0, 273.0)])
def test_ssim_matches_skimage_per_image_and_mean(shape, scale, offset):
    rng = np.random.default_rng([*shape, int(scale)])
    pred, truth = pair(rng, shape, noise=0.3, scale=scale, offset=offset)
    data_range = float(truth.max() - truth.min())  # the data's real range, != 1 and != 2
    ref = sk_ssim_images(pred, truth, data_range)
    # The images must be informative (SSIM well inside (0, 1)) for this test to bite.
    assert 0.05 < ref.min() and ref.max() < 0.999
    got = M.ssim_per_image(pred, truth, data_range)
    assert got.shape == shape[:3]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    assert M.ssim(pred, truth, data_range) == pytest.approx(ref.mean(), rel=1e-6)


def test_ssim_depends_on_data_range_like_skimage():
    rng = np.random.default_rng(1)
    pred, truth = pair(rng, (2, 2, 1, 12, 10), noise=0.8)
    for dr in (0.5, 1.0, 2.0, 255.0):
        ref = sk_ssim_images(pred, truth, dr).mean()
        assert M.ssim(pred, truth, dr) == pytest.approx(ref, rel=1e-6)
    # data_range really matters (constants C1, C2 scale with it)
    assert abs(M.ssim(pred, truth, 2.0) - M.ssim(pred, truth, 255.0)) > 1e-2


def test_ssim_identical_images_is_one():
    rng = np.random.default_rng(2)
    truth = smooth_field(rng, (2, 2, 2, 11, 9), scale=5.0)
    assert M.ssim(truth, truth.copy(), data_range=7.5) == pytest.approx(1.0, abs=1e-12)
    const = np.full((1, 1, 1, 8, 8), 3.0)
    assert M.ssim(const, const, data_range=1.0) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_window():
    x = np.zeros((1, 1, 1, 6, 10))
    with pytest.raises(ValueError, match="H >= 7"):
        M.ssim(x, x, 1.0)
    with pytest.raises(ValueError, match="H >= 7"):
        M.MetricAccumulator(1.0).update(x, x)


def test_ssim_chunking_does_not_change_result(monkeypatch):
    rng = np.random.default_rng(3)
    pred, truth = pair(rng, (3, 2, 2, 10, 9))
    full = M.ssim_per_image(pred, truth, 3.0)
    monkeypatch.setattr(M, "_SSIM_CHUNK_PIXELS", 2 * 10 * 9 + 5)  # blocks of 2 images
    np.testing.assert_allclose(M.ssim_per_image(pred, truth, 3.0), full, rtol=1e-13)


# --------------------------------------------------------------------------- #
# PSNR
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", SHAPES)
def test_psnr_matches_skimage_per_frame(shape):
    rng = np.random.default_rng(sum(shape))
    pred, truth = pair(rng, shape, scale=12.0, offset=-3.0)
    data_range = float(truth.max() - truth.min())
    ref = sk_psnr_frames(pred, truth, data_range)
    got = M.psnr_per_frame(pred, truth, data_range)
    assert got.shape == shape[:2]
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    assert M.psnr(pred, truth, data_range) == pytest.approx(ref.mean(), rel=1e-10)


def test_psnr_perfect_frame_is_capped():
    rng = np.random.default_rng(4)
    truth = smooth_field(rng, (1, 2, 1, 8, 8))
    pred = truth.copy()
    pred[0, 1] += 0.1  # frame (0, 1) has mse 0.01 -> 10*log10(4 / 0.01) with data_range 2
    got = M.psnr_per_frame(pred, truth, data_range=2.0)
    assert got[0, 0] == pytest.approx(M.PSNR_CAP_DB) and M.PSNR_CAP_DB == pytest.approx(100.0)
    assert got[0, 1] == pytest.approx(10 * np.log10(4.0 / 0.01), rel=1e-9)
    assert np.isfinite(M.psnr(pred, truth, 2.0))


# --------------------------------------------------------------------------- #
# MSE / MAE (hand-computed)
# --------------------------------------------------------------------------- #
def test_mse_mae_and_frame_versions_by_hand():
    # Shape (B=2, T=1, C=2, H=1, W=2): 8 pixels, 2 frames of C*H*W = 4 values each.
    truth = 0.5 * np.arange(8.0).reshape(2, 1, 2, 1, 2)
    diff = np.array([1.0, -1.0, 2.0, 0.0, 0.0, 0.0, -4.0, 1.0]).reshape(2, 1, 2, 1, 2)
    pred = truth + diff
    # squared errors 1, 1, 4, 0, 0, 0, 16, 1 -> sum 23; absolute 1, 1, 2, 0, 0, 0, 4, 1 -> sum 9
    # mse = 23 / 8 = 2.875   mae = 9 / 8 = 1.125
    # mse_frame = 23 / (B*T = 2) = 11.5   mae_frame = 9 / 2 = 4.5
    assert M.mse(pred, truth) == pytest.approx(2.875, rel=1e-12)
    assert M.mae(pred, truth) == pytest.approx(1.125, rel=1e-12)
    assert M.mse_frame(pred, truth) == pytest.approx(11.5, rel=1e-12)
    assert M.mae_frame(pred, truth) == pytest.approx(4.5, rel=1e-12)
    for f in (M.mse, M.mae, M.mse_frame, M.mae_frame):
        assert type(f(pred, truth)) is float


def test_per_step_by_hand_and_against_accumulator():
    # T=2, H=W=7: step 0 has error +1 at every pixel, step 1 has error -3 at every pixel.
    rng = np.random.default_rng(5)
    truth = smooth_field(rng, (2, 2, 1, 7, 7), scale=10.0)
    diff = np.zeros_like(truth)
    diff[:, 0] = 1.0
    diff[:, 1] = -3.0
    pred = truth + diff
    out = M.per_step(pred, truth, data_range=40.0)
    assert set(out) == {"mse", "mae", "psnr", "ssim"}
    assert out["mse"] == pytest.approx([1.0, 9.0], rel=1e-12)
    assert out["mae"] == pytest.approx([1.0, 3.0], rel=1e-12)
    # psnr per step: 10*log10(40^2 / 1) = 32.0412 dB, 10*log10(1600 / 9) = 22.4988 dB
    assert out["psnr"] == pytest.approx([10 * np.log10(1600.0), 10 * np.log10(1600.0 / 9)])
    ref_ssim = sk_ssim_images(pred, truth, 40.0).mean(axis=(0, 2))
    np.testing.assert_allclose(out["ssim"], ref_ssim, rtol=1e-6)
    assert all(type(v) is float for vals in out.values() for v in vals)


# --------------------------------------------------------------------------- #
# CSI family (hand-counted)
# --------------------------------------------------------------------------- #
def _csi_example():
    # One 2x4 image, thresholds 2 and 4.
    truth = np.array([0, 2, 3, 5, 2, 2, 0, 4], dtype=float).reshape(1, 1, 1, 2, 4)
    pred = np.array([2, 1, 3, 0, 2, 2.5, 0, 1.999], dtype=float).reshape(1, 1, 1, 2, 4)
    # thr = 2 (events are >= 2):
    #   idx 0: pred 2 (exactly thr) / truth 0  -> false alarm
    #   idx 1: pred 1 / truth 2 (exactly thr)  -> miss
    #   idx 2: 3 / 3                           -> hit
    #   idx 3: 0 / 5                           -> miss
    #   idx 4: 2 / 2 (both exactly thr)        -> hit
    #   idx 5: 2.5 / 2                         -> hit
    #   idx 6: 0 / 0                           -> correct negative
    #   idx 7: 1.999 / 4                       -> miss
    #   => hits 3, misses 3, false alarms 1  (with '>' it would be 1, 2, 1)
    # thr = 4: truth events idx 3, 7; no pred event -> hits 0, misses 2, fas 0
    return pred, truth


def test_csi_pod_far_bias_hand_counted():
    pred, truth = _csi_example()
    counts = M.contingency_counts(pred, truth, [2.0, 4])
    np.testing.assert_array_equal(counts, [[3, 3, 1], [0, 2, 0]])
    s = M.csi_scores(pred, truth, [2.0, 4])
    assert s["csi_2"] == pytest.approx(3 / (3 + 3 + 1 + EPS), rel=1e-12)
    assert s["pod_2"] == pytest.approx(3 / (3 + 3 + EPS), rel=1e-12)
    assert s["far_2"] == pytest.approx(1 / (3 + 1 + EPS), rel=1e-12)
    assert s["bias_2"] == pytest.approx((3 + 1) / (3 + 3 + EPS), rel=1e-12)
    assert s["csi_4"] == 0.0 and s["pod_4"] == 0.0 and s["far_4"] == 0.0 and s["bias_4"] == 0.0
    assert s["csi_m"] == pytest.approx((3 / (7 + EPS) + 0.0) / 2, rel=1e-12)
    assert set(s) == {f"{m}_{t}" for m in ("csi", "pod", "far", "bias") for t in (2, 4)} | {
        "csi_m"
    }


def test_threshold_key_format():
    assert M.threshold_key("csi", 16) == "csi_16"
    assert M.threshold_key("csi", 16.0) == "csi_16"
    assert M.threshold_key("pod", 0.5) == "pod_0.5"
    pred, truth = _csi_example()
    assert "far_0.5" in M.csi_scores(pred, truth, [0.5])


def _pooling_batches():
    # 7x7 images (the accumulator also computes SSIM). threshold 5.
    a_truth = np.zeros((1, 1, 1, 7, 7))
    a_truth[0, 0, 0, 3, 3] = 10.0
    a_pred = a_truth.copy()  # batch A: 1 hit, nothing else          -> CSI ~ 1
    b_truth = np.zeros((1, 1, 1, 7, 7))
    b_truth[0, 0, 0, :3, :3] = 10.0  # batch B: 9 misses, no hits -> CSI 0
    b_pred = np.zeros_like(b_truth)
    return (a_pred, a_truth), (b_pred, b_truth)


def test_csi_pooled_over_batches_not_averaged():
    (ap, at), (bp, bt) = _pooling_batches()
    acc = M.MetricAccumulator(data_range=10.0, thresholds=[5])
    acc.update(ap, at)
    acc.update(bp, bt)
    streamed = acc.compute()
    np.testing.assert_array_equal(acc.counts, [[1, 9, 0]])
    pooled = 1 / (1 + 9 + 0 + EPS)  # ~0.1
    assert streamed["csi_5"] == pytest.approx(pooled, rel=1e-12)
    assert streamed["csi_m"] == pytest.approx(pooled, rel=1e-12)
    # Same as one update on the concatenation ...
    one = M.evaluate(np.concatenate([ap, bp]), np.concatenate([at, bt]), 10.0, [5])
    for k in ("csi_5", "pod_5", "far_5", "bias_5", "csi_m"):
        assert streamed[k] == one[k]
    # ... and NOT the mean of per-batch CSIs (~0.5).
    per_batch = [M.csi_scores(ap, at, [5])["csi_5"], M.csi_scores(bp, bt, [5])["csi_5"]]
    assert np.mean(per_batch) == pytest.approx(0.5, abs=1e-3)
    assert abs(streamed["csi_5"] - np.mean(per_batch)) > 0.3


# --------------------------------------------------------------------------- #
# Streaming accumulator
# --------------------------------------------------------------------------- #
def test_accumulator_matches_one_shot_and_references():
    rng = np.random.default_rng(6)
    shape_tail = (3, 2, 12, 10)  # T, C, H, W
    batches = [pair(rng, (b, *shape_tail), scale=30.0, offset=20.0) for b in (2, 1, 3)]
    thresholds = (10.0, 20, 35.5)
    data_range = 120.0
    acc = M.MetricAccumulator(data_range, thresholds)
    for p, t in batches:
        acc.update(p, t)
    got = acc.compute()
    pred = np.concatenate([p for p, _ in batches])
    truth = np.concatenate([t for _, t in batches])
    one = M.evaluate(pred, truth, data_range, thresholds)

    expected_keys = {"mse", "mae", "mse_frame", "mae_frame", "ssim", "psnr", "csi_m"} | {
        f"{m}_{t:g}" for m in ("csi", "pod", "far", "bias") for t in thresholds
    }
    assert set(got) == set(one) == expected_keys
    for k in expected_keys:
        assert got[k] == pytest.approx(one[k], rel=1e-12, abs=1e-15), k
        assert type(got[k]) is float
    json.dumps(got)

    # Independent references on the concatenation.
    d = pred - truth
    assert got["mse"] == pytest.approx(np.mean(d**2), rel=1e-12)
    assert got["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
    assert got["mse_frame"] == pytest.approx(np.mean(np.sum(d**2, axis=(2, 3, 4))), rel=1e-12)
    assert got["mae_frame"] == pytest.approx(np.mean(np.sum(np.abs(d), axis=(2, 3, 4))), rel=1e-12)
    assert got["ssim"] == pytest.approx(sk_ssim_images(pred, truth, data_range).mean(), rel=1e-6)
    assert got["psnr"] == pytest.approx(sk_psnr_frames(pred, truth, data_range).mean(), rel=1e-10)
    for thr in thresholds:
        h = np.sum((pred >= thr) & (truth >= thr))
        m = np.sum((pred < thr) & (truth >= thr))
        f = np.sum((pred >= thr) & (truth < thr))
        assert min(h, m, f) > 0  # the example exercises every cell
        assert got[f"csi_{thr:g}"] == pytest.approx(h / (h + m + f + EPS), rel=1e-12)

    # Per-step streaming equals per_step on the concatenation.
    ps_acc = acc.compute_per_step()
    ps_one = M.per_step(pred, truth, data_range)
    for k in ps_one:
        assert len(ps_acc[k]) == 3
        np.testing.assert_allclose(ps_acc[k], ps_one[k], rtol=1e-12)
    np.testing.assert_allclose(ps_one["mse"], np.mean(d**2, axis=(0, 2, 3, 4)), rtol=1e-12)

    # reset() forgets everything.
    acc.reset()
    with pytest.raises(ValueError, match="update"):
        acc.compute()


def test_accumulator_without_thresholds_has_core_keys_only():
    rng = np.random.default_rng(7)
    p, t = pair(rng, (1, 1, 1, 8, 8))
    acc = M.MetricAccumulator(2.0)
    acc.update(p, t)
    assert set(acc.compute()) == {"mse", "mae", "mse_frame", "mae_frame", "ssim", "psnr"}


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    p, t = pair(rng, (1, 2, 1, 8, 9))
    assert M.ssim(torch.from_numpy(p).float(), torch.from_numpy(t).float(), 3.0) == pytest.approx(
        M.ssim(p.astype(np.float32), t.astype(np.float32), 3.0), rel=1e-12
    )


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
def test_shape_mismatch_reports_both_shapes():
    a = np.zeros((1, 2, 1, 8, 8))
    b = np.zeros((1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 8, 8\).*\(1, 3, 1, 8, 8\)"):
        M.mse(a, b)
    with pytest.raises(ValueError, match="shape mismatch"):
        M.MetricAccumulator(1.0).update(a, b)


@pytest.mark.parametrize("which", ["pred", "truth"])
def test_non_5d_names_argument(which):
    good = np.zeros((1, 1, 1, 8, 8))
    bad = np.zeros((1, 1, 8, 8))
    args = (bad, good) if which == "pred" else (good, bad)
    with pytest.raises(ValueError, match=f"{which} must be 5-D"):
        M.mae(*args)


@pytest.mark.parametrize("which", ["pred", "truth"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_non_finite_names_argument(which, bad_value):
    good = np.zeros((1, 1, 1, 8, 8))
    bad = good.copy()
    bad[0, 0, 0, 2, 3] = bad_value
    args = (bad, good) if which == "pred" else (good, bad)
    word = "NaN" if np.isnan(bad_value) else "inf"
    with pytest.raises(ValueError, match=f"{which} contains non-finite.*{word}"):
        M.ssim(*args, data_range=1.0)
    acc = M.MetricAccumulator(1.0)
    with pytest.raises(ValueError, match=which):
        acc.update(*args)
    with pytest.raises(ValueError, match="update"):  # a failed update leaves no state behind
        acc.compute()


@pytest.mark.parametrize("dr", [0, -1.0, np.nan, np.inf, True, "abc", None])
def test_bad_data_range(dr):
    x = np.zeros((1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, x, dr)
    with pytest.raises(ValueError, match="data_range"):
        M.MetricAccumulator(dr)


def test_bad_thresholds_and_changing_frame_shape():
    with pytest.raises(ValueError, match="distinct"):
        M.MetricAccumulator(1.0, thresholds=[16, 16.0])
    with pytest.raises(ValueError, match="finite"):
        M.MetricAccumulator(1.0, thresholds=[np.nan])
    acc = M.MetricAccumulator(1.0)
    acc.update(np.zeros((2, 1, 1, 8, 8)), np.zeros((2, 1, 1, 8, 8)))
    with pytest.raises(ValueError, match="earlier batches"):
        acc.update(np.zeros((2, 1, 1, 8, 9)), np.zeros((2, 1, 1, 8, 9)))
    assert acc.n_samples == 2


def test_empty_input_rejected():
    x = np.zeros((0, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        M.mse(x, x)


def test_package_does_not_import_skimage():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(M.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "skimage" not in imported
    assert imported <= {"__future__", "math", "typing", "numpy", "scipy"}


# --------------------------------------------------------------------------- #
# Fractions Skill Score and per-lead CSI
# --------------------------------------------------------------------------- #
def _pysteps_spatialscores():
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints a banner on import
        return pytest.importorskip("pysteps.verification.spatialscores")


def _blob(shape, centre, sigma=2.5, peak=10.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return peak * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def test_fss_keys_follow_the_threshold_key_style():
    assert M.fss_key(0.5, 3) == "fss_0.5_3"
    assert M.fss_key(16.0, 1) == "fss_16_1"
    rng = np.random.default_rng(11)
    p, t = pair(rng, (2, 3, 1, 12, 12))
    got = M.evaluate(p, t, 4.0, [0.0, 1.0], fss_scales=(1, 4))
    assert {k for k in got if k.startswith("fss")} == {"fss_0_1", "fss_0_4", "fss_1_1", "fss_1_4"}
    # without scales: exactly today's keys
    assert set(M.evaluate(p, t, 4.0, [0.0, 1.0])) == set(got) - {"fss_0_1", "fss_0_4", "fss_1_1", "fss_1_4"}


def test_fss_of_a_perfect_forecast_is_one_at_every_scale():
    truth = np.stack([_blob((20, 24), (8 + k, 9 + 2 * k)) for k in range(3)])[None, :, None]
    got = M.evaluate(truth, truth.copy(), 10.0, [1.0, 5.0], fss_scales=(1, 2, 5, 30))
    for key in ("fss_1_1", "fss_1_2", "fss_1_5", "fss_1_30", "fss_5_1", "fss_5_30"):
        assert got[key] == 1.0


def test_fss_of_a_displaced_blob_grows_with_scale_and_matches_pysteps():
    spatialscores = _pysteps_spatialscores()
    truth = _blob((32, 32), (14, 10))
    pred = _blob((32, 32), (17, 15))  # displaced by (3, 5) pixels
    scales = (1, 2, 3, 5, 9, 15, 31)
    for thr in (1.0, 4.0):
        values = [M.fss(pred[None, None, None], truth[None, None, None], thr, s) for s in scales]
        assert all(b > a for a, b in zip(values, values[1:])), values
        assert values[0] < 0.5 and values[-1] > 0.9
        for scale, value in zip(scales, values):
            reference = spatialscores.fss(pred, truth, thr, scale)
            assert value == pytest.approx(reference, rel=1e-12, abs=1e-15), (thr, scale)


def test_fss_pooled_over_batches_as_pysteps_accumulates_it():
    spatialscores = _pysteps_spatialscores()
    rng = np.random.default_rng(12)
    shape_tail = (3, 2, 16, 20)  # T, C, H, W: every image accumulated, as fss_accum over a test split
    batches = [pair(rng, (b, *shape_tail), scale=3.0, offset=1.0) for b in (2, 1, 3)]
    thresholds, scales = (1.0, 3.5), (1, 3, 8)
    acc = M.MetricAccumulator(8.0, thresholds, fss_scales=scales)
    for p, t in batches:
        acc.update(p, t)
    got, per_lead = acc.compute(), acc.compute_per_step()
    for thr in thresholds:
        for scale in scales:
            pooled = spatialscores.fss_init(thr, scale)
            leads = [spatialscores.fss_init(thr, scale) for _ in range(shape_tail[0])]
            for p, t in batches:
                for b, lead, c in np.ndindex(p.shape[:3]):
                    spatialscores.fss_accum(pooled, p[b, lead, c], t[b, lead, c])
                    spatialscores.fss_accum(leads[lead], p[b, lead, c], t[b, lead, c])
            key = M.fss_key(thr, scale)
            assert got[key] == pytest.approx(spatialscores.fss_compute(pooled), rel=1e-12)
            np.testing.assert_allclose(per_lead[key], [spatialscores.fss_compute(f) for f in leads], rtol=1e-12)
            assert 0.0 < got[key] < 1.0
    json.dumps(got), json.dumps(per_lead)


def test_fss_without_any_event_is_nan_and_bad_scales_are_refused():
    zeros = np.zeros((1, 2, 1, 8, 8))
    got = M.evaluate(zeros, zeros, 1.0, [0.5], fss_scales=(3,))
    assert np.isnan(got["fss_0.5_3"]) and got["csi_0.5"] == 0.0
    for bad in ([0], [2.5], [True], [3, 3], ["3"]):
        with pytest.raises(ValueError, match="fss"):
            M.MetricAccumulator(1.0, [0.5], fss_scales=bad)
    with pytest.raises(ValueError, match="need thresholds"):
        M.MetricAccumulator(1.0, fss_scales=(3,))
    with pytest.raises(TypeError, match="fss_scales"):
        M.MetricAccumulator(1.0, [0.5], fss_scales="3")


def test_per_step_csi_per_threshold_and_lead():
    rng = np.random.default_rng(13)
    p, t = pair(rng, (3, 4, 1, 9, 9), scale=2.0)
    thresholds = (0.0, 1.0)
    acc = M.MetricAccumulator(6.0, thresholds)
    acc.update(p[:1], t[:1])
    acc.update(p[1:], t[1:])
    per_lead = acc.compute_per_step()
    assert set(per_lead) == {"mse", "mae", "psnr", "ssim", "csi_0", "csi_1"}
    for thr in thresholds:
        key = M.threshold_key("csi", thr)
        expected = [M.csi_scores(p[:, lead:lead + 1], t[:, lead:lead + 1], [thr])[key] for lead in range(4)]
        np.testing.assert_allclose(per_lead[key], expected, rtol=1e-12)
        assert all(type(v) is float for v in per_lead[key])
    # the pooled counts are still the sum over leads
    np.testing.assert_array_equal(acc.counts, M.contingency_counts(p, t, thresholds))
    assert set(M.per_step(p, t, 6.0, thresholds)) == set(per_lead)
