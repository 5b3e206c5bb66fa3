"""Stage 4, bank: DistriXplorer interventions on environmental patches, as NetCDF.

For each training window and copy, each input step ``t`` is intervened with probability
``G(t) = exp(-(t - T)² / (2σ²))`` (``T`` = last input step). In an intervened step every
environmental patch ``z_j^t`` becomes ``λ·spatial + (1-λ)·temporal`` with ``λ ~ U(0, 1)``:

* spatial: its 8 neighbours at step ``t`` (clipped at the border; causal neighbours left out
  when ``exclude_causal_neighbours``), weights ``w ~ U(0, 1)`` normalised to sum to one;
* temporal: its own history ``z_j^{t-k}``, ``k = 1..K`` (only ``k ≤ t``), weights ``β^k``
  normalised to sum to one. At ``t = 0`` there is no history and the spatial part is used alone;
  where no neighbour qualifies the temporal part is used alone; with neither, the patch stays.

Causal patches are never changed. Neighbours and history are read from the original window.
Everything is vectorised over windows, steps and patches; the only Python loops run over the
8 neighbour offsets, the K history steps, copies and memory-bounding chunks of windows.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from nuwa.progress import progress
from nuwa.saliency import causal_mask, environment_count

NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def to_patches(frames: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, T, C, H, W) -> (N, T, Py, Px, C, p, p)."""
    n, t, c, h, w = frames.shape
    p = patch_size
    return frames.reshape(n, t, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4, 6)


def from_patches(patches: np.ndarray) -> np.ndarray:
    """(N, T, Py, Px, C, p, p) -> (N, T, C, H, W)."""
    n, t, gy, gx, c, p, _ = patches.shape
    return patches.transpose(0, 1, 4, 2, 5, 3, 6).reshape(n, t, c, gy * p, gx * p)


def gaussian_step_probability(frames: int, sigma: float) -> np.ndarray:
    """G(t) = exp(-(t - T)^2 / (2 sigma^2)) for t = 0..frames-1, T = frames - 1."""
    steps = np.arange(frames, dtype=np.float64)
    return np.exp(-((steps - (frames - 1)) ** 2) / (2.0 * sigma**2))


def history_weights(frames: int, history: int, history_decay: float) -> np.ndarray:
    """(T, K) weights of z^{t-k}: beta^k where k <= t, rows normalised (row 0 is all zero)."""
    weights = np.zeros((frames, history), dtype=np.float64)
    for k in range(1, history + 1):
        weights[k:, k - 1] = history_decay**k
    totals = weights.sum(axis=1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)


def random_causal_mask(rng: np.random.Generator, shape: tuple[int, int, int, int], environment_ratio: float) -> np.ndarray:
    """The control: ⌊ρ·L⌋ environmental patches per step chosen uniformly at random."""
    n, t, gy, gx = shape
    return causal_mask(rng.random((n, t, gy * gx)), environment_ratio).reshape(shape)


def distrixplorer(inputs: np.ndarray, causal: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                  sigma: float, history: int, history_decay: float,
                  exclude_causal_neighbours: bool) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of each window. Returns (augmented (N,T,C,H,W), intervened (N,T) bool)."""
    patches = to_patches(np.asarray(inputs, dtype=np.float32), patch_size)
    n, t, gy, gx = patches.shape[:4]
    if causal.shape != (n, t, gy, gx):
        raise ValueError(f"mask shape {causal.shape} does not match the windows' patch grid {(n, t, gy, gx)}")
    environmental = causal == 0
    intervened = rng.random((n, t)) < gaussian_step_probability(t, sigma)[None, :]

    # spatial term: random convex weights over the qualifying 8-neighbours
    padded = np.pad(patches, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    inside = np.pad(np.ones((gy, gx), dtype=bool), 1)
    environmental_padded = np.pad(environmental, ((0, 0), (0, 0), (1, 1), (1, 1)))
    weights = rng.random((n, t, gy, gx, len(NEIGHBOUR_OFFSETS)), dtype=np.float32)
    for index, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        rows, cols = slice(1 + dy, 1 + dy + gy), slice(1 + dx, 1 + dx + gx)
        qualifies = inside[rows, cols][None, None]
        if exclude_causal_neighbours:
            qualifies = qualifies & environmental_padded[:, :, rows, cols]
        weights[..., index] *= qualifies
    totals = weights.sum(axis=-1, keepdims=True)
    has_spatial = totals[..., 0] > 0
    weights /= np.where(totals > 0, totals, 1)
    spatial = np.zeros_like(patches)
    for index, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
        neighbour = padded[:, :, 1 + dy:1 + dy + gy, 1 + dx:1 + dx + gx]
        spatial += weights[..., index, None, None, None] * neighbour

    # temporal term: the patch's own history with decaying weights
    step_weights = history_weights(t, history, history_decay).astype(np.float32)
    has_temporal = step_weights.sum(axis=1) > 0
    temporal = np.zeros_like(patches)
    for k in range(1, min(history, t - 1) + 1):
        temporal[:, k:] += step_weights[k:, k - 1][None, :, None, None, None, None, None] * patches[:, :-k]

    both = has_spatial & has_temporal[None, :, None, None]
    mix = rng.random((n, t, gy, gx), dtype=np.float32)
    mix = np.where(both, mix, np.where(has_spatial, np.float32(1), np.float32(0)))
    mixed = mix[..., None, None, None] * spatial + (1 - mix[..., None, None, None]) * temporal
    replace = environmental & intervened[:, :, None, None] & (has_spatial | has_temporal[None, :, None, None])
    augmented = np.where(replace[..., None, None, None], mixed, patches)
    return from_patches(augmented), intervened


def generate_bank(inputs: np.ndarray, source_index: np.ndarray, *, method: str, settings: dict, patch_size: int,
                  rng: np.random.Generator, importance: np.ndarray | None = None,
                  desc: str = "bank") -> dict[str, np.ndarray]:
    """All copies for all windows. ``inputs`` (N, T, C, H, W) physical units, rows match ``source_index``.

    ``method`` 'saliency' takes the mask from ``importance`` (N, T, Py, Px) at the variant's
    environment ratio; 'random' draws it. Random numbers are drawn chunk by chunk in a fixed
    order, so the bank is a function of (params, seed) -- including ``chunk_size``.
    """
    n, t, c, h, w = inputs.shape
    gy, gx = h // patch_size, w // patch_size
    ratio = settings["environment_ratio"]
    if method == "saliency":
        if importance is None or importance.shape != (n, t, gy, gx):
            got = None if importance is None else importance.shape
            raise ValueError(f"saliency importance shape {got} does not match windows {(n, t, gy, gx)}")
        mask = causal_mask(importance.reshape(n, t, -1), ratio).reshape(n, t, gy, gx)
    elif method != "random":
        raise ValueError(f"bank method must be 'saliency' or 'random', got {method!r}")
    copies, chunk = settings["copies"], settings["chunk_size"]
    augmented = np.empty((copies * n, t, c, h, w), dtype=np.float32)
    intervened = np.empty((copies * n, t), dtype=np.int8)
    masks = np.empty((copies * n, t, gy, gx), dtype=np.int8)
    chunks = [(copy, start) for copy in range(copies) for start in range(0, n, chunk)]
    for copy, start in progress(chunks, desc=desc, unit="chunk"):
        stop = min(start + chunk, n)
        rows = slice(copy * n + start, copy * n + stop)
        chunk_mask = mask[start:stop] if method == "saliency" else random_causal_mask(rng, (stop - start, t, gy, gx), ratio)
        augmented[rows], chunk_intervened = distrixplorer(
            inputs[start:stop], chunk_mask, rng, patch_size=patch_size, sigma=settings["sigma"],
            history=settings["history"], history_decay=settings["history_decay"],
            exclude_causal_neighbours=settings["exclude_causal_neighbours"])
        intervened[rows] = chunk_intervened
        masks[rows] = chunk_mask
    return {
        "augmented": augmented,
        "source_index": np.tile(np.asarray(source_index, dtype=np.int64), copies),
        "copy": np.repeat(np.arange(copies, dtype=np.int32), n),
        "intervened": intervened,
        "causal": masks,
    }


def bank_dataset(bank: dict[str, np.ndarray], *, channels, units: str, method: str, settings: dict,
                 patch_size: int, dataset_name: str, variant: str) -> xr.Dataset:
    n, t, c, h, w = bank["augmented"].shape
    gy, gx = h // patch_size, w // patch_size
    attrs = {
        "title": f"nuwa DistriXplorer bank: {dataset_name} / {variant}",
        "Conventions": "CF-1.10",
        "nuwa_dataset": dataset_name,
        "variant": variant,
        "method": method,
        "patch_size": int(patch_size),
        "environmental_patches_per_step": environment_count(gy * gx, settings["environment_ratio"]),
    }
    for key, value in settings.items():
        if key != "method":
            attrs[key] = int(value) if isinstance(value, bool) else value
    return xr.Dataset(
        {
            "augmented": (("bank_sample", "step", "channel", "y", "x"), bank["augmented"],
                          {"long_name": "augmented input window", "units": units}),
            "source_index": ("bank_sample", bank["source_index"],
                             {"long_name": "source window: index of its first time step in the processed dataset"}),
            "copy": ("bank_sample", bank["copy"], {"long_name": "augmented copy number of the source window"}),
            "intervened": (("bank_sample", "step"), bank["intervened"],
                           {"long_name": "step was intervened (temporal Gaussian decay sampling)",
                            "flag_values": np.array([0, 1], dtype=np.int8), "flag_meanings": "kept intervened"}),
            "causal": (("bank_sample", "step", "patch_y", "patch_x"), bank["causal"],
                       {"long_name": "patch role used for this sample", "flag_values": np.array([0, 1], dtype=np.int8),
                        "flag_meanings": "environmental causal"}),
        },
        coords={"bank_sample": np.arange(n, dtype=np.int64), "step": np.arange(t, dtype=np.int32),
                "channel": list(channels), "y": np.arange(h, dtype=np.int32), "x": np.arange(w, dtype=np.int32),
                "patch_y": np.arange(gy, dtype=np.int32), "patch_x": np.arange(gx, dtype=np.int32)},
        attrs=attrs,
    )
