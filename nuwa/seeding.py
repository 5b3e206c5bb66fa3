"""Seeds: one integer in params.yaml fixes every random draw of every stage."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a torch draw is made: numpy-only stages never import it
    import torch


def stable_id(*names: str) -> int:
    """A stable 32-bit id for names (Python's hash() changes between processes)."""
    return zlib.crc32("/".join(names).encode())


def numpy_rng(seed: int, *names: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), stable_id(*names)])


def torch_generator(seed: int, *names: str) -> torch.Generator:
    import torch

    generator = torch.Generator()
    generator.manual_seed((int(seed) << 32) ^ stable_id(*names))
    return generator


def seed_torch(seed: int, *names: str) -> None:
    """Seed torch's global RNG (weight initialisation) deterministically per job."""
    import torch

    torch.manual_seed((int(seed) << 32) ^ stable_id(*names))
