"""Progress bars that suit both a terminal and a rule's log file.

On a terminal: tqdm's bar, redrawn in place. In a log file (a Snakemake rule's, a Slurm job's):
tqdm redraws with carriage returns, which join every frame into one unreadable line; there each
redraw becomes a line of its own, at most one every 15 s, and the last at the end.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class _Lines:
    """A text stream for tqdm that turns each in-place redraw into a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip("\n")
        if line.strip():
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it"):
    # in a log file a bar redrawn many times a second is noise: a line every 15 s there
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=0.5 if interactive else 15.0,
                file=sys.stderr if interactive else _Lines(sys.stderr), dynamic_ncols=interactive,
                ascii=not interactive)
