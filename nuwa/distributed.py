"""Data-parallel training: one process per GPU (or per CPU slot), launched by torchrun.

The workflow launches a cell that asks for N > 1 GPUs as::

    torchrun --standalone --nnodes 1 --nproc_per_node N -m nuwa train <the usual nuwa train options>

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each process; without them (or with
``WORLD_SIZE=1``) ``nuwa train`` is the ordinary single process. Semantics are those of one process:
every rank draws the same global batch (``train.batch_size`` samples, from the same seeded generator
in the same order) and trains on its contiguous ``batch_size / world_size`` rows of it;
DistributedDataParallel averages the gradients, so each optimiser step is the single-process step up
to floating-point rounding. Rank 0 alone validates, evaluates and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes, and its device."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = "none"  # "nccl", "gloo", or "none" for a single process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def environment_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by the number of processes {world_size} "
                         f"(torchrun --nproc_per_node / WORLD_SIZE): each process trains on an equal share of the "
                         f"global batch; choose a batch size that is a multiple of the GPU count")


def shard_rows(batch_size: int, context: Context) -> slice:
    """This process's contiguous rows of a global batch of ``batch_size`` samples."""
    check_batch_size(batch_size, context.world_size)
    share = batch_size // context.world_size
    return slice(context.rank * share, (context.rank + 1) * share)


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; or ``cpu`` / ``cuda``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {requested!r}: expected auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                         "start at most one process per GPU")
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> Context:
    """Join the process group when torchrun started several processes; else a single-process context."""
    world_size = environment_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world_size == 1:
        return Context(device=chosen)
    import torch.distributed as dist

    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    dist.init_process_group(backend=backend, device_id=chosen if chosen.type == "cuda" else None)
    return Context(world_size=world_size, rank=dist.get_rank(), local_rank=local_rank, backend=backend,
                   device=chosen)


def teardown(context: Context) -> None:
    if context.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: torch.nn.Module, context: Context) -> torch.nn.Module:
    """The module to train with: DistributedDataParallel around ``model`` across processes, else ``model``.

    Batch statistics would be per process and so depend on the world size: on GPUs BatchNorm
    becomes SyncBatchNorm (statistics of the global batch); on CPUs (gloo) SyncBatchNorm does not
    run, and a backbone with BatchNorm is refused.
    """
    if not context.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    batch_norms = [name for name, module in model.named_modules()
                   if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        if context.device.type != "cuda":
            raise ValueError(f"the backbone has BatchNorm layers ({batch_norms[0]}, ...), whose batch statistics "
                             "cannot be synchronised across CPU processes; train it in one process or on GPUs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def mean_over_ranks(value: float, context: Context) -> float:
    """The mean of a per-process number over the processes (itself in one process)."""
    if not context.distributed:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def from_main(value: float, context: Context) -> float:
    """Rank 0's ``value`` on every process (every process waits for rank 0 here)."""
    if not context.distributed:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def gather(obj, context: Context) -> list:
    """Every process's ``obj``, in rank order (a one-element list in one process)."""
    if not context.distributed:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
