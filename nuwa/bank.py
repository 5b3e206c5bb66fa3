"""Stage 4, bank: DistriXplorer interventions on environmental patches, as NetCDF.

For each training window and copy, each input step ``t`` is sampled with probability
``G(t) = exp(-(t - T)² / (2σ²))`` (``T`` = last input step). In a sampled step every
environmental patch ``z_j^t`` becomes ``λ·spatial + (1-λ)·temporal`` with ``λ ~ U(0, 1)``:

* spatial: its 8 neighbours at step ``t`` (clipped at the border; causal neighbours left out
  when ``exclude_causal_neighbours``), weights ``w ~ U(0, 1)`` normalised to sum to one;
* temporal: its own history ``z_j^{t-k}``, ``k = 1..K`` (only ``k ≤ t``), weights ``β^k``
  normalised to sum to one. At ``t = 0`` there is no history and the spatial part is used alone;
  where no neighbour qualifies the temporal part is used alone; with neither, the patch stays.

Causal patches are never changed. Neighbours and history are read from the original window.

Random draws. Every draw of a bank row comes from a stream of its own, keyed by (run seed,
dataset, copy, the window's source index): :class:`WindowStreams`, numpy's counter-based
Philox generator with a 128-bit key from :func:`nuwa.seeding.seed_sequence` of (seed, purpose,
dataset) and its counter set to ``(0, source_index, copy, 0)`` for each window (windows never
share counters: a window draws far fewer than 2⁶⁴ blocks). So a bank's bytes depend neither on
``chunk_size`` nor on how the windows are split into blocks. The intervention draws (purpose
``"bank"``: sampled steps, neighbour weights, λ) carry no variant name: the +Nuwa bank and the
controls of one seed draw the same ones and differ only in where they intervene (the mask,
below). Per window, in this order (:func:`draw_interventions`): ``T`` float64 uniforms (step
``t`` sampled where ``u < G(t)``); then, for the ``k`` sampled steps only, ``k·Py·Px·8`` float32
uniforms (the raw neighbour weights, step-major, ``NEIGHBOUR_OFFSETS`` order last) and
``k·Py·Px`` float32 uniforms (λ). Weights and λ are drawn for every patch of a sampled step,
causal or not, so the draws do not depend on the data or the mask. Steps not sampled hold zeros
(never read).

Masks (``method``, :data:`BANK_METHODS`; 1 = causal, 0 = environmental, ``⌊ρ·L⌋`` environmental
patches in every step of every method, ``ρ`` the variant's ``environment_ratio``):

* ``saliency`` (+Nuwa): the ``⌊ρ·L⌋`` least important patches of each step
  (:func:`nuwa.saliency.causal_mask` of the saliency file's importance), the same for every copy;
* ``random`` (control): ``⌊ρ·L⌋`` patches chosen uniformly, from the window's own stream (purpose
  ``"random-mask"``: ``T·Py·Px`` float64 uniforms ranked by ``causal_mask``), fresh per copy;
* ``random_matched`` (control): at each step the ``saliency`` mask of *another* training window at
  the same step, so the number and the spatial shape of the environmental patches are the
  method's and only where they lie differs. Per (copy, window) the window's own stream (purpose
  ``"matched-mask"``) gives ``T`` float64 uniforms ``u``; the window at row ``r`` of ``N`` takes
  at step ``t`` the mask of row ``k + (k ≥ r)``, ``k = min(⌊u_t·(N-1)⌋, N-2)``: uniform over the
  other ``N - 1`` rows (:func:`matched_donors`). With one training window there is no other: it
  takes its own mask (the bank is then the ``saliency`` bank);
* ``saliency_inverted`` (control): the ``⌊ρ·L⌋`` *most* important patches of each step,
  :func:`nuwa.saliency.causal_mask` of the negated importance (ties broken by patch order, as
  for ``saliency``: a step of equal importances has its first ``⌊ρ·L⌋`` patches environmental,
  the same mask as ``saliency``'s).

The methods of :data:`IMPORTANCE_METHODS` read the saliency file's importance.

The draws (:func:`draw_interventions`, :func:`window_draws`) are separate from the arithmetic
(:func:`apply_interventions`, the compiled kernel of :mod:`nuwa.bank_kernel`), so that the
kernel and the plain per-patch loop of :mod:`nuwa.bench.bank` consume the same draws and can be
compared bit for bit.

:func:`write_bank` is the one path that builds a bank: it streams it to NetCDF block by block
(peak memory does not grow with the number of windows). Beside ``augmented`` it stores what
happened to the bytes (``sampled``: drawn by ``G(t)``; ``intervened``: the step's bytes differ
from the original window; ``changed``: the patch's bytes differ; all from the kernel's output
against its input) and the bank's perturbation strength as global attributes
(``changed_cell_fraction``, ``mean_abs_change_std``, and ``seed``). The file's ``augmented`` is
contiguous and uncompressed, for training to read rows per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from nuwa.bank_kernel import NEIGHBOUR_DX, NEIGHBOUR_DY, NEIGHBOUR_OFFSETS, _compare, _intervene
from nuwa.progress import progress
from nuwa.saliency import causal_mask, environment_count
from nuwa.seeding import seed_sequence

__all__ = ["BANK_CONTIGUOUS", "BANK_METHODS", "IMPORTANCE_METHODS", "NEIGHBOUR_OFFSETS", "Draws", "LazyWindows",
           "WindowStreams", "apply_interventions", "bank_dataset", "compare_to_original", "distrixplorer",
           "draw_interventions", "empty_bank_dataset", "from_patches", "gaussian_step_probability", "history_weights",
           "inverted_causal_mask", "load_importance", "matched_donors", "matched_masks", "random_causal_mask",
           "random_masks", "temporal_terms", "to_patches", "window_draws", "write_bank"]

# the methods write_bank builds (methods 'none' (Ori) and 'mixup' store none: empty_bank_dataset)
BANK_METHODS = ("saliency", "random", "random_matched", "saliency_inverted")
# the methods whose bank reads the saliency file's importance
IMPORTANCE_METHODS = ("saliency", "random_matched", "saliency_inverted")

INTERVENTION_STREAM = "bank"  # purpose of the intervention draws' streams (no variant name: shared by variants)
MASK_STREAM = "random-mask"  # purpose of the random control's mask streams
MATCHED_STREAM = "matched-mask"  # purpose of the random_matched control's donor streams


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


def temporal_terms(frames: int, history: int, history_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 (T, K) history weights and (T,) bool: step has a temporal term."""
    step_weights = history_weights(frames, history, history_decay).astype(np.float32)
    return step_weights, step_weights.sum(axis=1) > 0


WRITE_CHUNK_CACHE_BYTES = 4 * 2**20  # HDF5 chunk cache while write_bank writes (netCDF's default: 64 MiB)
# bank variables stored contiguous and uncompressed: training reads a batch's rows straight from the file
BANK_CONTIGUOUS = ("augmented",)


# -- random draws ---------------------------------------------------------------------------------

class WindowStreams:
    """Counter-based random streams of one (seed, purpose, dataset), one per (copy, source window).

    ``streams.at(copy, source_index)`` returns a generator positioned at the start of that
    window's stream: numpy's Philox (key: 128 bits of :func:`nuwa.seeding.seed_sequence` of
    (seed, purpose, dataset)), counter ``(0, source_index, copy, 0)``. Setting the counter costs
    about 2 µs, against about 20 µs for a generator seeded through a SeedSequence per window.
    The returned generator is shared: it is valid until the next call of :meth:`at`.
    """

    def __init__(self, seed: int, purpose: str, dataset: str):
        self.key = seed_sequence(int(seed), purpose, dataset).generate_state(2, np.uint64)
        self.bit_generator = np.random.Philox(key=self.key)
        self.generator = np.random.Generator(self.bit_generator)
        self._empty = np.zeros(4, dtype=np.uint64)

    def at(self, copy: int, source_index: int) -> np.random.Generator:
        copy, source_index = int(copy), int(source_index)
        if copy < 0 or source_index < 0:
            raise ValueError(f"copy {copy} and source index {source_index} must be >= 0")
        self.bit_generator.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.array([0, source_index, copy, 0], dtype=np.uint64), "key": self.key},
            "buffer": self._empty, "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
        }
        return self.generator


@dataclass
class Draws:
    """The random part of one DistriXplorer copy of N windows (T steps, Py x Px patches).

    ``weights`` and ``mix`` are drawn for every patch of a sampled step, causal or not, so that
    the draws do not depend on the data or the masks; steps not sampled hold zeros.
    """

    sampled: np.ndarray  # (N, T) bool: step sampled by G(t)
    weights: np.ndarray  # (N, T, Py, Px, 8) float32 ~ U(0, 1): raw neighbour weights, NEIGHBOUR_OFFSETS order
    mix: np.ndarray  # (N, T, Py, Px) float32 ~ U(0, 1): lambda

    @classmethod
    def zeros(cls, shape: tuple[int, int, int, int]) -> Draws:
        return cls(np.zeros(shape[:2], dtype=bool), np.zeros((*shape, len(NEIGHBOUR_OFFSETS)), dtype=np.float32),
                   np.zeros(shape, dtype=np.float32))

    def rows(self, rows: slice) -> Draws:
        return Draws(self.sampled[rows], self.weights[rows], self.mix[rows])


def _draw_window(rng: np.random.Generator, probability: np.ndarray, draws: Draws, row: int) -> None:
    """One window's draws, in the order of the module's docstring, into row ``row`` (zeros) of ``draws``."""
    sampled = rng.random(len(probability)) < probability
    draws.sampled[row] = sampled
    count = int(np.count_nonzero(sampled))
    if count:
        patches = draws.mix[row, 0].size
        uniforms = rng.random(count * patches * (len(NEIGHBOUR_OFFSETS) + 1), dtype=np.float32)
        split = count * patches * len(NEIGHBOUR_OFFSETS)
        draws.weights[row, sampled] = uniforms[:split].reshape(count, *draws.weights.shape[2:])
        draws.mix[row, sampled] = uniforms[split:].reshape(count, *draws.mix.shape[2:])


def draw_interventions(rng: np.random.Generator, shape: tuple[int, int, int, int], sigma: float) -> Draws:
    """Draws of N windows from one generator, window after window. ``shape`` = (N, T, Py, Px)."""
    draws = Draws.zeros(tuple(shape))
    probability = gaussian_step_probability(shape[1], sigma)
    for row in range(shape[0]):
        _draw_window(rng, probability, draws, row)
    return draws


def window_draws(streams: WindowStreams, copy: int, source_index: np.ndarray, grid: tuple[int, int, int],
                 sigma: float) -> Draws:
    """Draws of copy ``copy`` of the windows ``source_index``, each from its own stream. ``grid`` = (T, Py, Px)."""
    source_index = np.asarray(source_index)
    draws = Draws.zeros((len(source_index), *grid))
    probability = gaussian_step_probability(grid[0], sigma)
    for row, source in enumerate(source_index.tolist()):
        _draw_window(streams.at(copy, source), probability, draws, row)
    return draws


def random_causal_mask(rng: np.random.Generator, shape: tuple[int, int, int, int],
                       environment_ratio: float) -> np.ndarray:
    """The control: ⌊ρ·L⌋ environmental patches per step chosen uniformly at random."""
    n, t, gy, gx = shape
    return causal_mask(rng.random((n, t, gy * gx)), environment_ratio).reshape(shape)


def random_masks(streams: WindowStreams, copy: int, source_index: np.ndarray, grid: tuple[int, int, int],
                 environment_ratio: float) -> np.ndarray:
    """The control's masks (N, T, Py, Px) of copy ``copy``: per window, T·Py·Px float64 uniforms
    from its own stream, ranked by :func:`nuwa.saliency.causal_mask`."""
    t, gy, gx = grid
    source_index = np.asarray(source_index)
    uniforms = np.empty((len(source_index), t, gy * gx), dtype=np.float64)
    for row, source in enumerate(source_index.tolist()):
        streams.at(copy, source).random(out=uniforms[row])
    return causal_mask(uniforms, environment_ratio).reshape(len(source_index), t, gy, gx)


def inverted_causal_mask(importance: np.ndarray, environment_ratio: float) -> np.ndarray:
    """The ``saliency_inverted`` control: the ⌊ρ·L⌋ *most* important of each step (over the last
    axis) are environmental (0): :func:`nuwa.saliency.causal_mask` of the negated importance, ties
    broken by patch order. (float64: negating a float32 or float64 importance is exact.)"""
    return causal_mask(-np.asarray(importance, dtype=np.float64), environment_ratio)


def matched_donors(streams: WindowStreams, copy: int, source_index: np.ndarray, rows: np.ndarray, windows: int,
                   frames: int) -> np.ndarray:
    """(len(rows), T) int64: per window and step, the row (of ``windows`` training windows) whose
    saliency mask the ``random_matched`` control takes. The window at row ``r`` (source index
    ``source_index``) draws ``T`` float64 uniforms ``u`` from its own stream (``streams``: purpose
    ``"matched-mask"``) and takes row ``k + (k ≥ r)``, ``k = min(⌊u·(N-1)⌋, N-2)``: uniform over the
    other rows. With ``windows == 1`` the one window takes its own row."""
    source_index, rows = np.asarray(source_index), np.asarray(rows, dtype=np.int64)
    if source_index.shape != rows.shape or (rows < 0).any() or (rows >= windows).any():
        raise ValueError(f"rows {rows.tolist()} and source indices {source_index.tolist()} do not name windows of "
                         f"{windows}")
    donors = np.empty((len(rows), frames), dtype=np.int64)
    for i, (source, row) in enumerate(zip(source_index.tolist(), rows.tolist())):
        uniforms = streams.at(copy, source).random(frames)
        if windows == 1:
            donors[i] = row
            continue
        other = np.minimum((uniforms * (windows - 1)).astype(np.int64), windows - 2)
        donors[i] = other + (other >= row)
    return donors


def matched_masks(saliency: np.ndarray, streams: WindowStreams, copy: int, source_index: np.ndarray,
                  rows: np.ndarray) -> np.ndarray:
    """The ``random_matched`` control's masks (len(rows), T, Py, Px) of copy ``copy``: ``saliency``
    is the ``saliency`` mask (N, T, Py, Px) of every training window; window ``rows[i]`` (source
    index ``source_index[i]``) takes at step ``t`` the mask of window ``donors[i, t]`` at step ``t``
    (:func:`matched_donors`)."""
    n, t = saliency.shape[:2]
    donors = matched_donors(streams, copy, source_index, rows, n, t)
    return saliency[donors, np.arange(t)]


# -- the arithmetic -------------------------------------------------------------------------------

def _check_grid(shape: tuple[int, ...], causal_shape: tuple[int, ...], patch_size: int) -> None:
    n, t, _, h, w = shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"frames {h}x{w} are not a whole number of {patch_size}x{patch_size} patches")
    if tuple(causal_shape) != (n, t, h // patch_size, w // patch_size):
        raise ValueError(f"mask shape {tuple(causal_shape)} does not match the windows' patch grid "
                         f"{(n, t, h // patch_size, w // patch_size)}")


def apply_interventions(inputs: np.ndarray, causal: np.ndarray, draws: Draws, *, patch_size: int, history: int,
                        history_decay: float, exclude_causal_neighbours: bool,
                        out: np.ndarray | None = None) -> np.ndarray:
    """The arithmetic of one copy: (N, T, C, H, W) float32 windows with the drawn interventions applied.

    ``out`` (optional, C-contiguous float32, same shape, not ``inputs``) receives the result.
    """
    # writable too (a read-only array is copied): one compiled signature whatever the caller
    # passes, so processes compiling into numba's shared on-disk cache at once agree on its index
    x = np.require(inputs, dtype=np.float32, requirements=("C", "A", "W"))
    _check_grid(x.shape, causal.shape, patch_size)
    n, t = x.shape[:2]
    if (draws.sampled.shape != (n, t) or draws.mix.shape != causal.shape
            or draws.weights.shape != (*causal.shape, len(NEIGHBOUR_OFFSETS))):
        raise ValueError(f"draws for {draws.mix.shape} do not match the mask {causal.shape}")
    if out is None:
        out = np.empty_like(x)
    elif (out.shape != x.shape or out.dtype != np.float32 or not (out.flags.c_contiguous and out.flags.aligned)
          or np.may_share_memory(out, x)):
        raise ValueError("out must be a separate aligned C-contiguous float32 array of the inputs' shape")
    step_weights, has_temporal = temporal_terms(t, history, history_decay)
    _intervene(x, out, np.ascontiguousarray(causal == 0), np.ascontiguousarray(draws.sampled, dtype=bool),
               np.ascontiguousarray(draws.weights, dtype=np.float32), np.ascontiguousarray(draws.mix, dtype=np.float32),
               step_weights, has_temporal, int(patch_size), bool(exclude_causal_neighbours), NEIGHBOUR_DY,
               NEIGHBOUR_DX)
    return out


def distrixplorer(inputs: np.ndarray, causal: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                  sigma: float, history: int, history_decay: float,
                  exclude_causal_neighbours: bool) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of each window, all drawn from ``rng``.

    Returns (augmented (N,T,C,H,W), sampled (N,T) bool)."""
    n, t, c, h, w = np.shape(inputs)
    _check_grid((n, t, c, h, w), causal.shape, patch_size)
    draws = draw_interventions(rng, causal.shape, sigma)
    augmented = apply_interventions(inputs, causal, draws, patch_size=patch_size, history=history,
                                    history_decay=history_decay, exclude_causal_neighbours=exclude_causal_neighbours)
    return augmented, draws.sampled


def compare_to_original(original: np.ndarray, augmented: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """What was done to the bytes: (changed (N, T, Py, Px) int8: 1 where a pixel of the patch
    differs bit for bit, sums (N, C) float64: Σ |augmented - original| per window and channel),
    from two float32 (N, T, C, H, W) arrays (one compiled pass, :func:`nuwa.bank_kernel._compare`)."""
    # writable too: one compiled signature (see apply_interventions)
    x = np.require(original, dtype=np.float32, requirements=("C", "A", "W"))
    out = np.require(augmented, dtype=np.float32, requirements=("C", "A", "W"))
    if x.shape != out.shape:
        raise ValueError(f"shapes {x.shape} and {out.shape} differ")
    n, t, c, h, w = x.shape
    _check_grid(x.shape, (n, t, h // patch_size, w // patch_size), patch_size)
    changed = np.zeros((n, t, h // patch_size, w // patch_size), dtype=np.int8)
    sums = np.zeros((n, c), dtype=np.float64)
    _compare(x, out, int(patch_size), changed, sums)
    return changed, sums


# -- the bank -------------------------------------------------------------------------------------

def _importance_mask(method: str, importance, shape: tuple[int, int, int, int], ratio: float) -> np.ndarray | None:
    """The mask (N, T, Py, Px) every copy of a window starts from: ``saliency``'s for 'saliency' and
    'random_matched' (whose copies take other windows' rows of it), the inverted one for
    'saliency_inverted'; None for 'random' (drawn per copy)."""
    if method not in BANK_METHODS:
        raise ValueError(f"bank method must be one of {', '.join(map(repr, BANK_METHODS))}, got {method!r}")
    if method not in IMPORTANCE_METHODS:
        return None
    n, t, gy, gx = shape
    if importance is None or importance.shape != (n, t, gy, gx):
        got = None if importance is None else importance.shape
        raise ValueError(f"bank method {method!r}: saliency importance shape {got} does not match windows "
                         f"{(n, t, gy, gx)}")
    rank = inverted_causal_mask if method == "saliency_inverted" else causal_mask
    return rank(importance.reshape(n, t, gy * gx), ratio).reshape(n, t, gy, gx)


class LazyWindows:
    """(N, T, C, H, W) windows fetched on demand: ``fetch(start, stop)`` returns rows start..stop.

    ``LazyWindows(lambda a, b: train.inputs(starts[a:b]), (len(starts), T, C, H, W))`` lets
    :func:`write_bank` read the windows of one block at a time.
    """

    def __init__(self, fetch: Callable[[int, int], np.ndarray], shape: tuple[int, int, int, int, int]):
        self.fetch, self.shape = fetch, tuple(int(v) for v in shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("LazyWindows supports contiguous row slices only")
        return np.asarray(self.fetch(start, stop), dtype=np.float32)


class _BankPass:
    """The bank of :func:`write_bank`, computed block by block (bank rows ``copy·N + window``).

    A block's draws and masks come from its windows' own streams, so any block of rows can be
    computed alone, in any order. Each block records, from the kernel's output against its input,
    the flags and, per row and channel, the sum of ``|augmented - original|``.
    """

    def __init__(self, inputs, source_index, *, method, settings, patch_size, seed, importance, dataset_name,
                 std, progress_bar=None):
        n, t, c, h, w = inputs.shape
        _check_grid((n, t, c, h, w), (n, t, h // patch_size, w // patch_size), patch_size)
        self.inputs, self.settings, self.patch_size = inputs, settings, patch_size
        self.sources = np.asarray(source_index, dtype=np.int64)
        if self.sources.shape != (n,):
            raise ValueError(f"source_index has shape {self.sources.shape}, the windows need ({n},)")
        if (self.sources < 0).any():
            raise ValueError("source indices must be >= 0")
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.std.shape != (c,) or not (np.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError(f"std must hold {c} finite positive per-channel values, got {np.asarray(std)!r}")
        self.shape = (settings["copies"] * n, t, c, h, w)
        self.grid = (t, h // patch_size, w // patch_size)
        self.ratio = settings["environment_ratio"]
        self.method = method
        self.mask = _importance_mask(method, importance, (n, *self.grid), self.ratio)
        self.draw_streams = WindowStreams(seed, INTERVENTION_STREAM, dataset_name)
        purpose = {"random": MASK_STREAM, "random_matched": MATCHED_STREAM}.get(method)
        self.mask_streams = WindowStreams(seed, purpose, dataset_name) if purpose else None
        self.sampled = np.zeros(self.shape[:2], dtype=np.int8)
        self.changed = np.zeros((self.shape[0], *self.grid), dtype=np.int8)
        self.masks = np.zeros((self.shape[0], *self.grid), dtype=np.int8)
        self.abs_change = np.zeros((self.shape[0], self.shape[2]), dtype=np.float64)  # (rows, C): Σ |aug - orig|
        self.progress_bar = progress_bar

    def rows(self, lo: int, hi: int) -> np.ndarray:
        n = len(self.sources)
        out = np.empty((hi - lo, *self.shape[1:]), dtype=np.float32)
        for copy in range(lo // n, (hi - 1) // n + 1):
            first, last = max(lo, copy * n), min(hi, (copy + 1) * n)
            start, stop = first - copy * n, last - copy * n
            sources = self.sources[start:stop]
            x = np.require(self.inputs[start:stop], dtype=np.float32, requirements=("C", "A", "W"))
            if self.method == "random":
                mask = random_masks(self.mask_streams, copy, sources, self.grid, self.ratio)
            elif self.method == "random_matched":
                mask = matched_masks(self.mask, self.mask_streams, copy, sources, np.arange(start, stop))
            else:
                mask = self.mask[start:stop]
            draws = window_draws(self.draw_streams, copy, sources, self.grid, self.settings["sigma"])
            target = out[first - lo:last - lo]
            apply_interventions(x, mask, draws, patch_size=self.patch_size, history=self.settings["history"],
                                history_decay=self.settings["history_decay"],
                                exclude_causal_neighbours=self.settings["exclude_causal_neighbours"], out=target)
            self.sampled[first:last] = draws.sampled
            self.masks[first:last] = mask
            self.changed[first:last], self.abs_change[first:last] = compare_to_original(x, target, self.patch_size)
        if self.progress_bar is not None:
            self.progress_bar.update(hi - lo)
        return out

    def strength(self) -> dict:
        pixels = int(np.prod(self.shape, dtype=np.int64))
        total = self.abs_change.sum(axis=0)  # per channel, in row order: the same whatever the blocks
        return {"changed_cell_fraction": float(self.changed.mean()) if self.changed.size else 0.0,
                "mean_abs_change_std": float((total / self.std).sum() / pixels) if pixels else 0.0}


FLAG_VARIABLES = ("sampled", "intervened", "changed", "causal")  # int8, written after the streaming pass


def write_bank(path: str | Path, inputs, source_index: np.ndarray, *, method: str, settings: dict, patch_size: int,
               seed: int, importance: np.ndarray | None = None, channels, units: str, std,
               dataset_name: str, variant: str, desc: str = "bank") -> dict:
    """Build the bank of (dataset, variant, seed) and write it to NetCDF, streaming.

    ``inputs`` (N, T, C, H, W) physical units (an array or :class:`LazyWindows`), rows matching
    ``source_index`` (each window's first time step, >= 0). ``method``, one of
    :data:`BANK_METHODS`, makes the masks (see the module's docstring) at
    ``settings['environment_ratio']``; those of :data:`IMPORTANCE_METHODS` from ``importance``
    (N, T, Py, Px, the rows of ``inputs``), which the others ignore.
    ``seed``: the training run's seed. ``std``: the training split's per-channel std
    (``SeriesData.std``), the unit of ``mean_abs_change_std``.

    ``augmented`` is computed and written in blocks of about ``settings['chunk_size']`` rows (a
    multiple of the ~2 MiB row count of :func:`nuwa.io.netcdf_chunks`; a memory knob only: the
    bytes do not depend on it), one block at a time on dask's synchronous scheduler, into a
    temporary file (:func:`nuwa.io.atomic_path`). The flags and the strength, known once every
    block ran, are then written into that file (netCDF4, append mode) before it is renamed into
    place. ``augmented`` is stored contiguous and uncompressed (:data:`BANK_CONTIGUOUS`), so that
    training reads the rows of each batch from the file (:class:`nuwa.io.NetCDFRows`). Peak
    memory: about two blocks of windows and outputs, and the int8 flags and masks; it does not
    grow with the windows' pixels.

    Returns ``rows`` (bank rows), ``changed_cell_fraction``, ``mean_abs_change_std``,
    ``sampled_step_fraction``, ``intervened_step_fraction``.
    """
    import dask
    import dask.array as da
    import netCDF4

    from nuwa.io import atomic_path, netcdf_chunks, netcdf_encoding

    copies = settings["copies"]
    with progress(total=copies * inputs.shape[0], desc=desc, unit="window") as bar:
        plan = _BankPass(inputs, source_index, method=method, settings=settings, patch_size=patch_size, seed=seed,
                         importance=importance, dataset_name=dataset_name, std=std, progress_bar=bar)
        total = plan.shape[0]
        leading = netcdf_chunks(plan.shape, 4)[0] if total else 1
        block = leading * max(1, settings["chunk_size"] // leading)
        bounds = [(lo, min(lo + block, total)) for lo in range(0, total, block)]
        name = f"nuwa-bank-{dataset_name}-{variant}-{int(seed)}"
        graph = {(name, b, 0, 0, 0, 0): (plan.rows, lo, hi) for b, (lo, hi) in enumerate(bounds)}
        chunks = (tuple(hi - lo for lo, hi in bounds), *((d,) for d in plan.shape[1:]))
        augmented = (da.Array(graph, name, chunks=chunks, dtype=np.float32) if total
                     else np.zeros(plan.shape, dtype=np.float32))
        n = inputs.shape[0]
        # flags and strength: placeholders here, their values written once every block ran
        bank = {"augmented": augmented,
                "source_index": np.tile(np.asarray(source_index, dtype=np.int64), copies),
                "copy": np.repeat(np.arange(copies, dtype=np.int32), n),
                "sampled": plan.sampled, "intervened": np.zeros_like(plan.sampled), "changed": plan.changed,
                "causal": plan.masks}
        dataset = bank_dataset(bank, channels=channels, units=units, method=method, settings=settings,
                               patch_size=patch_size, dataset_name=dataset_name, variant=variant, seed=seed,
                               strength={"changed_cell_fraction": 0.0, "mean_abs_change_std": 0.0})
        # `augmented` is contiguous (no chunk cache); for any chunked variable HDF5 keeps written
        # chunks in its cache until evicted, and netCDF's default cache (64 MiB) would add up to
        # that much on large banks: a small one serves
        cache = netCDF4.get_chunk_cache()
        netCDF4.set_chunk_cache(WRITE_CHUNK_CACHE_BYTES)
        try:
            with atomic_path(path) as tmp:
                with dask.config.set(scheduler="synchronous"):
                    dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                                      encoding=netcdf_encoding(dataset, BANK_CONTIGUOUS))
                strength = plan.strength()
                intervened = plan.changed.any(axis=(2, 3)).astype(np.int8)
                flags = dict(zip(FLAG_VARIABLES, (plan.sampled, intervened, plan.changed, plan.masks)))
                with netCDF4.Dataset(tmp, "a") as handle:
                    for variable, values in flags.items() if total else ():
                        handle[variable].set_auto_maskandscale(False)
                        handle[variable][...] = values
                    for key, value in strength.items():
                        handle.setncattr(key, np.float64(value))
        finally:
            netCDF4.set_chunk_cache(*cache)
    return {"rows": int(total), **strength,
            "sampled_step_fraction": float(plan.sampled.mean()) if total else 0.0,
            "intervened_step_fraction": float(intervened.mean()) if total else 0.0}


def bank_dataset(bank: dict[str, np.ndarray], *, channels, units: str, method: str, settings: dict,
                 patch_size: int, dataset_name: str, variant: str, seed: int | None = None,
                 strength: dict | None = None) -> xr.Dataset:
    """The bank file's dataset. ``bank``: ``augmented``, ``source_index``, ``copy``, ``causal`` and
    the flags it has of ``sampled``, ``intervened``, ``changed``. ``seed`` and ``strength``
    (``changed_cell_fraction``, ``mean_abs_change_std``) become global attributes when given."""
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
    if seed is not None:
        attrs["seed"] = int(seed)
    for key, value in settings.items():
        if key not in ("method", "chunk_size"):  # chunk_size: a memory knob, not a property of the bank
            attrs[key] = int(value) if isinstance(value, bool) else value
    for key, value in (strength or {}).items():
        attrs[key] = float(value)
    flag = {"flag_values": np.array([0, 1], dtype=np.int8)}
    step_dims, patch_dims = ("bank_sample", "step"), ("bank_sample", "step", "patch_y", "patch_x")
    described = {
        "sampled": (step_dims, {"long_name": "step was drawn by temporal Gaussian decay sampling G(t)", **flag,
                                "flag_meanings": "kept sampled"}),
        "intervened": (step_dims, {"long_name": "the step's bytes differ from the original window's", **flag,
                                   "flag_meanings": "unchanged changed"}),
        "changed": (patch_dims, {"long_name": "the patch's bytes differ from the original window's", **flag,
                                 "flag_meanings": "unchanged changed"}),
    }
    variables = {
        "augmented": (("bank_sample", "step", "channel", "y", "x"), bank["augmented"],
                      {"long_name": "augmented input window", "units": units}),
        "source_index": ("bank_sample", bank["source_index"],
                         {"long_name": "source window: index of its first time step in the processed dataset"}),
        "copy": ("bank_sample", bank["copy"], {"long_name": "augmented copy number of the source window"}),
    }
    for key, (dims, variable_attrs) in described.items():
        if key in bank:
            variables[key] = (dims, np.asarray(bank[key], dtype=np.int8), variable_attrs)
    variables["causal"] = (patch_dims, bank["causal"],
                           {"long_name": "patch role used for this sample", **flag,
                            "flag_meanings": "environmental causal"})
    return xr.Dataset(
        variables,
        coords={"bank_sample": np.arange(n, dtype=np.int64), "step": np.arange(t, dtype=np.int32),
                "channel": list(channels), "y": np.arange(h, dtype=np.int32), "x": np.arange(w, dtype=np.int32),
                "patch_y": np.arange(gy, dtype=np.int32), "patch_x": np.arange(gx, dtype=np.int32)},
        attrs=attrs,
    )


def empty_bank_dataset(series, config: dict, dataset_name: str, variant: str, seed: int,
                       method: str = "none") -> xr.Dataset:
    """The bank of a variant whose method stores none (:data:`nuwa.grid.BANKLESS_METHODS`: Ori,
    mixup): zero rows, the same variables and attributes as any bank (strength 0.0). Write it
    with ``contiguous=BANK_CONTIGUOUS``."""
    t, (c, h, w) = config["input_frames"], series.field.shape[1:]
    p = config["patch_size"]
    empty = {"augmented": np.zeros((0, t, c, h, w), np.float32), "source_index": np.zeros(0, np.int64),
             "copy": np.zeros(0, np.int32), "sampled": np.zeros((0, t), np.int8),
             "intervened": np.zeros((0, t), np.int8), "changed": np.zeros((0, t, h // p, w // p), np.int8),
             "causal": np.zeros((0, t, h // p, w // p), np.int8)}
    return bank_dataset(empty, channels=[str(i) for i in range(c)], units=series.attrs.get("units", "1"),
                        method=method, settings={"environment_ratio": 0.0}, patch_size=p,
                        dataset_name=dataset_name, variant=variant, seed=seed,
                        strength={"changed_cell_fraction": 0.0, "mean_abs_change_std": 0.0})


def load_importance(saliency_path: str | Path, source_index: np.ndarray, patches: tuple[int, int, int],
                    dataset_name: str | None = None) -> np.ndarray:
    """The saliency file's ``importance`` (N, T, Py, Px) float32, checked against the training
    windows: its ``sample`` coordinate must equal ``source_index`` and its (step, patch_y,
    patch_x) shape ``patches``, every value finite; with ``dataset_name``, its ``nuwa_dataset``
    attribute too. Each failure is a
    :class:`nuwa.io.DataFileError` naming the file and saying to rerun the saliency stage."""
    from nuwa.io import DataFileError, check_finite, open_netcdf

    rerun = "rerun the saliency stage"
    try:
        saliency = open_netcdf(saliency_path, variables=("importance",),
                               dims={"importance": ("sample", "step", "patch_y", "patch_x")},
                               expect={"nuwa_dataset": dataset_name}, hint=" (the saliency file of another dataset)")
    except DataFileError as exc:
        raise DataFileError(f"{exc}; {rerun}") from None
    samples = saliency["sample"].values if "sample" in saliency.coords else None
    if samples is None or not np.array_equal(samples, np.asarray(source_index)):
        raise DataFileError(f"{saliency_path}: its samples are not this dataset's training windows "
                            f"(stale saliency file?); {rerun}")
    importance = saliency["importance"].values
    if importance.shape[1:] != tuple(patches):
        raise DataFileError(f"{saliency_path}: importance has (step, patch_y, patch_x) = {importance.shape[1:]}, "
                            f"this dataset's windows need {tuple(patches)} (stale saliency file?); {rerun}")
    try:
        check_finite(importance, f"{saliency_path}: variable 'importance'")
    except DataFileError as exc:
        raise DataFileError(f"{exc}; {rerun}") from None
    return np.asarray(importance, dtype=np.float32)
