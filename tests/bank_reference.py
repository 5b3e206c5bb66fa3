"""The whole bank in memory, written plainly: the reference the tests hold :func:`nuwa.bank.write_bank` to.

Independent of the streamed path's bookkeeping: one fresh Philox generator per (copy, window),
built from its key and counter (not by setting the state of a shared one), the draws spelled
out in the order :mod:`nuwa.bank` documents, the masks of every method by a plain sort per step
(:func:`plain_mask`, not :func:`nuwa.saliency.causal_mask`), the arithmetic by the plain
per-patch loop of :mod:`nuwa.bench.bank` (bit-identical to the kernel), flags and strength from
whole arrays.
"""

from __future__ import annotations

import numpy as np

from nuwa.bank import Draws, gaussian_step_probability
from nuwa.bench.bank import patch_loop
from nuwa.saliency import environment_count
from nuwa.seeding import seed_sequence


def window_generator(seed: int, purpose: str, dataset: str, copy: int, source: int) -> np.random.Generator:
    key = seed_sequence(seed, purpose, dataset).generate_state(2, np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=[0, int(source), int(copy), 0]))


def reference_draws(seed: int, dataset: str, copy: int, source: int, grid: tuple[int, int, int],
                    sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sampled (T,), weights (T, Py, Px, 8), mix (T, Py, Px)) of one window."""
    t, gy, gx = grid
    rng = window_generator(seed, "bank", dataset, copy, source)
    sampled = rng.random(t) < gaussian_step_probability(t, sigma)
    k = int(sampled.sum())
    weights = rng.random(k * gy * gx * 8, dtype=np.float32).reshape(k, gy, gx, 8)
    mix = rng.random(k * gy * gx, dtype=np.float32).reshape(k, gy, gx)
    full_weights = np.zeros((t, gy, gx, 8), np.float32)
    full_mix = np.zeros((t, gy, gx), np.float32)
    full_weights[sampled], full_mix[sampled] = weights, mix
    return sampled, full_weights, full_mix


def plain_mask(values: np.ndarray, ratio: float, most: bool = False) -> np.ndarray:
    """(T, Py, Px) int8 mask from (T, Py, Px) values: per step the ⌊ρ·L⌋ patches that come first
    sorted by (value, patch number) (``most``: by (-value, patch number)) are environmental (0)."""
    t = values.shape[0]
    flat = np.asarray(values, dtype=np.float64).reshape(t, -1)
    count = environment_count(flat.shape[1], ratio)
    mask = np.ones(flat.shape, dtype=np.int8)
    for step in range(t):
        def key(j, row=flat[step]):
            return (-float(row[j]) if most else float(row[j]), j)
        mask[step, sorted(range(flat.shape[1]), key=key)[:count]] = 0
    return mask.reshape(values.shape)


def reference_mask(seed: int, dataset: str, copy: int, source: int, grid: tuple[int, int, int],
                   ratio: float) -> np.ndarray:
    """The random control's mask of one window: its T·Py·Px float64 uniforms, ranked."""
    t, gy, gx = grid
    rng = window_generator(seed, "random-mask", dataset, copy, source)
    return plain_mask(rng.random((t, gy * gx)).reshape(grid), ratio)


def reference_donors(seed: int, dataset: str, copy: int, source: int, row: int, windows: int,
                     frames: int) -> list[int]:
    """The random_matched control: per step, the row of the window whose saliency mask row ``row``
    takes: the ⌊u·(N-1)⌋-th of the other rows (in row order), u its step's uniform; with one
    window, its own."""
    uniforms = window_generator(seed, "matched-mask", dataset, copy, source).random(frames)
    if windows == 1:
        return [row] * frames
    others = [j for j in range(windows) if j != row]
    return [others[min(int(u * (windows - 1)), windows - 2)] for u in uniforms]


def generate_bank(inputs: np.ndarray, source_index: np.ndarray, *, method: str, settings: dict, patch_size: int,
                  seed: int, dataset_name: str, importance: np.ndarray | None = None,
                  std: np.ndarray | None = None) -> dict:
    """All copies of all windows in memory: the arrays :func:`nuwa.bank.write_bank` writes
    (``augmented``, ``source_index``, ``copy``, ``sampled``, ``intervened``, ``changed``,
    ``causal``) and its strength (``changed_cell_fraction``, ``mean_abs_change_std``; ``std``
    defaults to ones)."""
    x = np.asarray(inputs, dtype=np.float32)
    n, t, c, h, w = x.shape
    p = patch_size
    grid = (t, h // p, w // p)
    ratio = settings["environment_ratio"]
    knobs = dict(patch_size=p, history=settings["history"], history_decay=settings["history_decay"],
                 exclude_causal_neighbours=settings["exclude_causal_neighbours"])
    out = {key: [] for key in ("augmented", "sampled", "causal")}
    if method in ("saliency", "random_matched"):
        salient = [plain_mask(importance[row], ratio) for row in range(n)]
    for copy in range(settings["copies"]):
        for row, source in enumerate(np.asarray(source_index).tolist()):
            if method == "saliency":
                mask = salient[row]
            elif method == "saliency_inverted":
                mask = plain_mask(importance[row], ratio, most=True)
            elif method == "random_matched":
                donors = reference_donors(seed, dataset_name, copy, source, row, n, t)
                mask = np.stack([salient[donor][step] for step, donor in enumerate(donors)])
            elif method == "random":
                mask = reference_mask(seed, dataset_name, copy, source, grid, ratio)
            else:
                raise ValueError(f"no reference for method {method!r}")
            sampled, weights, mix = reference_draws(seed, dataset_name, copy, source, grid, settings["sigma"])
            draws = Draws(sampled[None], weights[None], mix[None])
            out["augmented"].append(patch_loop(x[row:row + 1], mask[None], draws, **knobs)[0])
            out["sampled"].append(sampled)
            out["causal"].append(mask)
    augmented = np.stack(out["augmented"]) if out["augmented"] else np.zeros((0, t, c, h, w), np.float32)
    original = np.tile(x, (settings["copies"], 1, 1, 1, 1))
    differ = augmented.view(np.uint32) != original.view(np.uint32)
    changed = differ.reshape(-1, t, c, grid[1], p, grid[2], p).any(axis=(2, 4, 6))
    std = np.ones(c) if std is None else np.asarray(std, dtype=np.float64)
    scaled = np.abs(augmented.astype(np.float64) - original.astype(np.float64)) / std[None, None, :, None, None]
    return {
        "augmented": augmented,
        "source_index": np.tile(np.asarray(source_index, dtype=np.int64), settings["copies"]),
        "copy": np.repeat(np.arange(settings["copies"], dtype=np.int32), n),
        "sampled": np.asarray(out["sampled"], dtype=np.int8).reshape(-1, t),
        "intervened": changed.any(axis=(2, 3)).astype(np.int8),
        "changed": changed.astype(np.int8),
        "causal": np.asarray(out["causal"], dtype=np.int8).reshape(-1, *grid),
        "changed_cell_fraction": float(changed.mean()) if changed.size else 0.0,
        "mean_abs_change_std": float(scaled.mean()) if scaled.size else 0.0,
    }
