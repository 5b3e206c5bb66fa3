"""The trivial and the classical nowcasting baselines, as forecasters over physical-unit windows.

A deep model that loses to these is visible in the tables:

``persistence``
    repeat the last input frame for every lead time.
``optical_flow``
    pysteps' Lucas-Kanade optical flow (``pysteps.motion.get_method("LK")``) on a window's input
    frames, then semi-Lagrangian extrapolation (``pysteps.extrapolation.get_method(
    "semilagrangian")``) of its last frame along that motion field, one window at a time. A
    field with several channels (e.g. in and out flows) has each channel tracked and
    extrapolated along its own motion field: nothing ties the channels' motions together.

Every baseline takes ``inputs`` shaped ``(N, T_in, C, H, W)`` (or one window ``(T_in, C, H, W)``)
in physical units and returns ``(N, T_out, C, H, W)`` (or ``(T_out, C, H, W)``) in the inputs'
float dtype. :func:`normalised_forecaster` wraps one as a callable from normalised torch inputs to
normalised torch outputs, so that :func:`nuwa.evaluate.evaluate_forecaster` scores models and
baselines alike; :func:`evaluate_baseline` scores one directly in physical units (no torch, no
normalisation round trip), with :class:`nuwa.metrics.MetricAccumulator`.

Super-resolution (``input_factor`` > 1, :mod:`nuwa.superres`)
---------------------------------------------------------------
:func:`normalised_forecaster` with an ``input_factor`` is given coarse (block-averaged) inputs
and returns full-resolution forecasts: the baseline forecasts on the coarse grid (persistence:
the last coarse frame; optical flow: pysteps' motion and extrapolation of the coarse field, with
the settings below), and each coarse cell is then repeated ``input_factor`` x
``input_factor`` (nearest neighbour, :func:`nuwa.superres.upsample_nearest`). That is the
block-constant field whose block means are the coarse forecast: no detail is invented, which is
what a trivial baseline should do; an interpolating upsampler (bilinear, bicubic) would be a
method of its own.

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

Never-observed pixels (``observed``)
-------------------------------------
A field with never-observed pixels (a gridded field's sea, :class:`nuwa.windows.SeriesData`'s
``observed``) is scored over its observed pixels only, baselines as models
(:func:`nuwa.evaluate.evaluate_forecaster`, :func:`evaluate_baseline`). Persistence needs
nothing more. Optical flow is given the mask (``observed``): its never-observed pixels are set
to the window's minimum over observed pixels, both for the motion estimate and in the frame
that is extrapolated. After the window's rescaling to [0, 1] (by its observed min and max) they
are 0: for rain, whose minimum is 0 mm/h, "no rain"; it is what pysteps itself does with
NaN or masked pixels (``dense_lucaskanade`` fills them with the image minimum), without
pysteps' ``buffer_mask`` dilation, which on a small coastal grid would mask most of the land.
The coastline of a rain area is then an edge LK may track (static, so it pulls the motion
towards 0), and what flows in from a never-observed area is the minimum (no rain). The
forecast's never-observed pixels are set back to the last input frame's values (the field's
fill), which no score reads. Under super-resolution the coarse grid's cell is observed when
any pixel of its block is.

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


def persistence(inputs: Any, output_frames: int, record: list | None = None, observed: Any = None) -> np.ndarray:
    """Repeat the last input frame ``output_frames`` times: (N, T_in, C, H, W) -> (N, T_out, C, H, W).
    (``observed`` is accepted, as every baseline takes it, and changes nothing.)"""
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


def optical_flow(inputs: Any, output_frames: int, record: list | None = None,
                 lk_settings: dict | None = None, observed: Any = None) -> np.ndarray:
    """pysteps LK motion of each window's input frames, semi-Lagrangian extrapolation of its last frame.

    ``lk_settings`` replaces :data:`LK_SETTINGS` (keyword arguments of pysteps'
    ``dense_lucaskanade``, empty: its defaults); see the module docstring for the settings, the degenerate windows
    (persistence for that window, recorded in ``record`` if given) and why any real field works.
    ``observed`` (bool (H, W); None: every pixel observed): never-observed pixels take the
    window's observed minimum for the motion estimate and the extrapolation (the module docstring).
    Several channels: each channel its own motion field, and one ``record`` entry per window and
    channel.
    """
    x, single = _as_windows(inputs, output_frames)
    observed = _observed_mask(observed, x.shape[-2:])
    lucas_kanade, extrapolate, cv2_error = _pysteps()
    settings = copy.deepcopy(LK_SETTINGS if lk_settings is None else lk_settings)
    steps = int(output_frames)
    out = np.empty((x.shape[0], steps, *x.shape[2:]), dtype=x.dtype)
    for n, window in enumerate(x):
        for channel in range(x.shape[2]):
            out[n, :, channel] = _track_one(window[:, channel], steps, observed, settings, record,
                                            lucas_kanade, extrapolate, cv2_error)
    return out[0] if single else out


def _track_one(channel_frames, steps: int, observed, settings: dict, record, lucas_kanade, extrapolate,
               cv2_error) -> np.ndarray:
    """One window's forecast of one channel (T_out, H, W): LK motion of its input frames (T_in, H, W)
    and semi-Lagrangian extrapolation of the last, or persistence where there is no usable motion."""
    frames = channel_frames.astype(np.float64)  # (T_in, H, W)
    if observed is not None:  # never-observed pixels at the observed minimum (0 once rescaled)
        frames = np.where(observed, frames, frames[:, observed].min())
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
    out = np.empty((steps, *last.shape), dtype=channel_frames.dtype)
    if reason is None:
        speed = float(np.mean(np.hypot(motion[0], motion[1])))
        with _quiet():
            out[:] = extrapolate(last, motion, steps, map_coordinates_mode="nearest")
    else:
        out[:] = last
    if observed is not None:  # the field's own fill where nothing was ever observed (no score reads it)
        out[:, ~observed] = channel_frames[-1][~observed]
    if record is not None:
        record.append({"motion": reason is None, "reason": reason, "mean_speed": speed})
    return out


def _observed_mask(observed: Any, shape: tuple[int, int]) -> np.ndarray | None:
    """A bool (H, W) mask of observed pixels, or None (no mask, or every pixel observed)."""
    if observed is None:
        return None
    mask = np.asarray(observed).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"observed has shape {mask.shape} but the frames are {tuple(shape)}")
    if not mask.any():
        raise ValueError("observed marks no pixel observed")
    return None if mask.all() else mask


def coarse_observed(observed: np.ndarray | None, factor: int) -> np.ndarray | None:
    """The mask on a grid coarsened ``factor`` x ``factor``: a cell is observed when any pixel of its block is."""
    if observed is None or factor == 1:
        return observed
    h, w = observed.shape
    return observed.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


#: name -> baseline(inputs, output_frames, record=None, observed=None) in physical units.
BASELINES: dict[str, Callable[..., np.ndarray]] = {"persistence": persistence, "optical_flow": optical_flow}


def _baseline(name: str) -> Callable[..., np.ndarray]:
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})") from None


def summarise_record(record: Sequence[dict]) -> dict:
    """``windows``, ``fallback_windows`` (persistence instead of motion) and the reasons' counts
    (a field with several channels: one entry per window and channel, each tracked alone)."""
    reasons = Counter(r["reason"] for r in record if not r["motion"] and r["reason"] != "persistence")
    return {"windows": len(record), "fallback_windows": sum(reasons.values()),
            "fallback_reasons": dict(sorted(reasons.items()))}


class NormalisedForecaster:
    """A baseline as normalised torch inputs (N, T_in, C, H, W) -> normalised outputs (N, T_out, C, H, W).

    Inputs are denormalised with the series' statistics, forecast in physical units, normalised
    back (float32). ``record`` holds one entry per window forecast so far (see the module docstring).
    ``input_factor`` > 1: the inputs are coarse, (N, T_in, C, H/f, W/f); the forecast made on
    them is repeated f x f per cell to (N, T_out, C, H, W) (the module docstring's
    super-resolution section).
    """

    def __init__(self, name: str, series: SeriesData, output_frames: int, input_factor: int = 1, **options):
        from nuwa.superres import check_input_factor

        self.name = name
        self.baseline = _baseline(name)
        self.series = series
        self.output_frames = int(output_frames)
        self.input_factor = check_input_factor(input_factor, *series.field.shape[-2:],
                                               where=f"baseline {name!r}: ")
        self.options = options
        if series.observed is not None:  # the mask of the grid forecast on (coarse under super-resolution)
            self.options = {**options, "observed": coarse_observed(series.observed, self.input_factor)}
        self.record: list[dict] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        import torch

        from nuwa.superres import upsample_nearest

        physical = self.series.denormalise(inputs.detach().cpu().numpy())
        forecast = self.baseline(physical, self.output_frames, record=self.record, **self.options)
        # repeating values commutes with the per-channel normalisation: the same bytes either side of it
        return torch.from_numpy(upsample_nearest(self.series.normalise(forecast), self.input_factor))

    def summary(self) -> dict:
        return {"baseline": self.name, **summarise_record(self.record)}


def normalised_forecaster(name: str, series: SeriesData, output_frames: int, input_factor: int = 1,
                          **options) -> NormalisedForecaster:
    """``BASELINES[name]`` wrapped for :func:`nuwa.evaluate.evaluate_forecaster` (see :class:`NormalisedForecaster`).

    ``input_factor`` > 1 (the super-resolution task; pass the same factor to
    :func:`~nuwa.evaluate.evaluate_forecaster`, which coarsens the inputs): the baseline
    forecasts the coarse field and each coarse cell is repeated ``input_factor`` x
    ``input_factor`` to the full resolution (nearest neighbour: the block-constant field; see the
    module docstring). Persistence is then the last coarse input frame, upsampled; optical flow
    pysteps' extrapolation of the coarse field, upsampled."""
    return NormalisedForecaster(name, series, output_frames, input_factor=input_factor, **options)


def forecast_windows(name: str, windows: WindowDataset, batch_size: int = 32, record: list | None = None,
                     **options) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(starts, prediction, truth) per batch of ``windows``, in physical units, in window order.

    Checks the name, the channel count and ``batch_size`` here, before the first batch."""
    baseline = _baseline(name)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return _batches(baseline, windows, int(batch_size), record, options)


def _batches(baseline, windows, batch_size, record, options):
    lead = np.arange(windows.output_frames)
    if windows.series.observed is not None:
        options = {**options, "observed": windows.series.observed}
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
    accumulator = MetricAccumulator(windows.series.data_range, thresholds, fss_scales=fss_scales,
                                    observed=windows.series.observed)
    record: list[dict] = []
    for _, prediction, truth in forecast_windows(name, windows, batch_size, record=record, **options):
        accumulator.update(prediction, truth)
    metrics = accumulator.compute()
    metrics["test_windows"] = len(windows)
    observed = windows.series.observed
    if observed is not None:  # as nuwa.evaluate.observed_counts (not imported: it would bring torch)
        metrics.update({"observed_pixels": int(np.count_nonzero(observed)), "grid_pixels": int(observed.size)})
    metrics.update({"baseline": name, **summarise_record(record)})
    return metrics, accumulator.compute_per_step()
