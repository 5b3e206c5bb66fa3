"""The long-range super-resolution task (the paper's Table 2): coarse inputs, full-resolution targets.

The inputs of a window are the processed field block-averaged by an integer ``input_factor``
(e.g. 128 x 128 -> 32 x 32 with factor 4); its targets stay at the field's full resolution, and
the backbone, built with ``scale = input_factor``, maps ``(B, T_in, C, H/f, W/f)`` to
``(B, T_out, C, H, W)``. Metrics, test losses and examples' truths and predictions are at full
resolution. ``input_factor`` 1 is the forecasting task: nothing is coarsened, every byte as before.

The block mean is affine-equivariant per channel: for a channel's normalisation
``z = (x - mean) / std``, the mean of ``z`` over a block is ``(mean of x over the block - mean) /
std``. Coarsening normalised values is therefore normalising coarsened physical values (equal up
to float32 rounding), so the training loader and evaluation coarsen the normalised windows they
already hold, and an example's coarse inputs, denormalised, are the coarsened physical field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Values = TypeVar("Values", np.ndarray, "torch.Tensor")


def check_input_factor(factor, height: int, width: int, where: str = "") -> int:
    """``factor`` as an int, checked: an integer >= 1 that divides ``height`` and ``width`` (the
    field's full-resolution frame size). ``where`` prefixes the error (e.g. the dataset)."""
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"{where}input_factor {factor!r}: expected an integer >= 1 (1: forecasting at full "
                         "resolution; f > 1: inputs block-averaged f x f, targets at full resolution)")
    factor = int(factor)
    if height % factor or width % factor:
        raise ValueError(f"{where}input_factor {factor} does not divide the frame size {height} x {width}: "
                         f"a block mean needs whole {factor} x {factor} blocks")
    return factor


def coarsen(values: Values, factor: int) -> Values:
    """The mean of every ``factor`` x ``factor`` block over the last two axes: ``(..., H, W) ->
    (..., H/factor, W/factor)``, for a numpy array or a torch tensor (the same type, dtype and
    device back). ``factor`` 1 gives ``values`` itself.

    The arithmetic is spelled out so that numpy and torch give the same bits: the block's
    ``factor**2`` values summed in float64 in one fixed order (row of the block, then column),
    divided by ``factor**2``, rounded once to the input's dtype. H or W not divisible by
    ``factor`` is a ValueError naming the shape and the factor.
    """
    if values.ndim < 2:
        raise ValueError(f"coarsen needs at least two axes (..., H, W); got shape {tuple(values.shape)}")
    height, width = (int(n) for n in values.shape[-2:])
    factor = check_input_factor(factor, height, width, where=f"values of shape {tuple(values.shape)}: ")
    if factor == 1:
        return values
    # linear, so it commutes with the per-channel affine normalisation (the module docstring):
    # callers may coarsen normalised or physical values alike
    is_array = isinstance(values, np.ndarray)
    if is_array:
        wide = values.astype(np.float64, copy=False)
    else:
        import torch

        wide = values.to(torch.float64)
    # factor >= 2 here: at least four entries per block, added left to right
    entries = [wide[..., row::factor, column::factor] for row in range(factor) for column in range(factor)]
    total = entries[0] + entries[1]
    for entry in entries[2:]:
        total += entry
    total = total / float(factor * factor)
    return total.astype(values.dtype, copy=False) if is_array else total.to(values.dtype)


def upsample_nearest(values: Values, factor: int) -> Values:
    """Each value of the last two axes repeated ``factor`` x ``factor``: ``(..., h, w) ->
    (..., h·factor, w·factor)``, the block-constant field whose :func:`coarsen` is ``values``
    (exactly). Numpy arrays and torch tensors; ``factor`` 1 gives ``values`` itself."""
    if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"upsampling factor {factor!r}: expected an integer >= 1")
    if factor == 1:
        return values
    if isinstance(values, np.ndarray):
        return np.repeat(np.repeat(values, factor, axis=-2), factor, axis=-1)
    return values.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
