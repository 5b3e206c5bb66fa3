"""Stage 2, pretrain: the upstream ViT learns, without labels, to reconstruct its input window.

Objectives: ``reconstruct`` (the paper: input window -> itself), ``masked`` (a random
``mask_ratio`` of patches per frame is hidden and only those are scored) and ``next_frame``
(frame t -> frame t+1). Only training-split windows are seen. A non-finite loss at any step
raises :class:`nuwa.errors.DivergedError` (the stage writes nothing: the CLI writes after the
core returns), so no diverged model reaches the saliency stage.
"""

from __future__ import annotations

import math
import time

import pandas as pd
import torch

from nuwa.errors import DivergedError
from nuwa.progress import progress
from nuwa.seeding import seed_torch, torch_generator
from nuwa.upstream import UpstreamViT, build_upstream
from nuwa.windows import SeriesData, select_dataset


def pretrain(series: SeriesData, dataset_name: str, dataset_config: dict, config: dict, seed: int):
    """Train the upstream ViT; returns (model, history DataFrame).

    Raises :class:`DivergedError` naming the dataset and the step when a loss is NaN or infinite.
    """
    seed_torch(seed, "pretrain", dataset_name)
    train = select_dataset(series, dataset_config, "train")
    if len(train) == 0:
        raise ValueError(f"dataset {dataset_name!r}: no training window fits in the training split")
    model = build_upstream(config, dataset_config, channels=series.field.shape[1])
    optimiser = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    generator = torch_generator(seed, "pretrain-batches", dataset_name)
    frames = dataset_config["input_frames"]
    rows = []
    started = time.perf_counter()
    model.train()
    for step in progress(range(1, config["steps"] + 1), desc=f"pretrain {dataset_name}", unit="step"):
        batch = torch.randint(len(train), (config["batch_size"],), generator=generator)
        starts = train.starts[batch.numpy()]
        index = torch.as_tensor(starts)[:, None] + torch.arange(frames + 1)[None, :]
        window = train.normalised[index]  # (B, T_in + 1, C, H, W): one extra frame for next_frame
        loss = objective_loss(model, window, config, generator)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergedError(f"pretrain {dataset_name}: loss is {value} at step {step} (diverged); "
                                "nothing written")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        rows.append({"step": step, "loss": value, "seconds": time.perf_counter() - started})
    model.eval()
    return model, pd.DataFrame(rows)


def objective_loss(model: UpstreamViT, window: torch.Tensor, config: dict, generator: torch.Generator) -> torch.Tensor:
    frames = window.shape[1] - 1
    inputs = window[:, :frames]
    objective = config["objective"]
    if objective == "reconstruct":
        return torch.mean((model(inputs) - inputs) ** 2)
    if objective == "next_frame":
        return torch.mean((model(inputs) - window[:, 1:]) ** 2)
    if objective == "masked":
        batch = inputs.shape[0]
        gy, gx = model.grid
        hidden = torch.rand(batch * frames, gy * gx, generator=generator) < config["mask_ratio"]
        output = model(inputs, patch_mask=hidden)
        p = model.patch_size
        pixel_mask = hidden.reshape(batch, frames, 1, gy, 1, gx, 1).expand(-1, -1, 1, -1, p, -1, p)
        pixel_mask = pixel_mask.reshape(batch, frames, 1, gy * p, gx * p).expand_as(inputs)
        squared = (output - inputs) ** 2
        return squared[pixel_mask].mean() if pixel_mask.any() else squared.mean() * 0
    raise ValueError(f"pretrain.objective: unknown objective {objective!r} (allowed: reconstruct, masked, next_frame)")


def checkpoint(model: UpstreamViT, dataset_name: str, config: dict) -> dict:
    """What model.pt holds: weights plus the plain-data config to rebuild the model."""
    return {"state_dict": model.state_dict(), "model_config": dict(model.config),
            "pretrain": dict(config), "dataset": dataset_name, "kind": "upstream_vit"}


def load_upstream(payload: dict, source: str, expected: dict | None = None, dataset: str | None = None) -> UpstreamViT:
    """The upstream ViT of a checkpoint (:func:`checkpoint`'s dict, read from ``source``).

    ``dataset``: the dataset it must have been pretrained on (its ``dataset`` key).
    ``expected``: ``model_config`` values the data needs (frames, channels, height, width,
    patch_size); a checkpoint built for others is refused naming the key and both values.
    A state dict that does not fit its own config is refused naming the first tensor and
    both shapes. Every error is a :class:`DataFileError` naming ``source``.
    """
    from nuwa.io import DataFileError, check_identity, check_state_dict

    if not isinstance(payload, dict) or payload.get("kind") != "upstream_vit":
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise DataFileError(f"{source}: not an upstream ViT checkpoint (kind={kind!r})")
    check_identity(source, payload, {"dataset": dataset}, "key",
                   f" (the upstream model of another dataset; nuwa pretrain --dataset {dataset} writes its own)")
    config = payload.get("model_config")
    if not isinstance(config, dict):
        raise DataFileError(f"{source}: upstream checkpoint has no model_config dict")
    for key, value in (expected or {}).items():
        if config.get(key) != value:
            raise DataFileError(f"{source}: upstream model was built for {key}={config.get(key)!r}, but this "
                                f"dataset needs {key}={value!r} (a model of another dataset or configuration?); "
                                "rerun the pretrain stage")
    try:
        model = UpstreamViT(**config)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataFileError(f"{source}: model_config {config} does not build an upstream ViT "
                            f"({type(exc).__name__}: {exc})") from None
    check_state_dict(source, payload.get("state_dict"), model.state_dict(), "upstream ViT")
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model
