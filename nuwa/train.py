"""Stage 5, train: one backbone on one dataset with one variant and seed.

Every variant gets the same budget (optimiser steps), split, seed and batch size, and, for one
(dataset, backbone, seed), the same initial weights and the same original training windows in
the same order: augmented variants replace a share (``mix_fraction``) of each batch's positions
by augmented copies of the same windows (the paired design, :mod:`nuwa.loader`). Every random
stream of a cell is seeded from (seed, dataset, backbone), never the variant. Validation, on a
fixed subset spread over the whole validation split, picks the checkpoint; the test split is
read once, at the end, by evaluation. A non-finite training or validation loss stops the cell
(:class:`nuwa.errors.DivergedError`). Checkpoints are written periodically so that a killed job
resumes where it stopped, and ends with the same numbers as an uninterrupted run: a checkpoint
holds the model, optimiser, scheduler, the batch rows' generators, the scheduled-sampling
generator, every RNG that training could touch (torch, CUDA, numpy, Python's), the history and
the best model so far.

A field with never-observed pixels (``series.observed``, e.g. the sea of a land-only gridded
product) leaves them out of the training and validation losses (the MSE over observed pixels,
:func:`nuwa.methods.squared_error_mean`) and of every test metric; the model still sees their
fill in its inputs. Without a mask every byte is as before.

The super-resolution task (``input_factor`` > 1, :mod:`nuwa.superres`) trains the same way on
block-averaged inputs, with a backbone that outputs full-resolution frames.

Across processes (torchrun, :mod:`nuwa.distributed`) the run is the single-process run up to
floating-point rounding: the same global batches, split across ranks, with averaged gradients.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nuwa import distributed
from nuwa.backbones import create_backbone
from nuwa.evaluate import evaluate_forecaster
from nuwa.errors import DivergedError
from nuwa.io import DataFileError, check_state_dict, load_checkpoint, save_checkpoint
from nuwa.loader import BatchStream, PairedRows, TrainingPool
from nuwa.methods import training_loss
from nuwa.progress import progress
from nuwa.seeding import seed_torch, torch_generator
from nuwa.superres import check_input_factor, coarsen
from nuwa.windows import SeriesData, WindowDataset, select_dataset, training_subset


# keys of a backbone entry that are not hyperparameters of the network
PIPELINE_KEYS = ("kind", "init_from_upstream", "gpus")


def build_model(backbone_config: dict, dataset_config: dict, channels: int, input_factor: int = 1) -> torch.nn.Module:
    """The backbone of a cell. ``input_factor`` > 1 (the super-resolution task, :mod:`nuwa.superres`):
    built for inputs of ``height / input_factor`` x ``width / input_factor`` with ``scale =
    input_factor``, so that it outputs frames of the dataset's full ``height`` x ``width``."""
    height, width = dataset_config["height"], dataset_config["width"]
    input_factor = check_input_factor(input_factor, height, width)
    overrides = {k: v for k, v in backbone_config.items() if k not in PIPELINE_KEYS}
    return create_backbone(backbone_config["kind"],
                           in_shape=(dataset_config["input_frames"], channels, height // input_factor,
                                     width // input_factor),
                           out_frames=dataset_config["output_frames"], scale=input_factor, **overrides)


def validation_windows(count: int, budget: int) -> np.ndarray:
    """Positions (into the validation windows, ascending) of the ``budget`` windows scored:
    spread evenly over the whole split (``linspace`` over the positions, rounded, unique), first
    and last included; all of them when there are no more than ``budget``. The same subset for
    every variant and seed."""
    if count <= budget:
        return np.arange(count, dtype=np.int64)
    if budget <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.rint(np.linspace(0, count - 1, budget)).astype(np.int64))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: WindowDataset, batch_size: int, max_batches: int,
                    device: torch.device | None = None, input_factor: int = 1) -> float:
    """Mean squared error over :func:`validation_windows` (``max_batches`` x ``batch_size`` of them);
    the model is fed the inputs coarsened by ``input_factor`` (:func:`nuwa.superres.coarsen`) and
    scored against the full-resolution targets. A field with never-observed pixels
    (``val.series.observed``): over the observed pixels only."""
    device = device or torch.device("cpu")
    model.eval()
    total, count = 0.0, 0
    observed = observed_tensor(val.series, device)
    observed_count = 0 if observed is None else int(np.count_nonzero(val.series.observed))
    chosen = validation_windows(len(val), max_batches * batch_size)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val, chosen.tolist()), batch_size=batch_size,
                                         shuffle=False)
    for _, inputs, targets in loader:
        inputs = coarsen(inputs, input_factor)  # factor 1: the inputs themselves
        if observed is None:
            total += float(torch.sum((model(inputs.to(device)) - targets.to(device)) ** 2))
            count += targets.numel()
        else:
            squared = (model(inputs.to(device)) - targets.to(device)) ** 2
            total += float(torch.sum(squared[..., observed]))  # (B, T, C, n): the observed pixels
            count += targets[..., 0, 0].numel() * observed_count
    model.train()
    return total / max(count, 1)


def observed_tensor(series: SeriesData, device: torch.device) -> torch.Tensor | None:
    """The series' observed-pixel mask as a bool (H, W) tensor on ``device``; None: every pixel observed."""
    return None if series.observed is None else torch.as_tensor(np.asarray(series.observed, dtype=bool), device=device)


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

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def model_payload(model: torch.nn.Module, backbone_config: dict, dataset: str, variant: str, seed: int,
                  input_factor: int = 1) -> dict:
    """What ``model.pt`` holds: the weights, the backbone entry they were built from, and the cell.
    A super-resolution model (``input_factor`` > 1) also holds ``input_factor``, which
    :func:`build_model` needs to rebuild it; a forecasting model's file is as before."""
    payload = {"state_dict": model.state_dict(), "backbone": dict(backbone_config), "dataset": dataset,
               "variant": variant, "seed": seed}
    if input_factor != 1:
        payload["input_factor"] = int(input_factor)
    return payload


def train_cell(series: SeriesData, *, dataset_name: str, dataset_config: dict, backbone_name: str,
               backbone_config: dict, variant: str, train_config: dict, seed: int,
               bank_inputs=None, bank_sources: np.ndarray | None = None, bank_copies: np.ndarray | None = None,
               mix_fraction: float = 0.0, mixup_alpha: float | None = None,
               checkpoint_path: str | Path | None = None, upstream: dict | None = None,
               upstream_source: str | Path | None = None, context: distributed.Context = distributed.SINGLE,
               fss_scales: tuple[int, ...] = (), input_factor: int = 1, train_percent: int = 100):
    """Train and evaluate one cell. Returns (model, history DataFrame, metrics dict, examples dict,
    losses Dataset): ``losses`` holds the test mse and mae of every test window at every lead
    (:func:`nuwa.evaluate.losses_dataset`), what :mod:`nuwa.compare` draws intervals from.

    ``bank_inputs``: the bank's augmented windows in physical units, read per batch (see
    :class:`nuwa.loader.TrainingPool`): the bank file's rows (:class:`nuwa.io.NetCDFRows`) or an
    array; ``bank_sources`` and ``bank_copies``: their source window starts and copy numbers (the
    bank file's ``source_index`` and ``copy``, in memory). ``mix_fraction``: the expected share of
    each batch's positions taken from the bank (:class:`nuwa.loader.PairedRows`); 0 or an empty
    bank: the original windows alone (Ori's batches). ``mixup_alpha``: those positions are instead
    mixup of two original windows, ``λ ~ Beta(α, α)`` (the reference augmentation; no bank). The
    variant's name seeds nothing: every
    variant of one (dataset, backbone, seed) starts from the same weights and draws the same
    original windows.

    ``input_factor`` > 1: the super-resolution task (:mod:`nuwa.superres`, the paper's Table 2).
    The backbone is built with ``scale = input_factor`` (:func:`build_model`) and trained,
    validated and tested on inputs block-averaged ``input_factor`` x ``input_factor`` (the bank's
    rows too, as they are read: :class:`nuwa.loader.TrainingPool`) against full-resolution
    targets; metrics, losses and examples' truths and predictions are at full resolution, the
    examples' inputs coarse. 1 (the default): forecasting, every byte as before.

    ``train_percent`` < 100: data scarcity; the cell trains on the training windows that
    :func:`nuwa.windows.training_subset` keeps (``train_config['subset']``), and its bank must
    have been built from the same windows (``nuwa bank --train-percent``).

    A non-finite training or validation loss raises :class:`nuwa.errors.DivergedError` (on every
    process) naming the cell and the step.

    With several processes (``context``), every process returns the model and history; the
    metrics, examples and losses are rank 0's alone (None elsewhere), and only rank 0 writes the
    checkpoint.
    """
    names = (dataset_name, backbone_name)  # never the variant: the paired design
    cell = f"{dataset_name}/{backbone_name}/{variant}/seed{seed}"
    batch_size = train_config["batch_size"]
    my_rows = distributed.shard_rows(batch_size, context)  # checks that the batch splits evenly
    input_factor = check_input_factor(input_factor, *series.field.shape[-2:], where=f"dataset {dataset_name!r}: ")
    device = context.device
    train = select_dataset(series, dataset_config, "train")
    if train_percent != 100:  # data scarcity: the windows train_config['subset'] keeps (its bank has those alone)
        train = training_subset(train, train_percent, train_config["subset"], seed, dataset_name)
    val = select_dataset(series, dataset_config, "val")
    test = select_dataset(series, dataset_config, "test")
    for split, windows in (("train", train), ("val", val), ("test", test)):
        if len(windows) == 0:
            raise ValueError(f"dataset {dataset_name!r}: no {split} window fits in the {split} split")
    pool = TrainingPool(train, bank_inputs, bank_sources, input_factor=input_factor)
    # the pool's rows come from generators of their own, so that reading a batch ahead moves no other draw
    rows = PairedRows.seeded(pool, seed, *names, bank_copies=bank_copies, mix_fraction=mix_fraction,
                             mixup_alpha=mixup_alpha)
    seed_torch(seed, "train-init", *names)  # initial weights (and, on rank 0, dropout)
    model = build_model(backbone_config, dataset_config, series.field.shape[1], input_factor)
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
        # a checkpoint without the key was written by forecasting (factor 1), before tasks existed
        if int(saved.get("input_factor", 1)) != input_factor:
            raise DataFileError(f"{checkpoint_path}: a checkpoint of input_factor {int(saved.get('input_factor', 1))}, "
                                f"this cell has input_factor {input_factor} (another task); delete it to start the "
                                "cell afresh")
        check_state_dict(checkpoint_path, saved["model"], model.state_dict(), f"backbone {backbone_name!r}")
        if "rows" not in saved or "rng" not in saved:
            raise DataFileError(f"{checkpoint_path}: a checkpoint written before the paired batch design (no state "
                                "of the batch rows' generators); it cannot resume to an uninterrupted run's result: "
                                "delete checkpoint.pt to start the cell afresh")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        rows.set_state(saved["rows"])
        # one entry per rank of the run that wrote it
        set_rng_state(saved["rng"][context.rank if context.rank < len(saved["rng"]) else 0], device)
        state = saved["state"]
        if context.is_main:
            print(f"resuming from {checkpoint_path} at step {state['step']} of {steps}"
                  f" (checkpoint written by {saved.get('world_size', 1)} process(es))", flush=True)
    elif context.rank > 0:
        # the model is initialised (identically on every rank); dropout draws differ between ranks
        seed_torch(seed, "train-init", *names, f"rank{context.rank}")
    network = distributed.wrap(model, context)  # DistributedDataParallel across processes
    started = time.perf_counter() - state["seconds"]
    network.train()
    bar = progress(total=steps, desc=f"train {dataset_name}/{backbone_name}/{variant}", unit="step") \
        if context.is_main else _NoBar()
    bar.update(state["step"])
    # across processes, each computes the loss of its rows of the global batch (random draws are
    # still made for the whole batch); DDP's average of the gradients is the whole batch's gradient
    share = {"rows": my_rows, "batch": batch_size} if context.distributed else {}
    # never-observed pixels (a gridded field's sea, say) are left out of the loss; no mask: as before
    observed = observed_tensor(series, device)
    if observed is not None:
        share["observed"] = observed
    # the batch of step k + 1 is read (and sent to the device) while step k runs
    try:  # the bar ends its line even when the cell stops (an error is then printed on a line of its own)
        with BatchStream(pool, rows, batch_size, my_rows, device) as batches:
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
                # the mean over ranks: every rank sees the same number, and stops together
                row = {"step": step, "train_loss": distributed.mean_over_ranks(loss.item(), context),
                       "learning_rate": scheduler.get_last_lr()[0], "val_loss": float("nan")}
                check_finite_loss(row["train_loss"], "training", cell, step)
                if step % train_config["eval_every"] == 0 or step == steps:
                    # rank 0 validates on the validation subset while the others wait for its result
                    loss_here = validation_loss(model, val, batch_size, train_config["val_batches"], device,
                                                input_factor) \
                        if context.is_main else 0.0
                    row["val_loss"] = distributed.from_main(loss_here, context)
                    check_finite_loss(row["val_loss"], "validation", cell, step)
                    if row["val_loss"] < state["best_val"]:
                        state["best_val"], state["best_step"] = row["val_loss"], step
                        if context.is_main:
                            state["best_state"] = copy.deepcopy(model.state_dict())
                row["seconds"] = time.perf_counter() - started
                state["history"].append(row)
                state["seconds"] = row["seconds"]
                # the bar shows the latest losses (and so does each line of a log file)
                bar.set_postfix({"loss": f"{row['train_loss']:.4g}",
                                 **({"best_val": f"{state['best_val']:.4g}"} if state["best_val"] < float("inf")
                                    else {})}, refresh=False)
                bar.update(1)
                if checkpoint_path and step % train_config["checkpoint_every"] == 0 and step < steps:
                    rng = distributed.gather(rng_state(device), context)
                    if context.is_main:
                        save_checkpoint({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                         "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                                         "rows": batches.rows_state(),
                                         "rng": rng, "world_size": context.world_size, "state": state,
                                         # a forecasting cell's checkpoint as before (no key: factor 1)
                                         **({"input_factor": input_factor} if input_factor != 1 else {})},
                                        checkpoint_path)
    finally:
        bar.close()
    if state["best_step"] == 0:  # every validation loss is finite and below inf: cannot happen silently
        raise DivergedError(f"train {cell}: no validation step picked a model after {state['step']} step(s); "
                            "nothing written")
    history = pd.DataFrame(state["history"])
    if not context.is_main:
        return model, history, None, None, None
    model.load_state_dict(state["best_state"])
    model.eval()
    metrics, examples, losses = evaluate_forecaster(
        lambda inputs: model(inputs.to(device)).cpu(), test, dataset_config["csi_thresholds"], batch_size=32,
        example_count=train_config["example_samples"],
        attrs={"dataset": dataset_name, "backbone": backbone_name, "variant": variant, "seed": seed,
               "window_stride": int(dataset_config["window_stride"])}, fss_scales=fss_scales,
        input_factor=input_factor)
    metrics.update({
        "best_step": state["best_step"], "best_val_loss": state["best_val"], "steps": steps, "seed": seed,
        "mix_fraction": rows.mix_fraction, "train_pool": len(pool), "bank_samples": len(pool) - len(train),
        "train_windows": len(train),
        "input_factor": input_factor,
        **({"mixup_alpha": float(mixup_alpha)} if mixup_alpha is not None else {}),
        "parameters": sum(p.numel() for p in model.parameters()),
        "upstream_tensors_loaded": len(transferred),
        "world_size": context.world_size, "backend": context.backend, "device": device.type,
    })
    return model, history, metrics, examples, losses


def check_finite_loss(value: float, stage: str, cell: str, step: int) -> None:
    """A NaN or infinite loss stops training: a diverged run would otherwise pick (or keep) weights
    no finite validation loss ever chose, and report them as a result."""
    if not math.isfinite(value):
        raise DivergedError(f"train {cell}: {stage} loss is {value} at step {step} (diverged); nothing written")
