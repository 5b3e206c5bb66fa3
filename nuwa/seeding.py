"""Seeds: a run's seed, plus the names of what is drawn, fix every random draw of every stage.

Every generator is seeded through :func:`derive_seed`, which hashes the seed and the names with
numpy's ``SeedSequence``: each bit of the seed reaches each bit of the result. (Before, torch was
seeded with ``(seed << 32) ^ crc32(names)``; torch's CPU generator keeps only the low 32 bits of
a seed, so every seed gave the same weights and batches.)

The names say what a stream is for, and leave out what must not change it: the training streams
of one (dataset, backbone, seed) carry no variant name, so that every variant starts from the
same weights and draws the same original windows (the paired design, see :mod:`nuwa.loader`).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch only where a torch draw is made: numpy-only stages never import it
    import torch


def stable_id(*names: str | int) -> int:
    """A stable 32-bit id for names (Python's hash() changes between processes)."""
    return zlib.crc32("/".join(map(str, names)).encode())


def seed_sequence(seed: int, *names: str | int) -> np.random.SeedSequence:
    """The SeedSequence of (seed, names): every name, and every bit of the seed, enters it."""
    if int(seed) < 0:
        raise ValueError(f"seed {seed!r} is negative (allowed: an integer >= 0)")
    return np.random.SeedSequence([int(seed), *(stable_id(name) for name in names)])


def derive_seed(seed: int, *names: str | int) -> int:
    """A 64-bit seed for (seed, names), all of whose bits depend on all of the inputs (torch's
    CPU generator keeps the low 32 of them, CUDA's all 64)."""
    return int(seed_sequence(seed, *names).generate_state(1, np.uint64)[0])


def numpy_rng(seed: int, *names: str | int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(seed, *names))


def torch_generator(seed: int, *names: str | int) -> torch.Generator:
    import torch

    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *names))
    return generator


def seed_torch(seed: int, *names: str | int) -> None:
    """Seed torch's global RNG (weight initialisation, dropout) deterministically per job."""
    import torch

    torch.manual_seed(derive_seed(seed, *names))
