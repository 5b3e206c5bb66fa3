"""Exceptions shared by light and heavy modules (importing this one imports nothing else)."""

from __future__ import annotations


class DataFileError(ValueError):
    """An input file is missing, unreadable or not what the stage expects."""


class DivergedError(ValueError):
    """A computation produced a non-finite value (a loss or score that diverged); nothing is written."""
