"""Stage 3, saliency: attention of the upstream ViT -> causal / environmental patches.

For layer attention ``α[h, i, j]`` (rows sum to one), the importance of patch ``j`` is its
column mean ``I_j = 1/(N_heads·L) Σ_h Σ_i α[h, i, j]``, averaged over the chosen layers, then
min-max normalised per step. The saliency stage writes this importance only: the ratio ``ρ``
belongs to the bank variant (``bank.environment_ratio``, a variant may override it), and the
bank stage turns the importance into its mask with :func:`causal_mask`: the ``⌊ρ·L⌋`` least
important patches of each step are environmental (``causal = 0``), the rest causal. Batched;
each row keeps its window's ``source_index``, so a shuffled loader cannot pair an importance
with another sample. A non-finite raw importance (a diverged or corrupt upstream model) is an
error (:class:`nuwa.errors.DivergedError`), never normalised into zeros.

The importance comes from :meth:`nuwa.upstream.UpstreamViT.column_importance`, which forms each
chosen layer's weights once, reduces them at once, and stops after the last chosen layer's
weights: the pass costs no more than a forward (``nuwa bench saliency``).

The masks from importances (``causal_mask``) need numpy only: torch is imported where a tensor
is made, so the bank stage, which reads masks, starts without torch and timm.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from nuwa.errors import DivergedError
from nuwa.progress import progress

if TYPE_CHECKING:
    import torch

    from nuwa.upstream import UpstreamViT
    from nuwa.windows import WindowDataset


def column_importance(attention: torch.Tensor) -> torch.Tensor:
    """(..., heads, L_query, L_key) -> (..., L_key): mean over heads and queries."""
    return attention.mean(dim=(-3, -2))


def normalise_per_step(importance: torch.Tensor) -> torch.Tensor:
    """Min-max over the patch axis (last); a step with equal importances maps to zeros."""
    import torch

    low, high = torch.aminmax(importance, dim=-1, keepdim=True)
    # where all are equal, 0 / 0 is NaN: those steps are zeros (few kernels: on a GPU this pass
    # is bound by launches, not arithmetic; a finite span gives no other NaN or infinity)
    return (importance - low).div_(high.sub_(low)).nan_to_num_(nan=0.0)


def environment_count(num_patches: int, environment_ratio: float) -> int:
    """``⌊ρ·L⌋`` for the decimal ``ρ`` the user wrote: exact, not on a float product.

    ``0.29 * 100`` is ``28.999999999999996`` in binary floating point, so ``floor`` of the float
    product gives 28; the ratio is taken as the decimal of its shortest repr (``0.29`` exactly),
    whose product with ``L`` is 29.
    """
    return int((Fraction(repr(float(environment_ratio))) * int(num_patches)) // 1)


def causal_mask(importance: np.ndarray | torch.Tensor, environment_ratio: float) -> np.ndarray | torch.Tensor:
    """1 = causal, 0 = environmental: the ⌊ρ·L⌋ smallest of each step (over the last axis).

    Ties are broken by patch order (stable sort), so the mask is a function of the values. A
    torch tensor gets an int8 tensor on its own device (sorted there: no copy to the host first).
    """
    num_patches = importance.shape[-1]
    count = environment_count(num_patches, environment_ratio)
    if not isinstance(importance, np.ndarray):
        import torch

        order = torch.argsort(importance, dim=-1, stable=True)
        mask = torch.ones(importance.shape, dtype=torch.int8, device=importance.device)
        return mask.scatter_(-1, order[..., :count], 0)
    order = np.argsort(importance, axis=-1, kind="stable")
    mask = np.ones(importance.shape, dtype=np.int8)
    np.put_along_axis(mask, order[..., :count], 0, axis=-1)
    return mask


def compute_importance(model: UpstreamViT, windows: WindowDataset, layers: list[int], batch_size: int,
                       dataset_name: str, shuffle: bool = False,
                       generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Importance (N, T, Py, Px) for every window, rows ordered by source index.

    ``shuffle`` exists to prove the alignment: results are placed by each batch's own indices.
    Each batch's raw importance is checked before it is normalised: a NaN or infinity (an
    upstream model that diverged, or NaN weights) raises :class:`DivergedError` naming the
    dataset and the first such window's source index. Only a finite step whose patches are all
    equally important maps to zeros.
    """
    import torch

    loader = torch.utils.data.DataLoader(windows, batch_size=batch_size, shuffle=shuffle, generator=generator)
    position = {int(start): row for row, start in enumerate(windows.starts)}
    frames = windows.input_frames
    gy, gx = model.grid
    importance = np.full((len(windows), frames, gy, gx), np.nan, dtype=np.float32)
    for starts, inputs, _ in progress(loader, desc="saliency", unit="batch"):
        scores = model.column_importance(inputs, layers)  # (B*T, L), no (B*T, heads, L, L) kept
        finite = torch.isfinite(scores).reshape(len(starts), -1).all(dim=1)
        if not bool(finite.all()):
            bad = int(torch.nonzero(~finite)[0, 0])
            values = scores.reshape(len(starts), -1)[bad]
            kind = "nan" if bool(torch.isnan(values).any()) else "infinite"
            raise DivergedError(f"saliency {dataset_name}: attention importance is {kind} for the window at source "
                                f"index {int(starts[bad])} (upstream model diverged or its weights are not finite; "
                                "rerun the pretrain stage); nothing written")
        scores = normalise_per_step(scores).reshape(len(starts), frames, gy, gx)
        rows = [position[int(s)] for s in starts]
        importance[rows] = scores.numpy()
    if np.isnan(importance).any():
        raise RuntimeError("saliency: some windows received no importance (loader/index mismatch)")
    return np.asarray(windows.starts), importance


def saliency_dataset(source_index: np.ndarray, importance: np.ndarray, patch_size: int, layers: list[int],
                     depth: int, dataset_name: str) -> xr.Dataset:
    """The saliency file: ``importance`` only. Masks belong to the banks (each variant's ratio)."""
    _, frames, gy, gx = importance.shape
    for layer in layers:  # as nuwa.upstream.chosen_layers, without importing torch
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is not a block of the upstream ViT (depth {depth}; allowed: "
                             f"{-depth} to {depth - 1}, negative counting from the last)")
    coords = {
        "sample": ("sample", np.asarray(source_index, dtype=np.int64),
                   {"long_name": "source window: index of its first time step in the processed dataset"}),
        "step": ("step", np.arange(frames, dtype=np.int32), {"long_name": "input step within the window"}),
        "patch_y": ("patch_y", np.arange(gy, dtype=np.int32), {"long_name": "patch row", "units": "patch"}),
        "patch_x": ("patch_x", np.arange(gx, dtype=np.int32), {"long_name": "patch column", "units": "patch"}),
    }
    dims = ("sample", "step", "patch_y", "patch_x")
    return xr.Dataset(
        {
            "importance": (dims, importance.astype(np.float32),
                           {"long_name": "attention column importance, min-max normalised per step", "units": "1"}),
        },
        coords=coords,
        attrs={
            "title": f"nuwa saliency importance for {dataset_name}",
            "Conventions": "CF-1.10",
            "nuwa_dataset": dataset_name,
            "patch_size": int(patch_size),
            "layers": np.asarray(sorted({layer % depth for layer in layers}), dtype=np.int32),
            "split": "train",
        },
    )
