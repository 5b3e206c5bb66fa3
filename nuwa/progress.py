"""Progress bars that suit both a terminal and a rule's log file."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it"):
    # in a log file a bar redrawn many times a second is noise: update rarely there
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=0.5 if interactive else 15.0,
                file=sys.stderr, dynamic_ncols=interactive, ascii=not interactive)
