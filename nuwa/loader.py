"""The training loader: the pool of original windows and bank rows, the paired row sampler,
and the read-ahead batch stream that :func:`nuwa.train.train_cell` trains on.

**Paired design.** For one (dataset, backbone, seed), every variant (Ori, +Nuwa, random, ...)
draws the same sequence of original training windows, and the same batch positions are
replaced by bank rows: :class:`PairedRows` draws each step's ``B`` original window positions
from an "original rows" generator, then, from a "bank rows" generator of its own, a uniform
``u`` and a copy number ``c`` per position; a position with ``u < mix_fraction`` becomes the bank
row that holds augmented copy ``c`` of *the same* window. Both generators are seeded without
the variant's name and both are drawn every step whatever the variant, so Ori trains on exactly
the original windows of each step, +Nuwa and random replace the same positions of them, and
only the augmentation differs between the two. ``mix_fraction`` 0, or an empty bank: Ori's
batches.

**Mixup, the reference augmentation** (Zhang et al. 2018, the standard augmentation a user would
otherwise try): the same positions (``u < mix_fraction``) instead become ``λ·w + (1 − λ)·w'``, the
window ``w`` mixed with another training window ``w'``, inputs and targets with the same
``λ ~ Beta(α, α)``; ``w'`` and ``λ`` come from a third stream of their own, so the original
windows and the mixed positions are those of every other variant (:class:`MixedRows`).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from nuwa.io import DataFileError
from nuwa.seeding import torch_generator
from nuwa.superres import check_input_factor, coarsen
from nuwa.windows import WindowDataset


@dataclass(frozen=True)
class MixedRows:
    """A batch's pool rows with mixup at some positions: position ``i`` is ``weights[i]`` times
    row ``rows[i]`` plus ``1 - weights[i]`` times the original window at pool row ``partners[i]``,
    inputs and targets alike (weight 1: not mixed). Sliced like the rows tensor (a process's share)."""

    rows: torch.Tensor  # int64 pool rows
    partners: torch.Tensor  # int64 pool rows of original windows
    weights: torch.Tensor  # float64 in [0, 1]

    def __getitem__(self, index) -> MixedRows:
        return MixedRows(self.rows[index], self.partners[index], self.weights[index])

    def __len__(self) -> int:
        return len(self.rows)


class TrainingPool:
    """Original training windows plus (optionally) bank samples, as one indexable pool.

    Rows ``0..len(train)-1`` are the training windows, in ``train.starts`` order; the bank's rows
    follow. Nothing is copied up front: :meth:`batch` copies the inputs of its rows, the
    originals from the normalised series and the bank's from ``bank_inputs`` -- any object
    whose ``bank_inputs[indices]`` gives those rows (N, T, C, H, W) in physical units: the bank
    file, read row by row (:class:`nuwa.io.NetCDFRows`), or an array -- normalised per batch
    with the arithmetic of :meth:`SeriesData.normalise` (element by element: the same bits as
    normalising the whole bank at once). Which rows each batch takes is :class:`PairedRows`'s draw.

    ``input_factor`` > 1 (the super-resolution task, :mod:`nuwa.superres`): :meth:`batch` returns
    the inputs block-averaged ``input_factor`` x ``input_factor`` (:func:`nuwa.superres.coarsen`),
    the targets at full resolution. The batch is assembled at full resolution first, bank rows
    and mixup included, and coarsened last: the bank stays at full resolution (it augments the
    full-resolution training windows), and coarsening its rows as they are read is how the
    augmentation carries over to coarse inputs. 1: today's batches, the same bytes.
    """

    def __init__(self, train: WindowDataset, bank_inputs=None, bank_sources: np.ndarray | None = None,
                 input_factor: int = 1):
        self.train = train
        self.starts = np.asarray(train.starts)
        self.window_shape = (train.input_frames, *train.series.field.shape[1:])
        self.input_factor = check_input_factor(input_factor, *self.window_shape[-2:],
                                               where=f"field {train.series.name!r}: ")
        self.bank = None
        sources = self.starts
        if bank_inputs is not None and len(bank_inputs):
            bank_sources = np.asarray(bank_sources)
            where = f"{bank_inputs.path}: " if hasattr(bank_inputs, "path") else ""
            if tuple(bank_inputs.shape[1:]) != self.window_shape or bank_sources.shape != (len(bank_inputs),):
                raise ValueError(f"{where}bank windows {tuple(bank_inputs.shape)} with {bank_sources.shape[0]} source "
                                 f"index(es) do not match this dataset's training windows {self.window_shape}; "
                                 "the bank is stale or from another dataset")
            unknown = np.setdiff1d(bank_sources, train.starts)
            if unknown.size:
                raise ValueError(f"{where}bank holds {unknown.size} sample(s) whose source window is not a training "
                                 f"window (first: {int(unknown[0])}); the bank is stale or from another dataset")
            check_finite_rows(bank_inputs, where or "bank: ")
            self.bank = bank_inputs
            sources = np.concatenate([sources, bank_sources])
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def batch(self, rows: torch.Tensor | MixedRows, pin_memory: bool = False,
              nogil: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the pool's ``rows``, normalised, in the order given.
        :class:`MixedRows`: its rows' windows, then mixed with their partners (:meth:`_mix`).

        Row by row: a window is a contiguous block of the normalised series (one copy), a bank
        row one positioned read from the bank file into the batch, normalised there.
        ``pin_memory``: the batch is built in page-locked memory (for an asynchronous GPU copy).
        ``nogil``: the whole batch in one compiled call that holds no GIL
        (:mod:`nuwa.batchkernel`; the same bytes) where it can be (a contiguous bank file, or
        none, and float32 statistics), for a loader thread beside a Python-bound step.
        With an ``input_factor`` > 1 the inputs of the finished full-resolution batch are then
        coarsened (the same bytes whichever builder made it).
        """
        # with a factor, only the coarse inputs (and the targets) need page-locked memory
        inputs, targets = self._full_resolution_batch(rows, pin_memory, nogil, pin_inputs=self.input_factor == 1)
        if self.input_factor == 1:
            return inputs, targets
        # the block mean commutes with the per-channel normalisation (nuwa.superres): these are the
        # coarsened physical windows, normalised
        coarse = coarsen(inputs.numpy(), self.input_factor)
        if not pin_memory:
            return torch.from_numpy(coarse), targets
        pinned = torch.empty(coarse.shape, dtype=torch.float32, pin_memory=True)
        pinned.numpy()[...] = coarse
        return pinned, targets

    def _full_resolution_batch(self, rows: torch.Tensor | MixedRows, pin_memory: bool, nogil: bool,
                               pin_inputs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch` before its inputs are coarsened: inputs and targets at full resolution
        (the inputs in page-locked memory only with ``pin_inputs`` too)."""
        if isinstance(rows, MixedRows):
            inputs, targets = self._full_resolution_batch(rows.rows, pin_memory, nogil, pin_inputs)
            self._mix(rows, inputs.numpy(), targets.numpy())
            return inputs, targets
        rows = np.asarray(rows, dtype=np.int64)
        train, originals = self.train, len(self.starts)
        normalised = train.normalised.numpy()
        t_in, t_out = train.input_frames, train.output_frames
        input_batch = torch.empty((len(rows), *self.window_shape), dtype=torch.float32,
                                  pin_memory=pin_memory and pin_inputs)
        target_batch = torch.empty((len(rows), t_out, *self.window_shape[1:]), dtype=torch.float32,
                                   pin_memory=pin_memory)
        inputs, targets = input_batch.numpy(), target_batch.numpy()
        if nogil and self._compiled_batches():
            from nuwa import batchkernel

            batchkernel.assemble(self.bank, normalised, rows, self.sources[rows], originals, t_in, t_out,
                                 train.series.mean, train.series.std, inputs, targets)
            return input_batch, target_batch
        bank = [(position, row - originals) for position, row in enumerate(rows.tolist()) if row >= originals]
        if bank:
            if hasattr(self.bank, "read_into"):
                for position, row in bank:
                    self.bank.read_into(row, inputs[position])
            else:
                positions, bank_rows = map(list, zip(*bank))
                inputs[positions] = np.asarray(self.bank[np.asarray(bank_rows)])
        for position, (row, start) in enumerate(zip(rows.tolist(), self.sources[rows].tolist())):
            if row < originals:
                inputs[position] = normalised[start:start + t_in]
            else:
                train.series.normalise(inputs[position], out=inputs[position])
            targets[position] = normalised[start + t_in:start + t_in + t_out]
        return input_batch, target_batch

    def _mix(self, mixed: MixedRows, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Mix the built batch in place: ``λ·x + (1 − λ)·x'`` in float32, on normalised values (the
        normalisation is affine with one mean and std per channel, so this is the mix of the
        physical windows, normalised)."""
        normalised = self.train.normalised.numpy()
        t_in, t_out = self.train.input_frames, self.train.output_frames
        weights, partners = mixed.weights.numpy(), mixed.partners.numpy()
        for position in np.flatnonzero(weights < 1.0).tolist():
            start = int(self.sources[partners[position]])
            weight = np.float32(weights[position])
            inputs[position] = weight * inputs[position] + (np.float32(1) - weight) * normalised[start:start + t_in]
            targets[position] = (weight * targets[position]
                                 + (np.float32(1) - weight) * normalised[start + t_in:start + t_in + t_out])

    def _compiled_batches(self) -> bool:
        """Whether :mod:`nuwa.batchkernel` can build this pool's batches."""
        series = self.train.series
        bank_ok = self.bank is None or (getattr(self.bank, "contiguous", False) and self.bank.dtype == np.float32)
        if not (bank_ok and series.mean.dtype == series.std.dtype == np.float32):
            return False
        from nuwa import batchkernel

        return batchkernel.available()


def mixup_draws(generator: torch.Generator, count: int, windows: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``count`` mixup draws from ``generator``: a partner window among ``windows`` (int64) and a
    weight λ ~ Beta(α, α) (float64) each, λ by the inverse CDF of a uniform so that one seeded
    torch stream gives both."""
    from scipy.special import betaincinv

    partner_draw, weight_draw = torch.rand((2, count), dtype=torch.float64, generator=generator).numpy()
    partners = np.minimum((partner_draw * windows).astype(np.int64), windows - 1)
    return partners, betaincinv(alpha, alpha, weight_draw)


def mixup_strength(train: WindowDataset, alpha: float, seed: int, *names: str | int, patch_size: int,
                   chunk: int = 256) -> dict:
    """How strongly mixup perturbs, in the bank files' terms (:meth:`nuwa.bank` ``strength``), so
    that the tables show it beside the banks': one mixed copy of every training window (a partner
    window and ``λ ~ Beta(α, α)`` drawn from a stream of its own, not the training batches'),
    compared with the original inputs. Returns ``changed_cell_fraction`` (the (step, patch) cells
    where a pixel changed) and ``mean_abs_change_std`` (mean |change| over every value, in
    training-std units). The targets are mixed with the same λ; only the inputs are counted, as
    for the banks."""
    from nuwa.bank import compare_to_original

    starts = np.asarray(train.starts)
    partners, weights = mixup_draws(torch_generator(seed, "mixup-strength", *names), len(starts), len(starts), alpha)
    weights = weights.astype(np.float32)
    std = np.asarray(train.series.std, dtype=np.float64)
    changed = total = 0.0
    cells = values = 0
    for first in range(0, len(starts), chunk):
        part = slice(first, first + chunk)
        original = np.asarray(train.inputs(starts[part]), dtype=np.float32)
        partner = np.asarray(train.inputs(starts[partners[part]]), dtype=np.float32)
        weight = weights[part].reshape(-1, 1, 1, 1, 1)
        mixed = weight * original + (np.float32(1) - weight) * partner
        flags, sums = compare_to_original(original, mixed, patch_size)
        changed += float(flags.sum())
        cells += flags.size
        total += float((sums / std).sum())
        values += original.size
    return {"changed_cell_fraction": changed / cells if cells else 0.0,
            "mean_abs_change_std": total / values if values else 0.0}


def check_finite_rows(rows, where: str, block_bytes: int = 8 * 2**20) -> None:
    """Every row of ``rows`` (the bank file's rows or an array) finite, read ``block_bytes`` at a
    time before training starts: a NaN or Inf in the bank is an error naming the file and the
    row, not a silently poisoned run (one sequential pass over the bank; memory one block)."""
    row_bytes = max(1, int(np.prod(rows.shape[1:], dtype=np.int64)) * 4)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, len(rows), step):
        block = np.asarray(rows[np.arange(start, min(start + step, len(rows)))])
        finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise DataFileError(f"{where}augmented window {row} holds non-finite values (NaN or Inf); "
                                "rerun the bank stage")


class PairedRows:
    """The pool rows of each training batch, paired across variants (see the module's docstring).

    ``originals``: the generator of the original window positions (``0..len(pool.train)-1``, the
    pool's first rows); ``bank``: the generator of the bank draws (a uniform and a copy number per
    batch position, drawn every step whether or not the pool has a bank). ``bank_copies``: the copy
    number of each bank row (the bank file's ``copy`` variable, in bank row order); with
    ``pool.sources`` (the bank rows' source windows) it gives the row holding copy ``c`` of window
    ``p``, whatever the bank's row order. Needed when ``mix_fraction > 0`` and the bank is not
    empty; every (window, copy) pair for copies ``0..max(copy)`` must be there, once.
    ``mixup_alpha``: the mixed positions are mixup of two original windows instead (:class:`MixedRows`;
    the pool must hold no bank rows), partners and ``λ ~ Beta(α, α)`` drawn from ``mixup``.
    """

    def __init__(self, pool, bank_copies: np.ndarray | None = None, mix_fraction: float = 0.0, *,
                 originals: torch.Generator, bank: torch.Generator, mixup_alpha: float | None = None,
                 mixup: torch.Generator | None = None):
        mix_fraction = float(mix_fraction)
        if not 0.0 <= mix_fraction <= 1.0:  # also refuses NaN
            raise ValueError(f"bank.mix_fraction {mix_fraction!r}: expected a number in [0, 1] (the share of "
                             "a batch taken from the bank)")
        self.pool, self.mix_fraction = pool, mix_fraction
        self.original_generator, self.bank_generator = originals, bank
        starts = np.asarray(pool.train.starts)
        self.originals = len(starts)
        bank_sources = np.asarray(pool.sources)[self.originals:]
        self.copy_rows = None  # (window position, copy) -> pool row; None: Ori's batches
        if len(bank_sources) and (mix_fraction > 0 or bank_copies is not None):
            table = copy_row_table(starts, bank_sources, bank_copies, getattr(getattr(pool, "bank", None), "path", None))
            if mix_fraction > 0:
                self.copy_rows = torch.from_numpy(table)
        self.mixup_alpha, self.mixup_generator = mixup_alpha, mixup
        if mixup_alpha is not None:
            if not (math.isfinite(mixup_alpha) and mixup_alpha > 0):
                raise ValueError(f"mixup_alpha {mixup_alpha!r}: expected a number > 0 (λ ~ Beta(α, α))")
            if len(bank_sources):
                raise ValueError("mixup mixes original windows: its pool must hold no bank rows")
            if mixup is None:
                raise ValueError("mixup_alpha needs the generator of its draws (mixup=)")

    @classmethod
    def seeded(cls, pool, seed: int, *names: str | int, bank_copies: np.ndarray | None = None,
               mix_fraction: float = 0.0, mixup_alpha: float | None = None) -> PairedRows:
        """The generators seeded from (``seed``, ``names``): give names that leave out the
        variant (e.g. the dataset and backbone) for batches paired across variants."""
        return cls(pool, bank_copies, mix_fraction, originals=torch_generator(seed, "train-rows", *names),
                   bank=torch_generator(seed, "train-bank-rows", *names), mixup_alpha=mixup_alpha,
                   mixup=torch_generator(seed, "train-mixup-rows", *names) if mixup_alpha is not None else None)

    def draw(self, batch_size: int) -> torch.Tensor | MixedRows:
        """The pool rows (int64) of the next batch of ``batch_size`` (:class:`MixedRows` for mixup);
        every process draws them all."""
        positions = torch.randint(self.originals, (batch_size,), generator=self.original_generator)
        # drawn whatever the variant and the mix, so that neither stream ever shifts
        uniform, copy_draw = torch.rand((2, batch_size), dtype=torch.float64, generator=self.bank_generator)
        if self.mixup_alpha is not None:
            return self._mixup(positions, uniform < self.mix_fraction)
        if self.copy_rows is None:
            return positions
        copies = self.copy_rows.shape[1]
        copy = torch.clamp((copy_draw * copies).long(), max=copies - 1)
        mixed = uniform < self.mix_fraction
        rows = positions.clone()
        rows[mixed] = self.copy_rows[positions[mixed], copy[mixed]]
        return rows

    def _mixup(self, positions: torch.Tensor, mixed: torch.Tensor) -> MixedRows:
        partners, weights = mixup_draws(self.mixup_generator, len(positions), self.originals, self.mixup_alpha)
        weights = torch.from_numpy(weights)
        weights[~mixed] = 1.0
        return MixedRows(positions, torch.from_numpy(partners), weights)

    def get_state(self) -> dict:
        state = {"originals": self.original_generator.get_state(), "bank": self.bank_generator.get_state()}
        if self.mixup_generator is not None:
            state["mixup"] = self.mixup_generator.get_state()
        return state

    def set_state(self, state: dict) -> None:
        self.original_generator.set_state(state["originals"])
        self.bank_generator.set_state(state["bank"])
        if self.mixup_generator is not None:
            if "mixup" not in state:
                raise ValueError("the saved batch-row state has no mixup stream (written by a run without mixup)")
            self.mixup_generator.set_state(state["mixup"])


def copy_row_table(starts: np.ndarray, bank_sources: np.ndarray, bank_copies: np.ndarray | None,
                   path=None) -> np.ndarray:
    """(windows, copies) int64 table: entry [p, c] is the pool row (``len(starts)`` + bank row) that
    holds augmented copy ``c`` of the window starting at ``starts[p]``. Built from the bank's
    ``source_index`` and ``copy`` arrays (no row order assumed); a missing or repeated pair is an error."""
    where = f"{path}: " if path is not None else "bank: "
    if bank_copies is None:
        raise ValueError(f"{where}the copy number of each bank row (the bank file's 'copy' variable, train_cell's "
                         "bank_copies) is needed to mix bank rows into the batches")
    copies = np.asarray(bank_copies)
    if copies.shape != bank_sources.shape:
        raise DataFileError(f"{where}{copies.size} copy number(s) for {bank_sources.size} bank row(s); the bank is "
                            "stale or damaged, rerun the bank stage")
    if copies.size and (not np.issubdtype(copies.dtype, np.integer) or copies.min() < 0):
        raise DataFileError(f"{where}variable 'copy' must hold integers >= 0; rerun the bank stage")
    starts = np.asarray(starts)
    order = np.argsort(starts, kind="stable")
    found = np.searchsorted(starts[order], bank_sources)
    found = np.minimum(found, len(starts) - 1)
    if not np.array_equal(starts[order][found], bank_sources):
        unknown = bank_sources[starts[order][found] != bank_sources]
        raise DataFileError(f"{where}bank holds {unknown.size} sample(s) whose source window is not a training "
                            f"window (first: {int(unknown[0])}); the bank is stale or from another dataset")
    positions = order[found]
    count = int(copies.max()) + 1
    table = np.full((len(starts), count), -1, dtype=np.int64)
    keys = positions.astype(np.int64) * count + copies
    unique, first, seen = np.unique(keys, return_index=True, return_counts=True)
    if (seen > 1).any():
        key = int(unique[np.flatnonzero(seen > 1)[0]])
        raise DataFileError(f"{where}bank holds copy {key % count} of the window starting at "
                            f"{int(starts[key // count])} more than once; rerun the bank stage")
    table[positions, copies] = len(starts) + np.arange(len(bank_sources))
    missing = np.argwhere(table < 0)
    if missing.size:
        window, copy = (int(v) for v in missing[0])
        raise DataFileError(f"{where}bank lacks {len(missing)} (window, copy) pair(s) of copies 0..{count - 1} "
                            f"(first: copy {copy} of the window starting at {int(starts[window])}); every training "
                            "window needs every copy; rerun the bank stage")
    return table


def next_batch(pool: TrainingPool, rows: PairedRows, batch_size: int,
               my_rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: ``batch_size`` rows drawn by ``rows`` (the same draws in every process);
    this process's ``my_rows`` of them read."""
    return pool.batch(rows.draw(batch_size)[my_rows])


class BatchStream:
    """The batches of :func:`next_batch`, in the same order, each read while the step before runs.

    Rows are drawn here, in the training loop's thread, by ``rows`` (:class:`PairedRows`, whose
    generators are streams of their own, so that drawing a batch one step early moves no other
    draw); a background thread reads the next batch from the pool while the current step runs.
    On a GPU that batch is built in page-locked memory, in one call that holds no GIL
    (:mod:`nuwa.batchkernel`: the step, bound by Python launching kernels, would otherwise trade
    the GIL with the loader's numpy calls), and copied on a side CUDA stream, which the step's
    stream waits for, so a step waits neither for the host's copies nor for the transfer
    (``nuwa bench loader``). :meth:`rows_state` is the sampler's state before the first batch not
    yet handed out: a checkpoint saves it, and the resumed run draws that batch again.
    ``prefetch=False`` reads each batch when it is asked for (the serial loader). ``nogil``
    chooses the batch builder (default: the compiled one exactly when reading ahead beside a GPU step).
    """

    def __init__(self, pool: TrainingPool, rows: PairedRows, batch_size: int,
                 my_rows: slice = slice(None), device: torch.device | str = "cpu", prefetch: bool = True,
                 nogil: bool | None = None):
        self.pool, self.rows, self.batch_size, self.my_rows = pool, rows, batch_size, my_rows
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        # beside a GPU step (bound by Python launching kernels) the batch is built without the GIL
        self.nogil = (self.cuda and prefetch) if nogil is None else nogil
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="nuwa-batches") if prefetch else None
        self.pending = None  # (sampler state before the draw, rows, the read in flight or None)

    def _request(self):
        state = self.rows.get_state()
        rows = self.rows.draw(self.batch_size)[self.my_rows]
        return state, rows, (self.reader.submit(self._read, rows) if self.reader else None)

    def _read(self, rows: torch.Tensor):
        inputs, targets = self.pool.batch(rows, pin_memory=self.cuda, nogil=self.nogil)
        if not self.cuda:
            return inputs.to(self.device), targets.to(self.device), None
        with torch.cuda.stream(self.copy_stream):
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return inputs, targets, ready

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pending is None:
            self.pending = self._request()
        _, rows, read = self.pending
        inputs, targets, ready = read.result() if read is not None else self._read(rows)
        self.pending = self._request() if self.reader else None
        if ready is not None:  # the step's stream waits for the copy; the allocator learns who uses the memory
            step_stream = torch.cuda.current_stream(self.device)
            step_stream.wait_event(ready)
            inputs.record_stream(step_stream)
            targets.record_stream(step_stream)
        return inputs, targets

    def rows_state(self) -> dict:
        return self.pending[0] if self.pending is not None else self.rows.get_state()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


