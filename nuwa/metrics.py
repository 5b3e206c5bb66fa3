"""Forecast-verification metrics for spatio-temporal fields (numpy / scipy only).

Conventions (these are the definitions behind every number in the result tables)
-------------------------------------------------------------------------------
Inputs
    ``pred`` (the forecast) and ``truth`` are arrays shaped ``(B, T, C, H, W)``
    (batch, lead time, channel, height, width) in the data's *physical* units,
    i.e. after de-normalisation. Torch tensors are accepted (detached, moved to
    CPU). Everything is computed in float64. NaN or +-inf in either input is an
    error (``ValueError`` naming the argument), as are non-5-D inputs, shape
    mismatches and a non-positive ``data_range``.

``mse``, ``mae``
    Per-pixel means of the squared / absolute error over all B*T*C*H*W values.

``mse_frame``, ``mae_frame``
    OpenSTL-style per-frame errors: the squared / absolute error summed over the
    C*H*W values of a frame, averaged over the B*T frames
    (= ``mse * C*H*W`` and ``mae * C*H*W``).

``ssim``
    Mean, over every 2-D image (b, t, c), of the SSIM that
    ``skimage.metrics.structural_similarity(truth_img, pred_img,
    data_range=data_range)`` returns with its defaults: 7x7 uniform window,
    K1 = 0.01, K2 = 0.03, sample covariance (factor 49/48), C1 = (K1*R)^2,
    C2 = (K2*R)^2 with R = ``data_range``, and the SSIM map averaged over the
    valid interior only (``(7-1)//2 = 3`` pixels cropped at every border).
    ``data_range`` must be the data's real range (e.g. max - min of the
    physical variable) -- never the float default of 2 used by some reference
    code. Requires H >= 7 and W >= 7. Vectorised over all images at once.

``psnr``
    Mean over the B*T frames of ``10*log10(data_range**2 / mse_f)`` where
    ``mse_f`` is the mean squared error over the frame's C*H*W values (what
    ``skimage.metrics.peak_signal_noise_ratio(truth_frame, pred_frame,
    data_range=data_range)`` returns). A perfect frame would give +inf; here
    ``mse_f`` is floored at ``1e-10 * data_range**2``, so a frame's PSNR is
    capped at **100 dB** (``PSNR_CAP_DB``) and the mean stays finite.

CSI family (``csi_{thr:g}``, ``pod_{thr:g}``, ``far_{thr:g}``, ``bias_{thr:g}``, ``csi_m``)
    Earthformer's SEVIR convention (``SEVIRSkillScore``, mode "0"): at each
    threshold ``thr`` (physical units) a pixel is an event when its value is
    ``>= thr`` (a value exactly equal to the threshold counts as an event), so

        hits         = #(pred >= thr  and  truth >= thr)
        misses       = #(pred <  thr  and  truth >= thr)
        false alarms = #(pred >= thr  and  truth <  thr)

    are counted with integers and *pooled* over all pixels, channels, lead
    times, samples and streamed batches before any division. With
    ``eps = 1e-4`` (Earthformer's default):

        csi  = hits / (hits + misses + fas + eps)
        pod  = hits / (hits + misses + eps)
        far  = fas / (hits + fas + eps)
        bias = (hits + fas) / (hits + misses + eps)   (frequency bias)

    ``csi_m`` is the unweighted mean of ``csi_{thr}`` over the thresholds.
    Note: ``bias`` here is the plain frequency bias; Earthformer's reported
    "bias" is the transform ``(bias / ln 2) ** 2`` of it. ``far`` is
    ``1 - sucr`` (up to eps) in Earthformer's terms.

Fractions Skill Score (``fss_{thr:g}_{scale}``, only when ``fss_scales`` are given)
    Roberts & Lean (2008), exactly as ``pysteps.verification.spatialscores.fss_init`` /
    ``fss_accum`` / ``fss_compute`` define it, pooled over the test split the way those
    accumulate it: per 2-D image (b, t, c), the binary event field (``>= thr``, as for CSI) of
    forecast and truth is averaged over a ``scale`` x ``scale`` pixel window
    (``scipy.ndimage.uniform_filter``, ``mode="constant"``, zeros outside the domain; no filter
    at scale 1) into fractions ``Sf``, ``So``; then, with sums over every pixel of every image,

        fss = 1 - sum (Sf - So)^2 / (sum Sf^2 + sum So^2)

    1 is perfect, 0 no overlap at that scale; it grows with the scale for a displaced event.
    Undefined (NaN, as pysteps) when neither forecast nor truth has an event at ``thr``.
    Vectorised over all images at once (pysteps filters one image per call); equal to pysteps'
    ``fss`` on one image (tested).

Per lead time
    :meth:`MetricAccumulator.compute_per_step` gives length-T lists of ``mse``, ``mae``,
    ``psnr``, ``ssim`` and, when thresholds were given, ``csi_{thr:g}`` (counts pooled over
    everything but the lead time) and the ``fss_{thr:g}_{scale}`` keys.

Never-observed pixels (``observed``)
    Every function and :class:`MetricAccumulator` take ``observed``: a ``(H, W)`` mask (bool
    or 0/1), True where the pixel was observed in at least one frame of the data (a gridded
    dataset's ``observed`` coordinate, :class:`nuwa.windows.SeriesData`). ``None`` (default),
    or a mask that is True everywhere: every number exactly as above. Otherwise
    never-observed pixels are left out: nothing put there, in the forecast or the truth,
    changes any score (NaN and inf allowed there), and

    * ``mse``, ``mae``: means over the B*T*C*n observed values (n = observed pixels);
      ``mse_frame``, ``mae_frame``: the sums over a frame's C*n observed values, averaged over
      frames; ``psnr``: from each frame's MSE over its C*n observed values;
    * CSI family: hits, misses and false alarms counted at observed pixels only;
    * FSS: a never-observed pixel is an event in neither field (indicator 0 in forecast and
      truth), then the fractions and sums as above, over every pixel. That is what
      pysteps' ``fss_accum`` does with NaN (it sets non-finite values below the threshold),
      so it equals pysteps' FSS on the fields with NaN at never-observed pixels (tested).
      A window near a never-observed area counts those pixels as non-events in both fields,
      which dilutes the fractions of both alike;
    * SSIM: both images take, at never-observed pixels, the truth image's mean over its
      observed pixels (the same flat value in forecast and truth), and the SSIM map is
      averaged over the valid-interior window centres that are observed pixels (window
      centres on never-observed pixels are left out). Windows centred on observed pixels
      next to never-observed ones still hold some of those identical flat pixels, which agree
      perfectly: SSIM near such borders is biased up (towards 1) relative to a field
      observed everywhere. Needs at least one observed pixel >= 3 pixels from every border.

Streaming
    :class:`MetricAccumulator` keeps float64 sums and integer counts, so
    ``update`` over several batches followed by ``compute`` gives the same
    numbers (up to float64 summation-order rounding, ~1e-15 relative) as the
    one-shot functions on the concatenation of the batches along B. All
    returned values are plain Python floats (JSON-serialisable).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.ndimage import uniform_filter

__all__ = [
    "CSI_EPS",
    "MASKED_METRIC_CONVENTIONS",
    "METRIC_CONVENTIONS",
    "PSNR_CAP_DB",
    "SSIM_WIN_SIZE",
    "MetricAccumulator",
    "categorical_scores",
    "contingency_counts",
    "csi_scores",
    "evaluate",
    "fss",
    "fss_key",
    "mae",
    "mae_frame",
    "mse",
    "mse_frame",
    "per_step",
    "psnr",
    "psnr_per_frame",
    "ssim",
    "ssim_per_image",
    "threshold_key",
]

#: One line per metric, written into every metrics.json and the summary table's notes.
METRIC_CONVENTIONS = {
    "mse": "per-pixel mean squared error, physical units",
    "mae": "per-pixel mean absolute error, physical units",
    "mse_frame": "squared error summed over channels and pixels of a frame, averaged over samples and frames (OpenSTL)",
    "mae_frame": "absolute error summed over channels and pixels of a frame, averaged over samples and frames (OpenSTL)",
    "ssim": "mean SSIM over every 2-D image (7x7 uniform window, data_range = training-split max - min)",
    "psnr": "mean over frames of 10 log10(data_range^2 / frame MSE)",
    "csi": "hits / (hits + misses + false alarms + 1e-4), counts with >= threshold pooled over the test split "
           "(Earthformer); csi_m = mean over thresholds",
    "fss": "fss_{threshold}_{scale}: Fractions Skill Score of the >= threshold events in scale x scale pixel "
           "windows (zero padded), sums pooled over the test split (pysteps fss_accum / fss_compute)",
}

#: What changes for a field with never-observed pixels (``observed``; see the module docstring).
MASKED_METRIC_CONVENTIONS = {
    "observed": "never-observed pixels (NaN in every frame of the source) are left out of every metric: "
                "mse, mae, psnr and the CSI counts over observed pixels only",
    "fss": "never-observed pixels are events in neither forecast nor truth (pysteps' handling of NaN)",
    "ssim": "never-observed pixels set to the truth image's observed mean in both images; SSIM map averaged over "
            "observed window centres (biased up near never-observed areas)",
}



def conventions(masked: bool = False) -> dict[str, str]:
    """The conventions a metrics file states; ``masked``: with what changes for a field with
    never-observed pixels appended to each entry it changes."""
    if not masked:
        return dict(METRIC_CONVENTIONS)
    merged = dict(METRIC_CONVENTIONS)
    for key, text in MASKED_METRIC_CONVENTIONS.items():
        merged[key] = f"{merged[key]}; {text}" if key in merged else text
    return merged


#: Earthformer's epsilon in the CSI / POD / FAR / bias denominators.
CSI_EPS = 1e-4
#: SSIM window (skimage default for ``gaussian_weights=False``).
SSIM_WIN_SIZE = 7
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
#: Frame MSE is floored at ``_PSNR_MSE_FLOOR * data_range**2`` ...
_PSNR_MSE_FLOOR = 1e-10
#: ... which caps the PSNR of a frame at this many dB.
PSNR_CAP_DB = -10.0 * math.log10(_PSNR_MSE_FLOOR)  # 100.0

# Number of pixels processed at once by the SSIM filters (bounds peak memory).
_SSIM_CHUNK_PIXELS = 1 << 23


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def _check_data_range(data_range: Any) -> float:
    if isinstance(data_range, (bool, np.bool_)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"data_range must be a positive finite number, got {data_range!r}"
        ) from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return value


def _check_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (pred, truth) pair and return float64 arrays of shape (B, T, C, H, W)."""
    p = _to_numpy(pred, "pred")
    t = _to_numpy(truth, "truth")
    for arr, name in ((p, "pred"), (t, "truth")):
        if arr.ndim != 5:
            raise ValueError(
                f"{name} must be 5-D (B, T, C, H, W); got {arr.ndim}-D array of shape "
                f"{tuple(arr.shape)}"
            )
    if p.shape != t.shape:
        raise ValueError(
            f"shape mismatch: pred has shape {tuple(p.shape)}, truth has shape "
            f"{tuple(t.shape)}"
        )
    if p.size == 0:
        raise ValueError(f"pred and truth are empty (shape {tuple(p.shape)})")
    p = p.astype(np.float64, copy=False)
    t = t.astype(np.float64, copy=False)
    for arr, name in ((p, "pred"), (t, "truth")):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            n_inf = int(arr.size - np.count_nonzero(finite) - n_nan)
            parts = []
            if n_nan:
                parts.append(f"{n_nan} NaN")
            if n_inf:
                parts.append(f"{n_inf} inf")
            raise ValueError(
                f"{name} contains non-finite values ({', '.join(parts)} of {arr.size})"
            )
    return p, t


def _check_observed(observed: Any, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """A validated ``(H, W)`` bool mask of observed pixels, or None (no mask, or all observed)."""
    if observed is None:
        return None
    m = _to_numpy(observed, "observed")
    if m.ndim != 2:
        raise ValueError(f"observed must be a 2-D (H, W) mask; got shape {tuple(m.shape)}")
    if shape is not None and tuple(m.shape) != tuple(shape):
        raise ValueError(f"observed has shape {tuple(m.shape)} but the fields' (H, W) is {tuple(shape)}")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("observed must hold 0/1 or booleans (1: observed)")
        m = m.astype(bool)
    if not m.any():
        raise ValueError("observed marks no pixel observed: nothing to score")
    return None if m.all() else m


def _check_masked_pair(pred: Any, truth: Any, observed: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(pred, truth, mask)``: without a mask (or with an all-True one) :func:`_check_pair` and None;
    with one, float64 arrays whose never-observed pixels are 0 (anything there, NaN included, is
    ignored; the observed values must be finite) and the bool (H, W) mask."""
    if observed is None:
        return (*_check_pair(pred, truth), None)
    p, t = _to_numpy(pred, "pred"), _to_numpy(truth, "truth")
    if p.ndim == 5 and p.shape == t.shape:  # otherwise _check_pair names the problem
        m = _check_observed(observed, p.shape[-2:])
        if m is not None:
            p = np.where(m, p.astype(np.float64, copy=False), 0.0)
            t = np.where(m, t.astype(np.float64, copy=False), 0.0)
            return (*_check_pair(p, t), m)
    return (*_check_pair(p, t), None)


def _observed_count(m: np.ndarray | None, H: int, W: int) -> int:
    return H * W if m is None else int(np.count_nonzero(m))


def threshold_key(metric: str, threshold: float) -> str:
    """Result-dict key for a thresholded score, e.g. ``threshold_key('csi', 16.0) == 'csi_16'``."""
    return f"{metric}_{threshold:g}"


def fss_key(threshold: float, scale: int) -> str:
    """Result-dict key of a Fractions Skill Score, e.g. ``fss_key(0.5, 3) == 'fss_0.5_3'``."""
    return f"{threshold_key('fss', threshold)}_{scale}"


def _check_fss_scales(scales: Sequence[int], thresholds: Sequence[float]) -> tuple[int, ...]:
    if isinstance(scales, (str, bytes)):
        raise TypeError("fss_scales must be a sequence of integers, not a string")
    out = []
    for scale in scales:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer)) or scale < 1:
            raise ValueError(f"fss scale must be a positive integer (a window size in pixels), got {scale!r}")
        out.append(int(scale))
    if len(set(out)) != len(out):
        raise ValueError(f"fss_scales must be distinct; got {list(scales)!r}")
    if out and not thresholds:
        raise ValueError("fss_scales need thresholds (FSS scores the >= threshold events)")
    return tuple(out)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    if isinstance(thresholds, (str, bytes)):
        raise TypeError("thresholds must be a sequence of numbers, not a string")
    out = []
    for thr in thresholds:
        if isinstance(thr, (bool, np.bool_)):
            raise ValueError(f"threshold must be a finite number, got {thr!r}")
        try:
            value = float(thr)
        except (TypeError, ValueError):
            raise ValueError(f"threshold must be a finite number, got {thr!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, got {thr!r}")
        out.append(value)
    keys = [f"{v:g}" for v in out]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"thresholds must be distinct (as formatted with :g for the result keys); "
            f"got {list(thresholds)!r} -> {keys}"
        )
    return tuple(out)


# --------------------------------------------------------------------------- #
# Per-image / per-frame kernels (validated float64 inputs)
# --------------------------------------------------------------------------- #
def _ssim_images(p: np.ndarray, t: np.ndarray, data_range: float, observed: np.ndarray | None = None) -> np.ndarray:
    """SSIM of every (b, t, c) image; returns shape (B, T, C). Inputs already validated.

    ``observed`` (bool (H, W)): never-observed pixels of both images set to the truth image's mean
    over observed pixels, and the map averaged over observed valid-interior centres only."""
    B, T, C, H, W = p.shape
    win = SSIM_WIN_SIZE
    if H < win or W < win:
        raise ValueError(
            f"SSIM needs H >= {win} and W >= {win} (its window size); got H={H}, W={W}"
        )
    centres = None
    if observed is not None:
        edge = (win - 1) // 2
        centres = observed[edge : H - edge, edge : W - edge]
        if not centres.any():
            raise ValueError(f"SSIM with never-observed pixels needs an observed pixel at least {edge} pixels "
                             "from every border (a window centre); there is none")
        flat = (np.where(observed, t, 0.0).sum(axis=(-2, -1), keepdims=True)
                / np.count_nonzero(observed))  # the truth image's mean over observed pixels
        p = np.where(observed, p, flat)
        t = np.where(observed, t, flat)
    n_img = B * T * C
    x = t.reshape(n_img, H, W)  # skimage's im1 (truth); the formula is symmetric anyway
    y = p.reshape(n_img, H, W)
    np_win = win * win
    cov_norm = np_win / (np_win - 1.0)  # sample covariance, as skimage's default
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    pad = (win - 1) // 2
    size = (1, win, win)
    out = np.empty(n_img, dtype=np.float64)
    step = max(1, _SSIM_CHUNK_PIXELS // (H * W))
    # Loop over large blocks of images only to bound memory; within a block all
    # images are filtered at once (size 1 along the image axis = no mixing).
    for start in range(0, n_img, step):
        xs = x[start : start + step]
        ys = y[start : start + step]
        ux = uniform_filter(xs, size=size)
        uy = uniform_filter(ys, size=size)
        uxx = uniform_filter(xs * xs, size=size)
        uyy = uniform_filter(ys * ys, size=size)
        uxy = uniform_filter(xs * ys, size=size)
        vx = cov_norm * (uxx - ux * ux)
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        a1 = 2 * ux * uy + c1
        a2 = 2 * vxy + c2
        b1 = ux**2 + uy**2 + c1
        b2 = vx + vy + c2
        s = (a1 * a2) / (b1 * b2)
        if centres is None:
            out[start : start + step] = s[:, pad : H - pad, pad : W - pad].mean(axis=(1, 2))
        else:
            out[start : start + step] = s[:, pad : H - pad, pad : W - pad][:, centres].mean(axis=1)
    return out.reshape(B, T, C)


def _psnr_frames(p: np.ndarray, t: np.ndarray, data_range: float, observed: np.ndarray | None = None) -> np.ndarray:
    """PSNR (dB) of every (b, t) frame over its C*H*W values (C*n observed ones: ``p`` and ``t``
    are 0 at never-observed pixels); shape (B, T)."""
    d = p - t
    if observed is None:
        mse_f = np.mean(d * d, axis=(2, 3, 4))
    else:
        mse_f = np.sum(d * d, axis=(2, 3, 4)) / (p.shape[2] * np.count_nonzero(observed))
    mse_f = np.maximum(mse_f, _PSNR_MSE_FLOOR * data_range**2)
    return 10.0 * np.log10(data_range**2 / mse_f)


def _counts_per_step(p: np.ndarray, t: np.ndarray, thresholds: Sequence[float],
                     observed: np.ndarray | None = None) -> np.ndarray:
    """Integer (hits, misses, false alarms) per lead time and threshold; shape (T, K, 3), int64.
    ``observed``: counted at observed pixels only."""
    out = np.zeros((p.shape[1], len(thresholds), 3), dtype=np.int64)
    for k, thr in enumerate(thresholds):
        t_ev = t >= thr
        p_ev = p >= thr
        if observed is not None:
            t_ev &= observed
            p_ev &= observed
        both = t_ev & p_ev
        for lead in range(p.shape[1]):  # a flat count per lead is faster than count_nonzero(axis=...)
            hits = np.count_nonzero(both[:, lead])
            out[lead, k] = (hits, np.count_nonzero(t_ev[:, lead]) - hits, np.count_nonzero(p_ev[:, lead]) - hits)
    return out


def _counts(p: np.ndarray, t: np.ndarray, thresholds: Sequence[float],
            observed: np.ndarray | None = None) -> np.ndarray:
    """Integer (hits, misses, false alarms) per threshold; shape (K, 3), int64."""
    return _counts_per_step(p, t, thresholds, observed).sum(axis=0)


def _fss_sums(p: np.ndarray, t: np.ndarray, thresholds: Sequence[float], scales: Sequence[int],
              observed: np.ndarray | None = None) -> np.ndarray:
    """FSS sums (sum Sf^2, sum Sf So, sum So^2) per lead time, threshold and scale: (T, K, S, 3) float64.

    Sf, So: fractions of ``>= thr`` pixels in a ``scale`` x ``scale`` window of each image, zero
    padded, as ``pysteps.verification.spatialscores.fss_accum`` computes them per image.
    ``observed``: a never-observed pixel is an event in neither field (pysteps' handling of NaN).
    """
    B, T, C, H, W = p.shape
    out = np.zeros((T, len(thresholds), len(scales), 3), dtype=np.float64)
    if not scales:
        return out
    step = max(1, _SSIM_CHUNK_PIXELS // (T * C * H * W))  # bounds memory, as for SSIM
    axes = (0, 2, 3, 4)
    for start in range(0, B, step):
        ps, ts = p[start:start + step], t[start:start + step]
        for k, thr in enumerate(thresholds):
            if observed is None:
                i_f = (ps >= thr).astype(np.float64)
                i_o = (ts >= thr).astype(np.float64)
            else:
                i_f = ((ps >= thr) & observed).astype(np.float64)
                i_o = ((ts >= thr) & observed).astype(np.float64)
            for j, scale in enumerate(scales):
                if scale > 1:  # size 1 along (B, T, C): each image filtered alone
                    size = (1, 1, 1, scale, scale)
                    s_f = uniform_filter(i_f, size=size, mode="constant", cval=0.0)
                    s_o = uniform_filter(i_o, size=size, mode="constant", cval=0.0)
                else:
                    s_f, s_o = i_f, i_o
                out[:, k, j, 0] += (s_f * s_f).sum(axis=axes)
                out[:, k, j, 1] += (s_f * s_o).sum(axis=axes)
                out[:, k, j, 2] += (s_o * s_o).sum(axis=axes)
    return out


def _fss_from_sums(sums: np.ndarray) -> np.ndarray:
    """1 - (Sff - 2 Sfo + Soo) / (Sff + Soo) over the last axis; NaN where there is no event at all."""
    sff, sfo, soo = sums[..., 0], sums[..., 1], sums[..., 2]
    denominator = sff + soo
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 1.0 - (sff - 2.0 * sfo + soo) / denominator, np.nan)


# --------------------------------------------------------------------------- #
# Public one-shot functions
# --------------------------------------------------------------------------- #
def mse(pred: Any, truth: Any, observed: Any = None) -> float:
    """Mean squared error per pixel over all B*T*C*H*W values (``observed``: over the observed ones)."""
    p, t, m = _check_masked_pair(pred, truth, observed)
    d = p - t
    if m is None:
        return float(np.mean(d * d))
    return float(np.sum(d * d) / (p.size // m.size * np.count_nonzero(m)))


def mae(pred: Any, truth: Any, observed: Any = None) -> float:
    """Mean absolute error per pixel over all B*T*C*H*W values (``observed``: over the observed ones)."""
    p, t, m = _check_masked_pair(pred, truth, observed)
    if m is None:
        return float(np.mean(np.abs(p - t)))
    return float(np.sum(np.abs(p - t)) / (p.size // m.size * np.count_nonzero(m)))


def mse_frame(pred: Any, truth: Any, observed: Any = None) -> float:
    """OpenSTL-style MSE: squared error summed over C*H*W (the observed pixels), averaged over the B*T frames."""
    p, t, _ = _check_masked_pair(pred, truth, observed)
    d = p - t
    return float(np.sum(d * d) / (p.shape[0] * p.shape[1]))


def mae_frame(pred: Any, truth: Any, observed: Any = None) -> float:
    """OpenSTL-style MAE: absolute error summed over C*H*W (the observed pixels), averaged over the B*T frames."""
    p, t, _ = _check_masked_pair(pred, truth, observed)
    return float(np.sum(np.abs(p - t)) / (p.shape[0] * p.shape[1]))


def ssim_per_image(pred: Any, truth: Any, data_range: float, observed: Any = None) -> np.ndarray:
    """SSIM of every (b, t, c) 2-D image, shape (B, T, C), float64 (skimage-equivalent; ``observed``:
    see the module docstring)."""
    dr = _check_data_range(data_range)
    p, t, m = _check_masked_pair(pred, truth, observed)
    return _ssim_images(p, t, dr, m)


def ssim(pred: Any, truth: Any, data_range: float, observed: Any = None) -> float:
    """Mean SSIM over all (b, t, c) images (see module docstring for the exact definition)."""
    return float(np.mean(ssim_per_image(pred, truth, data_range, observed)))


def psnr_per_frame(pred: Any, truth: Any, data_range: float, observed: Any = None) -> np.ndarray:
    """PSNR (dB) of every (b, t) frame over its C*H*W values (C*n observed ones), shape (B, T), capped at 100 dB."""
    dr = _check_data_range(data_range)
    p, t, m = _check_masked_pair(pred, truth, observed)
    return _psnr_frames(p, t, dr, m)


def psnr(pred: Any, truth: Any, data_range: float, observed: Any = None) -> float:
    """Mean over the B*T frames of the per-frame PSNR (capped at ``PSNR_CAP_DB`` = 100 dB)."""
    return float(np.mean(psnr_per_frame(pred, truth, data_range, observed)))


def contingency_counts(pred: Any, truth: Any, thresholds: Sequence[float], observed: Any = None) -> np.ndarray:
    """Pooled (hits, misses, false_alarms) per threshold (``>=`` events, at observed pixels); int64 array (K, 3)."""
    thr = _check_thresholds(thresholds)
    p, t, m = _check_masked_pair(pred, truth, observed)
    return _counts(p, t, thr, m)


def categorical_scores(
    counts: Any, thresholds: Sequence[float], eps: float = CSI_EPS
) -> dict[str, float]:
    """CSI / POD / FAR / bias per threshold and ``csi_m`` from pooled counts of shape (K, 3)."""
    thr = _check_thresholds(thresholds)
    c = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    if c.shape[0] != len(thr):
        raise ValueError(f"counts has {c.shape[0]} rows but {len(thr)} thresholds were given")
    out: dict[str, float] = {}
    csis = []
    for (hits, misses, fas), th in zip(c, thr):
        csi = hits / (hits + misses + fas + eps)
        csis.append(csi)
        out[threshold_key("csi", th)] = float(csi)
        out[threshold_key("pod", th)] = float(hits / (hits + misses + eps))
        out[threshold_key("far", th)] = float(fas / (hits + fas + eps))
        out[threshold_key("bias", th)] = float((hits + fas) / (hits + misses + eps))
    if thr:
        out["csi_m"] = float(np.mean(csis))
    return out


def csi_scores(pred: Any, truth: Any, thresholds: Sequence[float], observed: Any = None) -> dict[str, float]:
    """One-shot CSI family (``csi_{thr:g}``, ``pod_*``, ``far_*``, ``bias_*``, ``csi_m``)."""
    return categorical_scores(contingency_counts(pred, truth, thresholds, observed), thresholds)


def fss(pred: Any, truth: Any, threshold: float, scale: int, observed: Any = None) -> float:
    """Fractions Skill Score of the ``>= threshold`` events at ``scale`` pixels, pooled over all
    (B, T, C) images (see the module docstring); NaN when neither has an event."""
    thr = _check_thresholds([threshold])
    scales = _check_fss_scales([scale], thr)
    p, t, m = _check_masked_pair(pred, truth, observed)
    return float(_fss_from_sums(_fss_sums(p, t, thr, scales, m).sum(axis=0))[0, 0])


def evaluate(
    pred: Any, truth: Any, data_range: float, thresholds: Sequence[float] = (),
    fss_scales: Sequence[int] = (), observed: Any = None,
) -> dict[str, float]:
    """All metrics on one (B, T, C, H, W) pair; same keys as :meth:`MetricAccumulator.compute`."""
    acc = MetricAccumulator(data_range, thresholds, fss_scales=fss_scales, observed=observed)
    acc.update(pred, truth)
    return acc.compute()


def per_step(pred: Any, truth: Any, data_range: float, thresholds: Sequence[float] = (),
             fss_scales: Sequence[int] = (), observed: Any = None) -> dict[str, list[float]]:
    """Metrics per lead time t (length-T lists), for plots.

    ``mse`` and ``mae`` are per-pixel means over everything but T; ``psnr`` is the
    mean over samples of the frame PSNR at step t; ``ssim`` the mean over samples
    and channels of the image SSIM at step t (needs H, W >= 7); with thresholds,
    ``csi_{thr}`` from the counts at step t, and ``fss_{thr}_{scale}`` with scales.
    """
    acc = MetricAccumulator(data_range, thresholds, fss_scales=fss_scales, observed=observed)
    acc.update(pred, truth)
    return acc.compute_per_step()


# --------------------------------------------------------------------------- #
# Streaming
# --------------------------------------------------------------------------- #
class MetricAccumulator:
    """Streaming metrics over batches; ``compute()`` equals the one-shot metrics on the
    concatenation (along B) of all batches passed to ``update``.

    All batches must share (T, C, H, W). Sums are float64, contingency counts int64.
    ``fss_scales`` (window sizes in pixels; needs thresholds) adds ``fss_{thr:g}_{scale}``
    for every threshold and scale; the default ``()`` computes no FSS. ``observed``: the
    ``(H, W)`` mask of observed pixels (see the module docstring); None, or all True, scores
    every pixel exactly as without it.
    """

    def __init__(self, data_range: float, thresholds: Sequence[float] = (),
                 fss_scales: Sequence[int] = (), observed: Any = None) -> None:
        self.data_range = _check_data_range(data_range)
        self.thresholds = _check_thresholds(thresholds)
        self.fss_scales = _check_fss_scales(fss_scales, self.thresholds)
        self.observed = _check_observed(observed)
        self.reset()

    def reset(self) -> None:
        """Forget all batches seen so far."""
        self._frame_shape: tuple[int, int, int, int] | None = None  # (T, C, H, W)
        self.n_samples = 0
        self._sse = 0.0
        self._sae = 0.0
        self._ssim_sum = 0.0
        self._psnr_sum = 0.0
        self._counts = np.zeros((len(self.thresholds), 3), dtype=np.int64)
        self._counts_t: np.ndarray | None = None  # (T, K, 3)
        self._fss_t: np.ndarray | None = None  # (T, K, S, 3)
        self._sse_t: np.ndarray | None = None
        self._sae_t: np.ndarray | None = None
        self._ssim_t: np.ndarray | None = None
        self._psnr_t: np.ndarray | None = None

    def update(self, pred: Any, truth: Any) -> None:
        """Add a batch of forecasts and truths, each shaped (B, T, C, H, W)."""
        p, t, m = _check_masked_pair(pred, truth, self.observed)
        B, T, C, H, W = p.shape
        if self._frame_shape is None:
            if H < SSIM_WIN_SIZE or W < SSIM_WIN_SIZE:
                raise ValueError(
                    f"SSIM needs H >= {SSIM_WIN_SIZE} and W >= {SSIM_WIN_SIZE}; "
                    f"got H={H}, W={W}"
                )
        elif (T, C, H, W) != self._frame_shape:
            raise ValueError(
                f"batch has (T, C, H, W) = {(T, C, H, W)} but earlier batches had "
                f"{self._frame_shape}"
            )
        d = p - t
        sq = d * d
        ab = np.abs(d)
        sse_t = sq.sum(axis=(0, 2, 3, 4))
        sae_t = ab.sum(axis=(0, 2, 3, 4))
        ssim_img = _ssim_images(p, t, self.data_range, m)  # (B, T, C)
        psnr_fr = _psnr_frames(p, t, self.data_range, m)  # (B, T)
        counts_t = _counts_per_step(p, t, self.thresholds, m)
        fss_t = _fss_sums(p, t, self.thresholds, self.fss_scales, m)
        # Commit state only after everything succeeded.
        if self._frame_shape is None:
            self._frame_shape = (T, C, H, W)
            self._counts_t = np.zeros_like(counts_t)
            self._fss_t = np.zeros_like(fss_t)
            self._sse_t = np.zeros(T)
            self._sae_t = np.zeros(T)
            self._ssim_t = np.zeros(T)
            self._psnr_t = np.zeros(T)
        self.n_samples += B
        self._sse += float(sq.sum())
        self._sae += float(ab.sum())
        self._ssim_sum += float(ssim_img.sum())
        self._psnr_sum += float(psnr_fr.sum())
        self._counts += counts_t.sum(axis=0)
        self._counts_t += counts_t
        self._fss_t += fss_t
        self._sse_t += sse_t
        self._sae_t += sae_t
        self._ssim_t += ssim_img.sum(axis=(0, 2))
        self._psnr_t += psnr_fr.sum(axis=0)

    def _require_data(self) -> tuple[int, int, int, int]:
        if self._frame_shape is None:
            raise ValueError("no batches were added: call update() before compute()")
        return self._frame_shape

    @property
    def counts(self) -> np.ndarray:
        """Pooled (hits, misses, false_alarms) per threshold, int64 array (K, 3) (a copy)."""
        return self._counts.copy()

    def compute(self) -> dict[str, float]:
        """Pooled metrics as plain floats: mse, mae, mse_frame, mae_frame, ssim, psnr,
        ``csi_*``/``pod_*``/``far_*``/``bias_*``/``csi_m`` when thresholds were given, and
        ``fss_{thr}_{scale}`` when fss_scales were given."""
        T, C, H, W = self._require_data()
        n_frames = self.n_samples * T
        n_pixels = n_frames * C * _observed_count(self.observed, H, W)
        n_images = n_frames * C
        out = {
            "mse": self._sse / n_pixels,
            "mae": self._sae / n_pixels,
            "mse_frame": self._sse / n_frames,
            "mae_frame": self._sae / n_frames,
            "ssim": self._ssim_sum / n_images,
            "psnr": self._psnr_sum / n_frames,
        }
        out = {k: float(v) for k, v in out.items()}
        if self.thresholds:
            out.update(categorical_scores(self._counts, self.thresholds))
        out.update(self._fss(self._fss_t.sum(axis=0)))
        return out

    def _fss(self, sums: np.ndarray) -> dict:
        """``fss_key -> value`` from pooled sums (K, S, 3), or, given (T, K, S, 3), lists over T."""
        scores = _fss_from_sums(sums)
        out = {}
        for k, thr in enumerate(self.thresholds):
            for j, scale in enumerate(self.fss_scales):
                value = scores[..., k, j]
                out[fss_key(thr, scale)] = float(value) if value.ndim == 0 else [float(v) for v in value]
        return out

    def compute_per_step(self) -> dict[str, list[float]]:
        """Per-lead-time lists (length T) of mse, mae, psnr, ssim, and ``csi_{thr}`` and
        ``fss_{thr}_{scale}`` when thresholds / scales were given (see :func:`per_step`)."""
        T, C, H, W = self._require_data()
        n_pix_t = self.n_samples * C * _observed_count(self.observed, H, W)
        out = {
            "mse": [float(v) for v in self._sse_t / n_pix_t],
            "mae": [float(v) for v in self._sae_t / n_pix_t],
            "psnr": [float(v) for v in self._psnr_t / self.n_samples],
            "ssim": [float(v) for v in self._ssim_t / (self.n_samples * C)],
        }
        for k, thr in enumerate(self.thresholds):
            hits, misses, fas = (self._counts_t[:, k, i].astype(np.float64) for i in range(3))
            out[threshold_key("csi", thr)] = [float(v) for v in hits / (hits + misses + fas + CSI_EPS)]
        out.update(self._fss(self._fss_t))
        return out
