"""How a backbone is trained, apart from what the network is (OpenSTL's methods/models split).

A backbone declares ``training_method`` (default ``"plain"``):

* ``plain``: ``loss = MSE(model(inputs), targets)``.
* ``scheduled_sampling`` (Bengio et al. 2015, as PredRNN/OpenSTL use it for ConvLSTM and
  E3D-LSTM): while training, each forecast step is fed the true previous frame with a
  probability ``eta`` that falls linearly from 1 to 0 over ``sampling_fraction`` of training,
  else the model's own previous prediction.
* ``reverse_scheduled_sampling`` (PredRNN-V2, Wang et al. 2022): in addition, each input step
  is fed the model's own prediction with a probability that falls from 0.5 to 0 (the encoder
  first learns to forecast, then to use its context), while the forecast part follows an
  exponential schedule from 0.5 towards 0.

Recurrent backbones accept ``forward(inputs, targets=None, true_frame_mask=None)``: the mask
has shape ``(B, T_in + T_out - 2)``; entry ``k`` says whether recurrent step ``k + 1`` is fed the
true frame (1) or the model's previous prediction (0). Without a mask (evaluation) they feed
true inputs and their own predictions: targets are never seen at test time.
A backbone may set ``auxiliary_loss`` (a scalar tensor) during a training forward, e.g.
PredRNN-V2's memory decoupling loss; it is added to the MSE.

A field with never-observed pixels (:class:`nuwa.windows.SeriesData`'s ``observed``) takes the
MSE over the observed pixels only (:func:`squared_error_mean`): what the fill holds there never
enters the loss.
"""

from __future__ import annotations

import math

import torch


def true_frame_mask(method: str, progress: float, batch: int, input_frames: int, output_frames: int,
                    generator: torch.Generator, sampling_fraction: float = 0.5) -> torch.Tensor | None:
    """(B, T_in + T_out - 2) float mask of true frames for the training step at ``progress`` in [0, 1]."""
    if method == "plain":
        return None
    steps = input_frames + output_frames - 2
    mask = torch.ones(batch, steps)
    forecast = slice(input_frames - 1, steps)
    if method == "scheduled_sampling":
        eta = max(0.0, 1.0 - progress / sampling_fraction)
        mask[:, forecast] = (torch.rand(batch, steps - input_frames + 1, generator=generator) < eta).float()
        return mask
    if method == "reverse_scheduled_sampling":
        # OpenSTL's reserve_schedule_sampling_exp, with training progress in place of iterations
        input_true = 0.5 + 0.5 * min(1.0, progress / sampling_fraction) if input_frames > 1 else 1.0
        forecast_true = 0.5 * math.exp(-5.0 * progress / sampling_fraction)
        if input_frames > 1:
            mask[:, : input_frames - 1] = (torch.rand(batch, input_frames - 1, generator=generator) < input_true).float()
        mask[:, forecast] = (torch.rand(batch, steps - input_frames + 1, generator=generator) < forecast_true).float()
        return mask
    raise ValueError(f"unknown training method {method!r} (allowed: plain, scheduled_sampling, "
                     "reverse_scheduled_sampling)")


def squared_error_mean(prediction: torch.Tensor, targets: torch.Tensor,
                       observed: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((prediction - targets) ** 2)`` over (B, T, C, H, W); ``observed`` (bool (H, W), on the
    same device): over the observed pixels only, i.e. the sum over them divided by B*T*C*n.
    None: exactly ``torch.mean`` of every value, as before masks existed."""
    squared = (prediction - targets) ** 2
    if observed is None:
        return torch.mean(squared)
    return torch.mean(squared[..., observed])  # (B, T, C, n): the observed pixels' values


def training_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, progress: float,
                  generator: torch.Generator, rows: slice | None = None, batch: int | None = None,
                  observed: torch.Tensor | None = None) -> torch.Tensor:
    """The loss of one training step.

    ``observed`` (bool (H, W) on the model's device, or None): the MSE over observed pixels only
    (:func:`squared_error_mean`); None: every pixel, the same bytes as before masks existed.

    Data parallel (:mod:`nuwa.distributed`): ``inputs`` and ``targets`` may be the rows ``rows`` of a
    global batch of ``batch`` samples, one process's share. Random draws are then made for the whole
    global batch, as one process makes them, and this share's rows kept, so that training does not
    depend on how the batch is split. ``model`` may be wrapped in DistributedDataParallel.
    """
    network = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    method = getattr(network, "training_method", "plain")
    if method == "plain":
        prediction = model(inputs)
    else:
        mask = true_frame_mask(method, progress, inputs.shape[0] if batch is None else batch, inputs.shape[1],
                               targets.shape[1], generator, getattr(network, "sampling_fraction", 0.5))
        if rows is not None:
            mask = mask[rows]
        prediction = model(inputs, targets=targets, true_frame_mask=mask)
    loss = squared_error_mean(prediction, targets, observed)
    auxiliary = getattr(network, "auxiliary_loss", None)
    if auxiliary is not None:
        loss = loss + auxiliary
    return loss
