"""Stage 5, train: one backbone on one dataset with one variant and seed.

Every variant gets the same budget (optimiser steps), split, seed and batch size; augmented
variants draw their batches from the original training windows plus the bank. Validation
picks the checkpoint; the test split is read once, at the end, by evaluation. Checkpoints
are written periodically so that a killed job resumes where it stopped, and ends with the
same numbers as an uninterrupted run: a checkpoint holds the model, optimiser, scheduler,
the batch generator (data order and scheduled-sampling draws), every RNG that training could
touch (torch, CUDA, numpy, Python's), the history and the best model so far.

Across processes (torchrun, :mod:`nuwa.distributed`) the run is the single-process run up to
floating-point rounding: the same global batches, split across ranks, with averaged gradients.
"""

from __future__ import annotations

import copy
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nuwa import distributed
from nuwa.backbones import create_backbone
from nuwa.evaluate import evaluate_forecaster
from nuwa.io import DataFileError, check_state_dict, load_checkpoint, save_checkpoint
from nuwa.methods import training_loss
from nuwa.progress import progress
from nuwa.seeding import seed_torch, torch_generator
from nuwa.windows import SeriesData, WindowDataset, select_dataset


# keys of a backbone entry that are not hyperparameters of the network
PIPELINE_KEYS = ("kind", "init_from_upstream", "gpus")


def build_model(backbone_config: dict, dataset_config: dict, channels: int) -> torch.nn.Module:
    overrides = {k: v for k, v in backbone_config.items() if k not in PIPELINE_KEYS}
    return create_backbone(backbone_config["kind"],
                           in_shape=(dataset_config["input_frames"], channels, dataset_config["height"],
                                     dataset_config["width"]),
                           out_frames=dataset_config["output_frames"], **overrides)


class TrainingPool:
    """Original training windows plus (optionally) bank samples, as one indexable pool.

    Rows ``0..len(train)-1`` are the training windows, in ``train.starts`` order; the bank's rows
    follow. Nothing is copied up front: :meth:`batch` copies the inputs of its rows, the
    originals from the normalised series and the bank's from ``bank_inputs`` -- any object
    whose ``bank_inputs[indices]`` gives those rows (N, T, C, H, W) in physical units: the bank
    file, read row by row (:class:`nuwa.io.NetCDFRows`), or an array -- normalised per batch
    with the arithmetic of :meth:`SeriesData.normalise` (element by element: the same bits as
    normalising the whole bank at once).
    """

    def __init__(self, train: WindowDataset, bank_inputs=None, bank_sources: np.ndarray | None = None):
        self.train = train
        self.starts = np.asarray(train.starts)
        self.window_shape = (train.input_frames, *train.series.field.shape[1:])
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

    def batch(self, rows: torch.Tensor, pin_memory: bool = False,
              nogil: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the pool's ``rows``, normalised, in the order given.

        Row by row: a window is a contiguous block of the normalised series (one copy), a bank
        row one positioned read from the bank file into the batch, normalised there.
        ``pin_memory``: the batch is built in page-locked memory (for an asynchronous GPU copy).
        ``nogil``: the whole batch in one compiled call that holds no GIL
        (:mod:`nuwa.batchkernel`; the same bytes) where it can be (a contiguous bank file, or
        none, and float32 statistics), for a loader thread beside a Python-bound step.
        """
        rows = np.asarray(rows, dtype=np.int64)
        train, originals = self.train, len(self.starts)
        normalised = train.normalised.numpy()
        t_in, t_out = train.input_frames, train.output_frames
        input_batch = torch.empty((len(rows), *self.window_shape), dtype=torch.float32, pin_memory=pin_memory)
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

    def _compiled_batches(self) -> bool:
        """Whether :mod:`nuwa.batchkernel` can build this pool's batches."""
        series = self.train.series
        bank_ok = self.bank is None or (getattr(self.bank, "contiguous", False) and self.bank.dtype == np.float32)
        if not (bank_ok and series.mean.dtype == series.std.dtype == np.float32):
            return False
        from nuwa import batchkernel

        return batchkernel.available()


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


def next_batch(pool: TrainingPool, generator: torch.Generator, batch_size: int,
               my_rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: ``batch_size`` rows drawn uniformly (with replacement) from the pool;
    this process's ``my_rows`` of them read. ``generator`` draws the rows of every process alike."""
    rows = torch.randint(len(pool), (batch_size,), generator=generator)
    return pool.batch(rows[my_rows])


class BatchStream:
    """The batches of :func:`next_batch`, in the same order, each read while the step before runs.

    Rows are drawn here, in the training loop's thread, from ``generator`` (a stream of its own,
    so that drawing a batch one step early moves no other draw); a background thread reads the
    next batch from the pool while the current step runs. On a GPU that batch is built in
    page-locked memory, in one call that holds no GIL (:mod:`nuwa.batchkernel`: the step, bound
    by Python launching kernels, would otherwise trade the GIL with the loader's numpy calls),
    and copied on a side CUDA stream, which the step's stream waits for, so a step waits neither
    for the host's copies nor for the transfer (``nuwa bench loader``).
    :meth:`generator_state` is the generator's state before the first batch not yet handed out:
    a checkpoint saves it, and the resumed run draws that batch again. ``prefetch=False`` reads
    each batch when it is asked for (the serial loader). ``nogil`` chooses the batch builder
    (default: the compiled one exactly when reading ahead beside a GPU step).
    """

    def __init__(self, pool: TrainingPool, generator: torch.Generator, batch_size: int,
                 my_rows: slice = slice(None), device: torch.device | str = "cpu", prefetch: bool = True,
                 nogil: bool | None = None):
        self.pool, self.generator, self.batch_size, self.my_rows = pool, generator, batch_size, my_rows
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        # beside a GPU step (bound by Python launching kernels) the batch is built without the GIL
        self.nogil = (self.cuda and prefetch) if nogil is None else nogil
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="nuwa-batches") if prefetch else None
        self.pending = None  # (generator state before the draw, rows, the read in flight or None)

    def _request(self):
        state = self.generator.get_state()
        rows = torch.randint(len(self.pool), (self.batch_size,), generator=self.generator)[self.my_rows]
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

    def generator_state(self) -> torch.Tensor:
        return self.pending[0] if self.pending is not None else self.generator.get_state()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: WindowDataset, batch_size: int, max_batches: int,
                    device: torch.device | None = None) -> float:
    device = device or torch.device("cpu")
    model.eval()
    total, count = 0.0, 0
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False)
    for batch_number, (_, inputs, targets) in enumerate(loader):
        if batch_number >= max_batches:
            break
        total += float(torch.sum((model(inputs.to(device)) - targets.to(device)) ** 2))
        count += targets.numel()
    model.train()
    return total / max(count, 1)


def rng_state(device: torch.device) -> dict:
    """Every global RNG that a training step could draw from (tensors and plain containers only)."""
    key, position, has_gauss, gauss = np.random.get_state()[1:]
    state = {"torch": torch.get_rng_state(),
             "numpy": (torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
             "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        key, position, has_gauss, gauss = state["numpy"]
        np.random.set_state(("MT19937", key.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def train_cell(series: SeriesData, *, dataset_name: str, dataset_config: dict, backbone_name: str,
               backbone_config: dict, variant: str, train_config: dict, seed: int,
               bank_inputs=None, bank_sources: np.ndarray | None = None,
               checkpoint_path: str | Path | None = None, upstream: dict | None = None,
               upstream_source: str | Path | None = None, context: distributed.Context = distributed.SINGLE):
    """Train and evaluate one cell. Returns (model, history DataFrame, metrics dict, examples dict).

    ``bank_inputs``: the bank's augmented windows in physical units, read per batch (see
    :class:`TrainingPool`): the bank file's rows (:class:`nuwa.io.NetCDFRows`) or an array;
    ``bank_sources``: their source window starts (in memory).

    With several processes (``context``), every process returns the model and history; the
    metrics and examples are rank 0's alone (None elsewhere), and only rank 0 writes the checkpoint.
    """
    names = (dataset_name, backbone_name, variant)
    batch_size = train_config["batch_size"]
    my_rows = distributed.shard_rows(batch_size, context)  # checks that the batch splits evenly
    device = context.device
    seed_torch(seed, "train", *names)
    train = select_dataset(series, dataset_config, "train")
    val = select_dataset(series, dataset_config, "val")
    test = select_dataset(series, dataset_config, "test")
    for split, windows in (("train", train), ("val", val), ("test", test)):
        if len(windows) == 0:
            raise ValueError(f"dataset {dataset_name!r}: no {split} window fits in the {split} split")
    pool = TrainingPool(train, bank_inputs, bank_sources)
    model = build_model(backbone_config, dataset_config, series.field.shape[1])
    transferred = []
    if upstream is not None:
        if not hasattr(model, "load_upstream"):
            raise ValueError(f"backbones.{backbone_name}.init_from_upstream: backbone kind "
                             f"{backbone_config['kind']!r} cannot start from the upstream ViT's weights")
        try:
            transferred = model.load_upstream(upstream)
        except ValueError as exc:  # names the tensor and both shapes; add the file
            if upstream_source is None:
                raise
            raise DataFileError(f"{upstream_source}: {exc}") from None
    model.to(device)
    steps = train_config["steps"]
    optimiser = torch.optim.Adam(model.parameters(), lr=train_config["learning_rate"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=train_config["learning_rate"], total_steps=steps)
    # the pool's rows come from their own generator, so that reading a batch ahead moves no other draw
    row_generator = torch_generator(seed, "train-rows", *names)
    generator = torch_generator(seed, "train-batches", *names)  # scheduled sampling's draws
    state = {"step": 0, "history": [], "best_val": float("inf"), "best_step": 0,
             "best_state": copy.deepcopy(model.state_dict()), "seconds": 0.0}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        missing = [key for key in ("model", "optimiser", "scheduler", "generator", "state") if key not in saved]
        if missing:
            raise DataFileError(f"{checkpoint_path}: not a training checkpoint (missing {', '.join(missing)}); "
                                "delete it to start the cell afresh")
        check_state_dict(checkpoint_path, saved["model"], model.state_dict(), f"backbone {backbone_name!r}")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        if "row_generator" in saved:
            row_generator.set_state(saved["row_generator"])
        elif context.is_main:  # written before the rows had a generator of their own
            print(f"{checkpoint_path}: an older checkpoint without the batch rows' generator state; the batches "
                  "after resuming differ from an uninterrupted run's", flush=True)
        if "rng" in saved:  # one entry per rank of the run that wrote it
            set_rng_state(saved["rng"][context.rank if context.rank < len(saved["rng"]) else 0], device)
        else:  # checkpoints written before the other RNGs were saved
            torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        if context.is_main:
            print(f"resuming from {checkpoint_path} at step {state['step']} of {steps}"
                  f" (checkpoint written by {saved.get('world_size', 1)} process(es))", flush=True)
    elif context.rank > 0:
        # the model is initialised (identically on every rank); dropout draws differ between ranks
        seed_torch(seed, "train", *names, f"rank{context.rank}")
    network = distributed.wrap(model, context)  # DistributedDataParallel across processes
    started = time.perf_counter() - state["seconds"]
    network.train()
    bar = progress(total=steps, desc=f"train {'/'.join(names)}", unit="step") if context.is_main else _NoBar()
    bar.update(state["step"])
    # across processes, each computes the loss of its rows of the global batch (random draws are
    # still made for the whole batch); DDP's average of the gradients is the whole batch's gradient
    share = {"rows": my_rows, "batch": batch_size} if context.distributed else {}
    # the batch of step k + 1 is read (and sent to the device) while step k runs
    with BatchStream(pool, row_generator, batch_size, my_rows, device) as batches:
        while state["step"] < steps:
            inputs, targets = next(batches)
            loss = training_loss(network, inputs, targets, progress=state["step"] / steps, generator=generator,
                                 **share)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            state["step"] += 1
            step = state["step"]
            row = {"step": step, "train_loss": distributed.mean_over_ranks(loss.item(), context),
                   "learning_rate": scheduler.get_last_lr()[0], "val_loss": float("nan")}
            if step % train_config["eval_every"] == 0 or step == steps:
                # rank 0 validates on the whole validation set while the others wait for its result
                loss_here = validation_loss(model, val, batch_size, train_config["val_batches"], device) \
                    if context.is_main else 0.0
                row["val_loss"] = distributed.from_main(loss_here, context)
                if row["val_loss"] < state["best_val"]:
                    state["best_val"], state["best_step"] = row["val_loss"], step
                    if context.is_main:
                        state["best_state"] = copy.deepcopy(model.state_dict())
            row["seconds"] = time.perf_counter() - started
            state["history"].append(row)
            state["seconds"] = row["seconds"]
            bar.update(1)
            if checkpoint_path and step % train_config["checkpoint_every"] == 0 and step < steps:
                rng = distributed.gather(rng_state(device), context)
                if context.is_main:
                    save_checkpoint({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                     "row_generator": batches.generator_state(),
                                     "rng": rng, "world_size": context.world_size, "state": state},
                                    checkpoint_path)
    bar.close()
    history = pd.DataFrame(state["history"])
    if not context.is_main:
        return model, history, None, None
    model.load_state_dict(state["best_state"])
    model.eval()
    metrics, examples = evaluate_forecaster(lambda inputs: model(inputs.to(device)).cpu(), test,
                                            dataset_config["csi_thresholds"], batch_size=32,
                                            example_count=train_config["example_samples"])
    metrics.update({
        "best_step": state["best_step"], "best_val_loss": state["best_val"], "steps": steps, "seed": seed,
        "train_pool": len(pool), "bank_samples": len(pool) - len(train),
        "parameters": sum(p.numel() for p in model.parameters()),
        "upstream_tensors_loaded": len(transferred),
        "world_size": context.world_size, "backend": context.backend, "device": device.type,
    })
    return model, history, metrics, examples
