"""Stage 5, train: one backbone on one dataset with one variant and seed.

Every variant gets the same budget (optimiser steps), split, seed and batch size; augmented
variants draw their batches from the original training windows plus the bank. Validation
picks the checkpoint; the test split is read once, at the end, by evaluation. Checkpoints
are written periodically so that a killed job resumes where it stopped.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nuwa.backbones import create_backbone
from nuwa.evaluate import evaluate_forecaster
from nuwa.io import load_checkpoint, save_checkpoint
from nuwa.methods import training_loss
from nuwa.progress import progress
from nuwa.seeding import seed_torch, torch_generator
from nuwa.windows import SeriesData, WindowDataset, select_dataset


# keys of a backbone entry that are not hyperparameters of the network
PIPELINE_KEYS = ("kind", "init_from_upstream")


def build_model(backbone_config: dict, dataset_config: dict, channels: int) -> torch.nn.Module:
    overrides = {k: v for k, v in backbone_config.items() if k not in PIPELINE_KEYS}
    return create_backbone(backbone_config["kind"],
                           in_shape=(dataset_config["input_frames"], channels, dataset_config["height"],
                                     dataset_config["width"]),
                           out_frames=dataset_config["output_frames"], **overrides)


class TrainingPool:
    """Original training windows plus (optionally) bank samples, as one indexable pool."""

    def __init__(self, train: WindowDataset, bank_inputs: np.ndarray | None = None, bank_sources: np.ndarray | None = None):
        self.train = train
        originals = torch.stack([train.normalised[s:s + train.input_frames] for s in train.starts]) \
            if len(train) else torch.zeros(0)
        sources = np.asarray(train.starts)
        if bank_inputs is not None and len(bank_inputs):
            unknown = np.setdiff1d(bank_sources, train.starts)
            if unknown.size:
                raise ValueError(f"bank holds {unknown.size} sample(s) whose source window is not a training window "
                                 f"(first: {int(unknown[0])}); the bank is stale or from another dataset")
            augmented = torch.from_numpy(train.series.normalise(bank_inputs.reshape(-1, *bank_inputs.shape[2:])))
            originals = torch.cat([originals, augmented.reshape(bank_inputs.shape)])
            sources = np.concatenate([sources, bank_sources])
        self.inputs = originals
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[rows], self.train.targets_normalised(self.sources[rows.numpy()])


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val: WindowDataset, batch_size: int, max_batches: int) -> float:
    model.eval()
    total, count = 0.0, 0
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False)
    for batch_number, (_, inputs, targets) in enumerate(loader):
        if batch_number >= max_batches:
            break
        total += float(torch.sum((model(inputs) - targets) ** 2))
        count += targets.numel()
    model.train()
    return total / max(count, 1)


def train_cell(series: SeriesData, *, dataset_name: str, dataset_config: dict, backbone_name: str,
               backbone_config: dict, variant: str, train_config: dict, seed: int,
               bank_inputs: np.ndarray | None = None, bank_sources: np.ndarray | None = None,
               checkpoint_path: str | Path | None = None, upstream: dict | None = None):
    """Train and evaluate one cell. Returns (model, history DataFrame, metrics dict, examples dict)."""
    names = (dataset_name, backbone_name, variant)
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
        transferred = model.load_upstream(upstream)
    steps = train_config["steps"]
    optimiser = torch.optim.Adam(model.parameters(), lr=train_config["learning_rate"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=train_config["learning_rate"], total_steps=steps)
    generator = torch_generator(seed, "train-batches", *names)
    state = {"step": 0, "history": [], "best_val": float("inf"), "best_step": 0,
             "best_state": copy.deepcopy(model.state_dict()), "seconds": 0.0}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.exists():
        saved = load_checkpoint(checkpoint_path)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
    started = time.perf_counter() - state["seconds"]
    model.train()
    bar = progress(total=steps, desc=f"train {'/'.join(names)}", unit="step")
    bar.update(state["step"])
    batch_size = train_config["batch_size"]
    while state["step"] < steps:
        rows = torch.randint(len(pool), (batch_size,), generator=generator)
        inputs, targets = pool.batch(rows)
        loss = training_loss(model, inputs, targets, progress=state["step"] / steps, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        state["step"] += 1
        step = state["step"]
        row = {"step": step, "train_loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0],
               "val_loss": float("nan")}
        if step % train_config["eval_every"] == 0 or step == steps:
            row["val_loss"] = validation_loss(model, val, batch_size, train_config["val_batches"])
            if row["val_loss"] < state["best_val"]:
                state["best_val"], state["best_step"] = row["val_loss"], step
                state["best_state"] = copy.deepcopy(model.state_dict())
        row["seconds"] = time.perf_counter() - started
        state["history"].append(row)
        state["seconds"] = row["seconds"]
        bar.update(1)
        if checkpoint_path and step % train_config["checkpoint_every"] == 0 and step < steps:
            save_checkpoint({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                             "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                             "torch_rng": torch.get_rng_state(), "state": state}, checkpoint_path)
    bar.close()
    model.load_state_dict(state["best_state"])
    model.eval()
    metrics, examples = evaluate_forecaster(model, test, dataset_config["csi_thresholds"], batch_size=32,
                                            example_count=train_config["example_samples"])
    metrics.update({
        "best_step": state["best_step"], "best_val_loss": state["best_val"], "steps": steps, "seed": seed,
        "train_pool": len(pool), "bank_samples": len(pool) - len(train),
        "parameters": sum(p.numel() for p in model.parameters()),
        "upstream_tensors_loaded": len(transferred),
    })
    return model, pd.DataFrame(state["history"]), metrics, examples
