"""Bounded globbing: the one way nuwa expands a source pattern (``data/era5/**/*.nc``).

Python's ``glob.glob(..., recursive=True)`` follows symbolic links to folders without
remembering where it has been: a link that points back up the tree (``a/loop -> ..``) makes a
``**`` pattern walk ``a/loop/loop/loop/...`` until the path is too long to resolve (two such
links: hundreds of thousands of paths to the same file, for minutes), so ingest, ``nuwa
datasets`` and Snakemake's DAG build hung. :func:`find_paths` matches like ``glob`` (``*``,
``?``, ``[...]`` within a name, ``**`` across folders, names starting with a dot only matched
by a pattern that starts with one) but walks each real folder once per pattern position (a
link back into the tree is not walked again: its files are listed once, under their shortest
path), and stops with a :class:`~nuwa.errors.DataFileError` naming the pattern past
:data:`MAX_MATCHES` matches or :data:`MAX_FOLDERS` folders read.

Standard library only: Snakemake's input functions (nuwa.stages) call it while building the DAG.
"""

from __future__ import annotations

import glob as _glob
import os
from collections import deque
from fnmatch import fnmatchcase

from nuwa.errors import DataFileError

MAX_MATCHES = 1_000_000  # a radar archive of 5-minute files holds ~105,000 per year
MAX_FOLDERS = 1_000_000


def has_magic(pattern: str) -> bool:
    return _glob.has_magic(str(pattern))


def find_paths(pattern: str, root: str | None = None, kind: str = "file", limit: int | None = None) -> list[str]:
    """Sorted paths matching ``pattern`` (``~`` expanded), each real folder walked once (names in it
    that link to one file are each listed: a radar archive's copies under several time stamps).

    ``root``: a folder the pattern is relative to, taken literally (its name may hold ``[`` or
    ``*``); the paths returned start with it. ``kind``: ``file`` (regular files, links to them
    included), ``dir`` or ``any``. ``limit``: the most matches accepted (default
    :data:`MAX_MATCHES`); past it, or past :data:`MAX_FOLDERS` folders read, a
    :class:`DataFileError` naming the pattern.
    """
    limit = MAX_MATCHES if limit is None else limit
    text = os.path.expanduser(str(pattern))
    shown = text if root is None else os.path.join(str(root), text)
    parts = text.split("/")
    head = parts[:1] if parts and parts[0] == "" else []  # an absolute pattern
    parts = [p for p in parts[len(head):] if p]
    if root is not None:
        start = str(root)
    else:
        first = next((i for i, part in enumerate(parts) if has_magic(part)), len(parts))
        start = "/".join(head + parts[:first]) if head or first else ""
        if head and not parts[:first]:
            start = "/"
        parts = parts[first:]
    if not parts:  # no magic: the path itself
        return [start] if start and _is(start, kind) else []
    walker = _Walk(parts, kind, limit, shown)
    walker.walk(start, frozenset(k for k in walker.closure({0}) if k < len(parts)))
    return sorted(walker.matches)


def _is(path: str, kind: str) -> bool:
    if kind == "file":
        return os.path.isfile(path)
    if kind == "dir":
        return os.path.isdir(path)
    return os.path.lexists(path)


class _Walk:
    """The walk of one pattern: folders with the set of pattern positions still to match."""

    def __init__(self, parts: list[str], kind: str, limit: int, shown: str):
        self.parts, self.kind, self.limit, self.shown = parts, kind, limit, shown
        self.matches: list[str] = []
        self.visited: set[tuple[str, frozenset]] = set()
        self.folders = 0

    def closure(self, positions) -> set[int]:
        """``**`` also matches no folder at all: a position at ``**`` includes the next one."""
        out, todo = set(), list(positions)
        while todo:
            k = todo.pop()
            if k in out:
                continue
            out.add(k)
            if k < len(self.parts) and self.parts[k] == "**":
                todo.append(k + 1)
        return out

    def _step(self, name: str, positions) -> set[int]:
        hidden = name.startswith(".")
        after = set()
        for k in positions:
            if k == len(self.parts):
                continue
            part = self.parts[k]
            if part == "**":
                if not hidden:
                    after.add(k)  # one more folder (or the final name) consumed by **
                continue
            if not has_magic(part):
                if name == part:
                    after.add(k + 1)
            elif (not hidden or part.startswith(".")) and fnmatchcase(name, part):
                after.add(k + 1)
        return self.closure(after)

    def walk(self, folder: str, positions: frozenset) -> None:
        end = len(self.parts)
        # breadth first (a queue, no recursion: any depth): a folder's shortest path is walked
        # first, and a link back into the tree later finds its real folder walked
        queue = deque([(folder, positions)])
        while queue:
            folder, positions = queue.popleft()
            key = (os.path.realpath(folder or "."), positions)
            if key in self.visited:  # this real folder was walked for these positions: a link loop or a repeat
                continue
            self.visited.add(key)
            self.folders += 1
            if self.folders > MAX_FOLDERS:
                raise DataFileError(f"{self.shown}: the pattern reaches more than {MAX_FOLDERS:,} folders; narrow it")
            try:
                with os.scandir(folder or ".") as entries:
                    listed = sorted(((entry.name, entry) for entry in entries), key=lambda pair: pair[0])
            except OSError:  # unreadable or vanished: skipped, as glob does
                continue
            for name, entry in listed:
                after = self._step(name, positions)
                if not after:
                    continue
                path = os.path.join(folder, name) if folder else name
                try:
                    is_dir = entry.is_dir()  # follows a link: linked folders are walked (once)
                except OSError:
                    is_dir = False
                if end in after and self._kind_ok(entry, is_dir):
                    self.matches.append(path)
                    if len(self.matches) > self.limit:
                        raise DataFileError(f"{self.shown}: the pattern matches more than {self.limit:,} paths; "
                                            "narrow it")
                deeper = frozenset(k for k in after if k < end)
                if is_dir and deeper:
                    queue.append((path, deeper))

    def _kind_ok(self, entry, is_dir: bool) -> bool:
        if self.kind == "dir":
            return is_dir
        if self.kind == "file":
            try:
                return entry.is_file()
            except OSError:
                return False
        return True
