"""The trivial and the classical nowcasting baselines, as forecasters over physical-unit windows.

A deep model that loses to these is visible in the tables:

``persistence``
    repeat the last input frame for every lead time.
``optical_flow``
    pysteps' Lucas-Kanade optical flow (``pysteps.motion.get_method("LK")``) on a window's input
    frames, then semi-Lagrangian extrapolation (``pysteps.extrapolation.get_method(
    "semilagrangian")``) of its last frame along that motion field, one window at a time.
    Single-channel fields only.

Every baseline takes ``inputs`` shaped ``(N, T_in, C, H, W)`` (or one window ``(T_in, C, H, W)``)
in physical units and returns ``(N, T_out, C, H, W)`` (or ``(T_out, C, H, W)``) in the inputs'
float dtype. :func:`normalised_forecaster` wraps one as a callable from normalised torch inputs to
normalised torch outputs, so that :func:`nuwa.evaluate.evaluate_forecaster` scores models and
baselines alike; :func:`evaluate_baseline` scores one directly in physical units (no torch, no
normalisation round trip), with :class:`nuwa.metrics.MetricAccumulator`.

Optical-flow settings (``LK_SETTINGS``) and why
-----------------------------------------------
pysteps' own defaults for ``dense_lucaskanade`` (Shi-Tomasi features, ``min_distance=10``,
50 x 50 tracking windows on 3 pyramid levels, vectors declustered over 20-pixel boxes, inverse
distance interpolation, a 3-pixel morphological opening of the frames the motion is estimated on
(not of the frame that is extrapolated)). They were made for radar composites of hundreds of
1-km pixels, and on the 32 x 32 fields here they give an almost uniform motion field; lengths
scaled to the grid (``min_distance=3``, ``block_size=3``, 15 x 15 windows on 2 levels,
``decl_scale=4``, ``size_opening=0``, ``buffer_mask=0``) were tried and did no better (KNMI test
windows: MSE 0.228 against 0.219 with the defaults, CSI at 0.5 mm/h 0.777 against 0.774, at
5 mm/h 0.131 against 0.175; moving_glyphs and pollutant within 0.01 CSI either way). The
defaults are kept: no knob tuned on a test split. ``lk_settings`` overrides them.
``buffer_mask`` only widens masked (NaN) regions, and fields here hold no NaN (ingest refuses
them).

No absolute threshold is involved, so any real-valued field works, negative (standardised)
values included: pysteps' Shi-Tomasi detector and its LK tracker rescale every frame to 0-255
(8-bit) before OpenCV sees it, and its ``quality_level`` is relative to the frame's strongest
corner. The one absolute constant is pysteps' test ``max - min > 1e-8`` for a non-constant
frame, so the window is first rescaled to [0, 1] by its own min and max (an affine map, which
moves no feature): a field in tiny units is not mistaken for a constant one. A log (dB)
transform of rain rates before the motion estimate, pysteps' usual practice, changed CSI on the
KNMI test windows by less than 0.01 and needs a unit-dependent floor; it is not used.

The extrapolation is pysteps' default (linear interpolation, one midpoint iteration) applied to
the last input frame in physical units, so the forecast never leaves the range of that frame.
Pixels whose trajectory starts outside the domain (inflow across the border) take the value at
the nearest border pixel of the last frame (``map_coordinates_mode="nearest"``: what flows in is
what the upstream edge holds now), not pysteps' default NaN nor a unit-dependent constant such
as 0 mm/h, which is not "nothing" for a standardised field. The alternative of the last frame's
own value at those pixels copies a feature that is moving away onto the upstream edge (the
translating-blob test fails with it). On the KNMI test windows: MSE 0.219, CSI at 0.1 mm/h 0.905
(zero fill 0.280 and 0.858, own value 0.250 and 0.897); on the generated fields as good or better.

Degenerate windows
------------------
A window with fewer than 2 input frames, a constant window (all-zero rain included), or one
where LK finds no feature to track returns a zero motion field; the forecast is then persistence
for that window, recorded. A motion field that is not finite, and errors pysteps or OpenCV raise
on a window (``ValueError``, ``LinAlgError``, ``cv2.error``), also fall back to persistence for
that window, recorded with the message. pysteps' "Singular matrix during outlier detection"
warning (every vector equal, e.g. a rigid translation) is silenced: it is expected and harmless.

Pass ``record=[]`` to collect one dict per window, in order: ``motion`` (False where the window
fell back to persistence), ``reason`` (why, or None), ``mean_speed`` (mean motion-vector length,
pixels per frame). :func:`summarise_record` counts them (``fallback_windows`` and reasons), for
the baseline's metrics.json.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from nuwa.windows import SeriesData, WindowDataset

__all__ = [
    "BASELINES",
    "LK_SETTINGS",
    "NormalisedForecaster",
    "evaluate_baseline",
    "forecast_windows",
    "normalised_forecaster",
    "optical_flow",
    "persistence",
    "summarise_record",
]

#: Keyword arguments of ``pysteps.motion.lucaskanade.dense_lucaskanade`` (see the module docstring).
LK_SETTINGS: dict[str, Any] = {}  # pysteps' defaults

NO_MOTION = "no motion found (constant window or no feature to track)"
TOO_FEW_FRAMES = "fewer than 2 input frames"


def _as_windows(inputs: Any, output_frames: int) -> tuple[np.ndarray, bool]:
    """(N, T_in, C, H, W) float array and whether one window (4-D) was given."""
    if hasattr(inputs, "detach") and hasattr(inputs, "cpu"):  # a torch tensor, without importing torch
        inputs = inputs.detach().cpu().numpy()
    x = np.asarray(inputs)
    if x.ndim not in (4, 5):
        raise ValueError(f"inputs must be (N, T_in, C, H, W) or one window (T_in, C, H, W); got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if isinstance(output_frames, (bool, np.bool_)) or int(output_frames) != output_frames or output_frames < 1:
        raise ValueError(f"output_frames must be a positive integer, got {output_frames!r}")
    single = x.ndim == 4
    x = x[None] if single else x
    if x.shape[1] < 1:
        raise ValueError(f"inputs have no input frame (shape {x.shape})")
    return x, single


def persistence(inputs: Any, output_frames: int, record: list | None = None) -> np.ndarray:
    """Repeat the last input frame ``output_frames`` times: (N, T_in, C, H, W) -> (N, T_out, C, H, W)."""
    x, single = _as_windows(inputs, output_frames)
    out = np.repeat(x[:, -1:], int(output_frames), axis=1)
    if record is not None:
        record.extend({"motion": False, "reason": "persistence", "mean_speed": 0.0} for _ in range(len(x)))
    return out[0] if single else out


@contextlib.contextmanager
def _quiet():
    """Silence pysteps' import banner (stdout) and its expected warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Singular matrix during outlier detection")
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"numpy\..*")
        # the outlier test's Mahalanobis distance of a degenerate (flat) set of tracked points: NaN,
        # and such points are then kept or dropped as pysteps decides; nothing to report per window
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"pysteps\.utils\.cleansing")
        yield


def _pysteps():
    with _quiet():
        import cv2
        import pysteps.extrapolation
        import pysteps.motion
    return pysteps.motion.get_method("LK"), pysteps.extrapolation.get_method("semilagrangian"), cv2.error


def _check_single_channel(channels: int) -> None:
    if channels != 1:
        raise ValueError(f"optical_flow forecasts single-channel fields only; this field has {channels} "
                         "channels (pysteps' Lucas-Kanade tracks one 2-D field)")


def optical_flow(inputs: Any, output_frames: int, record: list | None = None,
                 lk_settings: dict | None = None) -> np.ndarray:
    """pysteps LK motion of each window's input frames, semi-Lagrangian extrapolation of its last frame.

    ``lk_settings`` replaces :data:`LK_SETTINGS` (keyword arguments of pysteps'
    ``dense_lucaskanade``, empty: its defaults); see the module docstring for the settings, the degenerate windows
    (persistence for that window, recorded in ``record`` if given) and why any real field works.
    """
    x, single = _as_windows(inputs, output_frames)
    _check_single_channel(x.shape[2])
    lucas_kanade, extrapolate, cv2_error = _pysteps()
    settings = copy.deepcopy(LK_SETTINGS if lk_settings is None else lk_settings)
    steps = int(output_frames)
    out = np.empty((x.shape[0], steps, *x.shape[2:]), dtype=x.dtype)
    for n, window in enumerate(x):
        frames = window[:, 0].astype(np.float64)  # (T_in, H, W)
        last = frames[-1]
        reason, speed = None, 0.0
        low, high = frames.min(), frames.max()
        if len(frames) < 2:
            reason = TOO_FEW_FRAMES
        elif not high > low:
            reason = NO_MOTION
        else:
            try:
                with _quiet():
                    motion = lucas_kanade((frames - low) / (high - low), **settings)
                if not np.all(np.isfinite(motion)):
                    reason = "non-finite motion field"
                elif not np.any(motion):
                    reason = NO_MOTION
            except (ValueError, np.linalg.LinAlgError, cv2_error) as exc:
                reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            speed = float(np.mean(np.hypot(motion[0], motion[1])))
            with _quiet():
                out[n, :, 0] = extrapolate(last, motion, steps, map_coordinates_mode="nearest")
        else:
            out[n, :, 0] = last
        if record is not None:
            record.append({"motion": reason is None, "reason": reason, "mean_speed": speed})
    return out[0] if single else out


#: name -> baseline(inputs, output_frames, record=None) in physical units.
BASELINES: dict[str, Callable[..., np.ndarray]] = {"persistence": persistence, "optical_flow": optical_flow}


def _baseline(name: str) -> Callable[..., np.ndarray]:
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})") from None


def summarise_record(record: Sequence[dict]) -> dict:
    """``windows``, ``fallback_windows`` (persistence instead of motion) and the reasons' counts."""
    reasons = Counter(r["reason"] for r in record if not r["motion"] and r["reason"] != "persistence")
    return {"windows": len(record), "fallback_windows": sum(reasons.values()),
            "fallback_reasons": dict(sorted(reasons.items()))}


class NormalisedForecaster:
    """A baseline as normalised torch inputs (N, T_in, C, H, W) -> normalised outputs (N, T_out, C, H, W).

    Inputs are denormalised with the series' statistics, forecast in physical units, normalised
    back (float32). ``record`` holds one entry per window forecast so far (see the module docstring).
    """

    def __init__(self, name: str, series: SeriesData, output_frames: int, **options):
        self.name = name
        self.baseline = _baseline(name)
        if name == "optical_flow":
            _check_single_channel(series.field.shape[1])
        self.series = series
        self.output_frames = int(output_frames)
        self.options = options
        self.record: list[dict] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        import torch

        physical = self.series.denormalise(inputs.detach().cpu().numpy())
        forecast = self.baseline(physical, self.output_frames, record=self.record, **self.options)
        return torch.from_numpy(self.series.normalise(forecast))

    def summary(self) -> dict:
        return {"baseline": self.name, **summarise_record(self.record)}


def normalised_forecaster(name: str, series: SeriesData, output_frames: int, **options) -> NormalisedForecaster:
    """``BASELINES[name]`` wrapped for :func:`nuwa.evaluate.evaluate_forecaster` (see :class:`NormalisedForecaster`)."""
    return NormalisedForecaster(name, series, output_frames, **options)


def forecast_windows(name: str, windows: WindowDataset, batch_size: int = 32, record: list | None = None,
                     **options) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(starts, prediction, truth) per batch of ``windows``, in physical units, in window order.

    Checks the name, the channel count and ``batch_size`` here, before the first batch."""
    baseline = _baseline(name)
    if name == "optical_flow":
        _check_single_channel(windows.series.field.shape[1])
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return _batches(baseline, windows, int(batch_size), record, options)


def _batches(baseline, windows, batch_size, record, options):
    lead = np.arange(windows.output_frames)
    for first in range(0, len(windows), batch_size):
        starts = np.asarray(windows.starts[first:first + batch_size])
        prediction = baseline(windows.inputs(starts), windows.output_frames, record=record, **options)
        truth = windows.series.field[starts[:, None] + windows.input_frames + lead[None, :]]
        yield starts, prediction, truth


def evaluate_baseline(name: str, windows: WindowDataset, thresholds: Sequence[float] = (),
                      fss_scales: Sequence[int] = (), batch_size: int = 32, **options) -> tuple[dict, dict]:
    """Pooled metrics of ``BASELINES[name]`` over ``windows`` (physical units), and per lead time.

    Returns ``(metrics, per_step)``: ``metrics`` as :meth:`MetricAccumulator.compute` plus
    ``test_windows``, ``baseline`` and the fallback summary (:func:`summarise_record`);
    ``per_step`` as :meth:`MetricAccumulator.compute_per_step`.
    """
    from nuwa.metrics import MetricAccumulator

    if len(windows) == 0:
        raise ValueError("no windows to evaluate")
    accumulator = MetricAccumulator(windows.series.data_range, thresholds, fss_scales=fss_scales)
    record: list[dict] = []
    for _, prediction, truth in forecast_windows(name, windows, batch_size, record=record, **options):
        accumulator.update(prediction, truth)
    metrics = accumulator.compute()
    metrics["test_windows"] = len(windows)
    metrics.update({"baseline": name, **summarise_record(record)})
    return metrics, accumulator.compute_per_step()
