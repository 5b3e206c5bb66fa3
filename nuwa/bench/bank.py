"""DistriXplorer bank throughput: ``nuwa bench bank``.

The measured case is the full method on float32 windows (N, T, C, H, W) with the masks given:
``⌊ρ·L⌋`` environmental patches per step, Gaussian step sampling, random spatial weights,
the temporal decay term and λ, one copy per window -- the random draws as the bank makes them
(:func:`nuwa.bank.window_draws`: each window from its own counter-based stream) and the
arithmetic (:func:`nuwa.bank.apply_interventions`) both timed, on one thread. Throughput is
Mpixel/s of input (N·T·C·H·W pixels per second). (What :func:`nuwa.bank.write_bank` adds, the
comparison of output with input for the flags and the strength, and the file, is not timed.)

References, measured in the same run on the same arrays:

* ``authors``: the authors' augmentation as they wrote it (SPEC.md, last section), see
  :func:`authors_mixup`;
* ``patch_loop``: our formula written plainly (:func:`patch_loop`), a Python loop over windows,
  steps and patches with numpy slices; it gives the same bits as the kernel for the same draws;
* ``memcopy``: ``np.copyto`` of the same input, in bytes read + written per second; the bank
  is counted the same way (its input read, its output written), so the ratio is the distance
  to the memory-bandwidth limit of an out-of-place pass.

Every case writes into a preallocated output (page faults of fresh memory are not timed), runs
once untimed (numba compilation, caches) and is timed best-of-``repeats`` with
``time.perf_counter`` on one thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nuwa.bank import Draws

# nuwa.bank (numba) is imported inside the functions: `nuwa --help` builds every bench's options
SUMMARY = "DistriXplorer bank vs the authors' rule, a plain patch loop and memcopy (Mpixel/s, GB/s)"


def add_arguments(parser) -> None:
    parser.add_argument("--samples", type=int, default=512, help="windows N (default 512)")
    parser.add_argument("--frames", type=int, default=10, help="input steps T (default 10)")
    parser.add_argument("--channels", type=int, default=1, help="channels C (default 1)")
    parser.add_argument("--size", type=int, default=128, help="frame side S (default 128)")
    parser.add_argument("--patch", type=int, default=16, help="patch side (default 16)")
    parser.add_argument("--ratio", type=float, default=0.25, help="environment ratio rho (default 0.25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, best kept (default 3)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the slow patch loop (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")


def run(args, progress) -> list[dict]:
    return benchmark(samples=args.samples, frames=args.frames, size=args.size, patch=args.patch, ratio=args.ratio,
                     channels=args.channels, repeats=args.repeats, loop_repeats=args.loop_repeats, seed=args.seed,
                     progress=progress)


def _float32_with_copy(inputs: np.ndarray, out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The references' input as float32 and their output, starting as a copy of it."""
    x = np.asarray(inputs, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    np.copyto(out, x)
    return x, out


def authors_mixup(inputs: np.ndarray, importance: np.ndarray, patch_size: int,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The authors' rule: per window and frame ``f``, the one least-important patch of frame
    ``f`` (first on ties) is overwritten, in every input frame at once, by the plain mean of its
    3×3 patch neighbourhood (clipped at the border; the patch itself and causal neighbours
    included). Neighbourhoods are read from the original window. No temporal term, no random
    weights, no step sampling. Python loops over windows, frames and neighbour patches, numpy
    slices over all frames, as in their code.
    """
    x, out = _float32_with_copy(inputs, out)
    n, t, c, h, w = x.shape
    p = patch_size
    gy, gx = h // p, w // p
    for i in range(n):
        for f in range(t):
            least = int(np.argmin(importance[i, f].reshape(-1)))
            py, px = divmod(least, gx)
            total = np.zeros((t, c, p, p), dtype=np.float32)
            count = 0
            for qy in range(max(py - 1, 0), min(py + 2, gy)):
                for qx in range(max(px - 1, 0), min(px + 2, gx)):
                    total += x[i, :, :, qy * p:(qy + 1) * p, qx * p:(qx + 1) * p]
                    count += 1
            out[i, :, :, py * p:(py + 1) * p, px * p:(px + 1) * p] = total / np.float32(count)
    return out


def patch_loop(inputs: np.ndarray, causal: np.ndarray, draws: Draws, *, patch_size: int, history: int,
               history_decay: float, exclude_causal_neighbours: bool,
               out: np.ndarray | None = None) -> np.ndarray:
    """:func:`nuwa.bank.apply_interventions` written plainly: one patch at a time, numpy slices.

    Same draws, same float32 operations in the same order: same bits.
    """
    from nuwa.bank import NEIGHBOUR_OFFSETS, temporal_terms

    x, out = _float32_with_copy(inputs, out)
    n, t, c, h, w = x.shape
    p = patch_size
    gy, gx = h // p, w // p
    step_weights, has_temporal = temporal_terms(t, history, history_decay)
    environmental = causal == 0
    for i in range(n):
        for s in range(t):
            if not draws.sampled[i, s]:
                continue
            for py in range(gy):
                for px in range(gx):
                    if not environmental[i, s, py, px]:
                        continue
                    weights = np.zeros(len(NEIGHBOUR_OFFSETS), dtype=np.float32)
                    neighbours = []
                    for j, (dy, dx) in enumerate(NEIGHBOUR_OFFSETS):
                        qy, qx = py + dy, px + dx
                        if 0 <= qy < gy and 0 <= qx < gx and (not exclude_causal_neighbours
                                                               or environmental[i, s, qy, qx]):
                            weights[j] = draws.weights[i, s, py, px, j]
                            neighbours.append((j, x[i, s, :, qy * p:(qy + 1) * p, qx * p:(qx + 1) * p]))
                    total = weights.sum()
                    has_space = total > 0
                    if not (has_space or has_temporal[s]):
                        continue  # no source: the patch stays
                    spatial = np.zeros((c, p, p), dtype=np.float32)
                    if has_space:
                        weights /= total
                        for j, neighbour in neighbours:
                            spatial += weights[j] * neighbour
                    temporal = np.zeros((c, p, p), dtype=np.float32)
                    for k in range(1, min(history, s) + 1):
                        temporal += step_weights[s, k - 1] * x[i, s - k, :, py * p:(py + 1) * p, px * p:(px + 1) * p]
                    if has_space and has_temporal[s]:
                        lam = draws.mix[i, s, py, px]
                    else:
                        lam = np.float32(1.0 if has_space else 0.0)
                    out[i, s, :, py * p:(py + 1) * p, px * p:(px + 1) * p] = \
                        lam * spatial + (np.float32(1.0) - lam) * temporal
    return out


def _best_time(function, repeats: int) -> float:
    function()  # untimed: compilation, caches, first touch
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def benchmark(samples: int = 512, frames: int = 10, size: int = 128, patch: int = 16, ratio: float = 0.25,
              channels: int = 1, sigma: float = 2.0, history: int = 2, history_decay: float = 0.5,
              exclude_causal_neighbours: bool = True, repeats: int = 3, loop_repeats: int = 1, seed: int = 0,
              progress=None) -> list[dict]:
    if size % patch:
        raise ValueError(f"--size {size} is not a multiple of --patch {patch}")
    from nuwa.bank import INTERVENTION_STREAM, WindowStreams, apply_interventions, window_draws
    from nuwa.saliency import causal_mask

    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((samples, frames, channels, size, size), dtype=np.float32)
    grid = (samples, frames, size // patch, size // patch)
    importance = rng.random(grid, dtype=np.float32)
    causal = causal_mask(importance.reshape(samples, frames, -1), ratio).reshape(grid)
    out = np.empty_like(inputs)
    streams = WindowStreams(seed, INTERVENTION_STREAM, "bench")
    sources = np.arange(samples)
    knobs = dict(patch_size=patch, history=history, history_decay=history_decay,
                 exclude_causal_neighbours=exclude_causal_neighbours)

    # ours and the patch loop both draw (steps, weights, lambda) and then compute: the same
    # method from the same inputs; the authors' rule draws nothing
    def ours():
        apply_interventions(inputs, causal, window_draws(streams, 0, sources, grid[1:], sigma), out=out, **knobs)

    def loop():
        patch_loop(inputs, causal, window_draws(streams, 0, sources, grid[1:], sigma), out=out, **knobs)

    timings = {"ours": _best_time(ours, repeats)}
    if progress:
        progress(f"bank: {timings['ours']:.3f} s")
    timings["authors"] = _best_time(lambda: authors_mixup(inputs, importance, patch, out=out), repeats)
    timings["patch_loop"] = _best_time(loop, loop_repeats)
    timings["memcopy"] = _best_time(lambda: np.copyto(out, inputs), repeats)
    if progress:
        progress(", ".join(f"{name}: {seconds:.3f} s" for name, seconds in timings.items()))
    mpixels = inputs.size / 1e6
    gigabytes = 2 * inputs.nbytes / 1e9  # read + written
    case = (f"float32/{samples}x{frames}x{channels}x{size}x{size}/p{patch}/rho{ratio:g}/sigma{sigma:g}/"
            f"K{history}/beta{history_decay:g}/{'exclude' if exclude_causal_neighbours else 'include'}-causal")
    rows = []
    for reference, unit, amount in (("authors", "Mpixel/s", mpixels), ("patch_loop", "Mpixel/s", mpixels),
                                    ("memcopy", "GB/s", gigabytes)):
        value, reference_value = amount / timings["ours"], amount / timings[reference]
        rows.append({"benchmark": "bank", "case": case, "value": value, "unit": unit, "reference": reference,
                     "reference_value": reference_value, "ratio": value / reference_value})
    return rows
