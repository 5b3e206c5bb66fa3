"""nuwa.baselines: persistence and pysteps' optical flow (Lucas-Kanade + semi-Lagrangian) as forecasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from nuwa import baselines as B
from nuwa.ingest import SPLIT_CODES
from nuwa.windows import SeriesData, WindowDataset

REPO = Path(__file__).resolve().parents[1]
KNMI = REPO.parent / "shared/data/radar/KNMI"


def blob_series(dy: float, dx: float, frames: int = 12, size: int = 32, y0: float = 8.0, x0: float = 6.0,
                sigma: float = 3.0) -> np.ndarray:
    """A Gaussian blob moving (dy, dx) pixels per frame: (frames, 1, size, size) float32."""
    yy, xx = np.mgrid[:size, :size]
    return np.stack([np.exp(-((yy - y0 - dy * t) ** 2 + (xx - x0 - dx * t) ** 2) / (2 * sigma**2))
                     for t in range(frames)])[:, None].astype(np.float32)


def in_memory_series(field: np.ndarray, split: str = "test") -> SeriesData:
    channels = field.shape[1]
    return SeriesData(field=field.astype(np.float32), split=np.full(len(field), SPLIT_CODES[split], np.int8),
                      mean=field.mean(axis=(0, 2, 3)).astype(np.float32),
                      std=field.std(axis=(0, 2, 3)).astype(np.float32),
                      data_range=float(field.max() - field.min()), name="field", attrs={})


def test_persistence_repeats_the_last_frame_for_one_window_or_a_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2, 5, 6)).astype(np.float32)
    out = B.persistence(x, 7)
    assert out.shape == (3, 7, 2, 5, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(x[:, -1:], 7, axis=1))
    np.testing.assert_array_equal(B.persistence(x[1], 2), out[1, :2])
    with pytest.raises(ValueError, match="output_frames"):
        B.persistence(x, 0)
    with pytest.raises(ValueError, match="T_in"):
        B.persistence(x[0, 0], 3)


@pytest.mark.parametrize("dy,dx,y0,x0", [(1, 2, 8, 6), (0.6, -1.3, 8, 24), (-1.5, 0.5, 24, 12)])
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (2.0, -5.0), (40.0, 0.0), (1e-12, 0.0)])
def test_optical_flow_follows_a_translating_blob(dy, dx, y0, x0, scale, offset):
    """Rain-like (>= 0), standardised (negative), large and tiny units: the motion is found and the
    extrapolated blob matches the shifted truth; persistence is far off."""
    field = offset + scale * blob_series(dy, dx, y0=y0, x0=x0)
    inputs, truth = field[:6], field[6:]
    record = []
    forecast = B.optical_flow(inputs, 6, record=record)
    assert forecast.shape == truth.shape and forecast.dtype == np.float32
    flow_mse = np.mean((forecast - truth) ** 2)
    persistence_mse = np.mean((B.persistence(inputs, 6) - truth) ** 2)
    assert flow_mse < 1e-3 * persistence_mse
    # integer shifts are exact; sub-pixel ones lose a little to linear interpolation
    assert np.abs(forecast - truth).max() < 0.03 * scale
    assert record == [{"motion": True, "reason": None, "mean_speed": pytest.approx(np.hypot(dy, dx), abs=0.01)}]


def test_degenerate_windows_fall_back_to_persistence_and_are_recorded():
    moving = blob_series(1, 2)[:6]
    windows = np.stack([moving, np.zeros_like(moving), np.full_like(moving, -3.25), blob_series(0, 0)[:6]])
    record = []
    forecast = B.optical_flow(windows, 4, record=record)
    assert [r["motion"] for r in record] == [True, False, False, False]
    assert [r["reason"] for r in record[1:]] == [B.NO_MOTION] * 3  # zeros, a constant, a blob that stays put
    np.testing.assert_array_equal(forecast[1:], B.persistence(windows[1:], 4))
    assert not np.allclose(forecast[0], B.persistence(windows[0], 4))
    assert B.summarise_record(record) == {"windows": 4, "fallback_windows": 3, "fallback_reasons": {B.NO_MOTION: 3}}
    one = []
    np.testing.assert_array_equal(B.optical_flow(moving[-1:], 3, record=one), B.persistence(moving[-1:], 3))
    assert one[0]["reason"] == B.TOO_FEW_FRAMES


def test_optical_flow_tracks_each_channel_along_its_own_motion():
    """In and out flows, two species...: each channel is tracked and extrapolated alone."""
    field = np.concatenate([blob_series(1, 2, y0=8, x0=6), blob_series(-1.5, 0.5, y0=24, x0=12)], axis=1)
    inputs, truth = field[:6], field[6:]
    record = []
    forecast = B.optical_flow(inputs, 6, record=record)
    assert forecast.shape == truth.shape == (6, 2, 32, 32)
    for channel in (0, 1):
        alone = B.optical_flow(inputs[:, channel:channel + 1], 6)
        np.testing.assert_array_equal(forecast[:, channel:channel + 1], alone)  # nothing ties the channels
        flow_mse = np.mean((forecast[:, channel] - truth[:, channel]) ** 2)
        persistence_mse = np.mean((inputs[-1, channel] - truth[:, channel]) ** 2)
        assert flow_mse < 1e-2 * persistence_mse
    assert len(record) == 2 and all(r["motion"] for r in record)  # one entry per window and channel
    series = in_memory_series(field)
    assert B.normalised_forecaster("optical_flow", series, 6).name == "optical_flow"


def test_unknown_baseline_is_named():
    series = in_memory_series(blob_series(1, 1))
    with pytest.raises(ValueError, match="unknown baseline 'climatology'.*persistence, optical_flow"):
        B.normalised_forecaster("climatology", series, 6)
    assert set(B.BASELINES) == {"persistence", "optical_flow"}


def test_forecast_windows_and_normalised_forecaster_agree_with_evaluate_forecaster():
    torch = pytest.importorskip("torch")
    from nuwa.evaluate import evaluate_forecaster, persistence as torch_persistence

    frames = np.concatenate([blob_series(1, 1.5, frames=20, x0=2), blob_series(-1, 0.5, frames=20, y0=26)])
    series = in_memory_series(3.0 * frames - 1.0)
    series.split[:20] = SPLIT_CODES["train"]
    windows = WindowDataset(series, "test", 5, 4, 2)
    assert len(windows) == 6
    batches = list(B.forecast_windows("persistence", windows, batch_size=4))
    assert [len(starts) for starts, _, _ in batches] == [4, 2]
    starts = np.concatenate([s for s, _, _ in batches])
    np.testing.assert_array_equal(starts, windows.starts)
    truth = np.concatenate([t for _, _, t in batches])
    np.testing.assert_allclose(truth, series.denormalise(windows.targets_normalised(starts).numpy()), atol=1e-5)

    thresholds = [0.5, 1.5]
    for name in ("persistence", "optical_flow"):
        forecaster = B.normalised_forecaster(name, series, windows.output_frames)
        result = evaluate_forecaster(forecaster, windows, thresholds, batch_size=4)  # 2 or 3 items
        metrics, _ = B.evaluate_baseline(name, windows, thresholds, batch_size=4)
        for key in ("mse", "mae", "ssim", "csi_0.5", "csi_1.5"):
            assert result[0][key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), (name, key)
        assert forecaster.summary()["windows"] == len(windows)
        assert metrics["test_windows"] == len(windows) and metrics["baseline"] == name
    # the numpy persistence is the torch one of nuwa.evaluate
    _, inputs, _ = next(iter(torch.utils.data.DataLoader(windows, batch_size=6)))
    np.testing.assert_allclose(B.normalised_forecaster("persistence", series, 4)(inputs).numpy(),
                               torch_persistence(inputs, 4).numpy(), atol=1e-6)
    flow, _ = B.evaluate_baseline("optical_flow", windows, thresholds)
    still, _ = B.evaluate_baseline("persistence", windows, thresholds)
    assert flow["mse"] < 0.1 * still["mse"] and flow["fallback_windows"] == 0


def test_evaluate_baseline_reports_fss_and_per_lead_scores():
    series = in_memory_series(blob_series(1, 2, frames=12))
    windows = WindowDataset(series, "test", 6, 6, 1)
    metrics, per_step = B.evaluate_baseline("optical_flow", windows, [0.5], fss_scales=(1, 5))
    assert {"fss_0.5_1", "fss_0.5_5", "csi_0.5"} <= set(metrics)
    assert metrics["fss_0.5_1"] == pytest.approx(1.0) and metrics["csi_0.5"] == pytest.approx(1.0, abs=1e-3)
    assert len(per_step["csi_0.5"]) == len(per_step["fss_0.5_5"]) == 6


@pytest.mark.skipif(not KNMI.is_dir(), reason=f"real radar data not present at {KNMI}")
def test_optical_flow_beats_persistence_on_the_knmi_test_windows(tmp_path):
    from nuwa.ingest import ingest
    from nuwa.io import write_netcdf
    from nuwa.windows import load_series, select_dataset

    config = yaml.safe_load((REPO / "params.yaml").read_text())["datasets"]["radar_knmi"]
    config["source"] = str((REPO / config["source"]).resolve())
    write_netcdf(ingest("radar_knmi", config), tmp_path / "knmi.nc")
    test = select_dataset(load_series(tmp_path / "knmi.nc"), config, "test")
    thresholds = [0.1, 0.5, 2.0]
    flow, flow_steps = B.evaluate_baseline("optical_flow", test, thresholds, fss_scales=(1, 5))
    still, still_steps = B.evaluate_baseline("persistence", test, thresholds, fss_scales=(1, 5))
    print("\nKNMI test windows:", len(test))
    for key in ("mse", "csi_0.1", "csi_0.5", "csi_2", "fss_0.5_1", "fss_0.5_5"):
        print(f"  {key:10s} optical_flow {flow[key]:.3f}  persistence {still[key]:.3f}")
    # measured 2026-12: mse 0.228 vs 0.783, csi_0.5 0.777 vs 0.637, csi_2 0.580 vs 0.262
    assert flow["fallback_windows"] == 0
    assert flow["mse"] < 0.5 * still["mse"]
    assert flow["csi_0.5"] > still["csi_0.5"] + 0.08
    assert flow["csi_2"] > still["csi_2"] + 0.2
    assert flow["fss_0.5_5"] > still["fss_0.5_5"]
    # better at every lead time, and the gap grows with the lead
    gaps = np.subtract(flow_steps["csi_0.5"], still_steps["csi_0.5"])
    assert np.all(gaps > 0) and gaps[-1] > gaps[0]
