"""Exceptions shared by light and heavy modules (importing this one imports nothing else)."""

from __future__ import annotations


class DataFileError(ValueError):
    """An input file is missing, unreadable or not what the stage expects."""
