"""Resource limits of one `nuwa <stage>` job: its declared memory, and a full disk.

Snakemake rules declare ``resources: mem_mb=N``; a local Snakemake run does not enforce it
(Slurm does, on a cluster). The rules pass it on as ``nuwa <stage> --mem-mb N --mem-rule RULE``
and :func:`watch_memory` enforces it: a watchdog thread samples the resident memory (RSS) of
the process and its children (torchrun ranks, dask workers) and, past the limit, stops the job
with a message naming the limit, the peak and the rule. Resident memory, not address space:
torch reserves far more virtual memory than it uses, so ``RLIMIT_AS`` would refuse sound jobs.
DVC stages pass no limit (DVC has no resources); the check is then off.

Writes that fail for lack of space (a full disk, a quota, a file size limit) are reported by
:func:`space_problem` / :mod:`nuwa.io` as such, naming the file.
"""

from __future__ import annotations

import _thread
import errno
import os
import resource
import threading
from pathlib import Path

SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
LOW_SPACE_BYTES = 1 << 20  # a filesystem with less than this free counts as full


FILE_SIZE_SIGNALS = 0  # SIGXFSZ received by this process (see install_file_size_handler)


def _note_file_size_signal(signum, frame) -> None:
    global FILE_SIZE_SIGNALS
    FILE_SIZE_SIGNALS += 1


def install_file_size_handler() -> None:
    """Past a file size limit (``ulimit -f``), the kernel sends SIGXFSZ, whose default action
    kills the process without a word. With this handler the write fails with EFBIG instead
    (reported by the writer) and the signal is counted: C writers (HDF5, torch's zip writer)
    lose the errno, and the count tells :func:`space_problem` why their write failed."""
    import signal

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, _note_file_size_signal)


def ignore_file_size_signal() -> None:
    """SIGXFSZ ignored from now on: Python resets a handler of its own to the default action
    when it shuts down, and a C library flushing a file at exit (HDF5) would then die of it."""
    import signal

    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def space_problem(exc: BaseException, path: str | Path | None = None) -> str | None:
    """Why a write failed for lack of space, or None if it did not (as far as can be told).

    An ``OSError`` carries its errno. Libraries that write through C (HDF5/netCDF, torch's zip
    writer) raise a bare ``RuntimeError`` instead; for those, the file having reached the
    process's file size limit, or its filesystem being (nearly) full, tells.
    """
    code = getattr(exc, "errno", None)
    if code == errno.EFBIG:
        return "file size limit reached (EFBIG: the file would exceed the limit of `ulimit -f`/RLIMIT_FSIZE)"
    if code == errno.ENOSPC:
        return "no space left on the device (ENOSPC: the disk is full)"
    if code in SPACE_ERRNOS:
        return "disk quota exceeded (EDQUOT)"
    if isinstance(exc, OSError) and code is not None:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if FILE_SIZE_SIGNALS and limit != resource.RLIM_INFINITY:
        return f"file size limit reached (a write went past the limit of {limit} bytes of `ulimit -f`/RLIMIT_FSIZE)"
    if path is None:
        return None
    path = Path(path)
    try:
        stats = os.statvfs(path.parent if path.parent.exists() else ".")
        free = (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) * stats.f_frsize
        if free < LOW_SPACE_BYTES:
            return f"no space left on the device (the disk is full: {free} bytes free)"
    except OSError:
        return None
    return None


def tree_rss_bytes(process) -> int:
    """Resident memory of a psutil process and all its descendants (processes that end meanwhile count 0)."""
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


class MemoryLimitExceeded(KeyboardInterrupt):
    """The watchdog's interrupt, raised again where an output would be published: a library's
    clean-up may have swallowed the first one and let the stage run on to its end."""


_ACTIVE_WATCH: MemoryWatch | None = None  # the job's watchdog, while it runs


def refuse_output_over_memory_limit(path: str | Path) -> None:
    """Raise :class:`MemoryLimitExceeded` if this job went over its declared memory: called by
    :func:`nuwa.io.atomic_path` before it moves a finished file into place, so that a job over
    its limit publishes nothing more, even where the watchdog's interrupt was swallowed."""
    watch = _ACTIVE_WATCH
    if watch is not None and watch.exceeded:
        raise MemoryLimitExceeded(f"{path}: not written: {watch.message()}")


class MemoryWatch:
    """Watchdog of a job's resident memory (its process tree) against ``limit_mb``.

    Past the limit: the children are killed, the main thread is interrupted (so that
    :func:`nuwa.io.atomic_path` removes its temporary file) and :attr:`exceeded` is set; the
    caller reports :meth:`message`. Should the interrupt be swallowed, no output is published
    after it (:func:`refuse_output_over_memory_limit`). Should the main thread not return to
    Python within ``grace`` seconds (stuck in a long C call), the watchdog prints the message
    and ends the process itself (exit status 2).
    """

    def __init__(self, limit_mb: int, stage: str, rule: str | None = None, interval: float = 0.05,
                 grace: float = 10.0):
        import psutil

        self.limit_mb, self.stage, self.rule = int(limit_mb), stage, rule
        self.interval, self.grace = interval, grace
        self.peak = 0
        self.exceeded = False
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nuwa-mem-watch", daemon=True)

    def message(self) -> str:
        rule = f"rule {self.rule}" if self.rule else f"the rule (or job) that runs `nuwa {self.stage}`"
        return (f"job exceeded its declared mem_mb={self.limit_mb} (peak RSS {self.peak / 2**20:.0f} MB); "
                f"raise resources.mem_mb for {rule}")

    def _run(self) -> None:
        import psutil

        limit = self.limit_mb * 2**20
        while not self._stop.wait(self.interval):
            rss = tree_rss_bytes(self._process)
            self.peak = max(self.peak, rss)
            if rss <= limit:
                continue
            self.exceeded = True
            for child in self._process.children(recursive=True):
                try:
                    child.kill()
                except psutil.Error:
                    pass
            _thread.interrupt_main()
            if not self._stop.wait(self.grace):
                import sys

                print(f"nuwa {self.stage}: error: {self.message()}", file=sys.stderr, flush=True)
                os._exit(2)
            return

    def __enter__(self) -> MemoryWatch:
        global _ACTIVE_WATCH
        self.peak = tree_rss_bytes(self._process)
        _ACTIVE_WATCH = self
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE_WATCH
        self._stop.set()
        self._thread.join()
        _ACTIVE_WATCH = None


def watch_memory(limit_mb: int | None, stage: str, rule: str | None = None):
    """A :class:`MemoryWatch` context, or a no-op one when no limit is declared."""
    import contextlib

    if not limit_mb:
        return contextlib.nullcontext(None)
    return MemoryWatch(limit_mb, stage, rule)
