"""The training loader of an augmented variant against a training step: ``nuwa bench loader``.

In a temporary folder it builds a processed moving-glyphs dataset (``--size`` x ``--size``
frames, ``--frames`` input and ``--frames`` output frames, window stride 1) with
``--bank-windows`` training windows, and a +Nuwa bank of one copy per window, written by
:func:`nuwa.bank.write_bank` as ``nuwa bank`` writes it (method ``saliency``; the importance is
drawn at random instead of computed by an upstream ViT: the bank's values do not change how it
is read). It then times, on ``--device``:

* ``serial``: the loader of a +Nuwa cell read without overlap -- a
  :class:`nuwa.loader.TrainingPool` over the original training windows plus the bank file, read
  per batch (:class:`nuwa.io.NetCDFRows`), ``--batch-size`` rows drawn by
  :func:`nuwa.loader.next_batch` (:class:`nuwa.loader.PairedRows`, ``--mix-fraction`` of them
  from the bank), inputs and targets normalised and moved to the device -- in
  samples per second, against one training step of SimVP (``create_backbone("simvp",
  size="small")``) on a batch of the same size and shape (forward, MSE loss
  (:func:`nuwa.methods.training_loss`), backward, Adam step, the loss read back as
  :func:`nuwa.train.train_cell` does), in samples per second. ``ratio`` = step time / loading
  time. Two cases: ``warm``, the bank in the operating system's page cache (every epoch after
  the first, on a machine with the memory for it), and ``cold``, the bank's pages dropped from
  the page cache (``posix_fadvise(DONTNEED)``, untimed) before each timed batch, so that every
  bank row is read from the disk (Linux only; no row elsewhere).
* ``training``: what loading costs the training loop of :func:`nuwa.train.train_cell`, which
  reads batch k + 1 on a thread while step k runs (:class:`nuwa.loader.BatchStream`; on a GPU
  into page-locked memory, in one call that holds no GIL, copied on a side stream):
  ``--loop-steps`` steps of that loop against
  as many steps on one batch already on the device, alternated ``--rounds`` times, the best of
  each kept. The loading time the loop sees is (loop - steps alone), at least the time it spent
  waiting for batches; ``ratio`` = step time / that time: the goal is ``ratio >= 10`` (loading
  at most 10% of a step). Warm page cache.
* ``contention``: the same read-ahead loader (on the host, warm cache) beside a step that is
  bound by Python, as a GPU step is (it launches kernels; here ``--python-ops`` tiny torch
  operations stand in for it, so this case runs on any machine): the step's time alone against
  its added time with the loader's thread building batches beside it, for batches built by
  the numpy path and by the compiled call that holds no GIL (:mod:`nuwa.batchkernel`, what
  the loader uses on a GPU). ``ratio`` = step time / added time.
* ``memory``: the bank's size on disk (MiB) against the peak resident-memory growth of the
  loader while it reads one whole epoch (every row of the pool once, shuffled, in batches;
  Linux's peak RSS, reset before the epoch) over its resident memory before the epoch, with
  the normalised series already in memory. ``ratio`` = bank size / growth: above 1, the loader
  did not hold the bank (an in-memory pool adds at least the bank's size).

Timing: ``time.perf_counter``, after warm-up (``torch.cuda.synchronize`` around the timed
work on a GPU, where ``cudnn.benchmark`` is on); the loader over ``--batches`` batches, the
step over at least ``--min-seconds`` and 3 steps.
"""

from __future__ import annotations

import time

import numpy as np

SUMMARY = ("+Nuwa training loader (bank read per batch from its file) vs one SimVP training step, samples/s; "
           "the loader's memory vs the bank's size")

MIB = 2**20


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default 16, as params.yaml train)")
    parser.add_argument("--frames", type=int, default=10, help="input frames, and output frames (default 10)")
    parser.add_argument("--size", type=int, default=64, help="frame side (default 64)")
    parser.add_argument("--bank-windows", type=int, default=2048,
                        help="training windows, and bank windows (one copy each) (default 2048)")
    parser.add_argument("--batches", type=int, default=200, help="timed loader batches (default 200)")
    parser.add_argument("--cold-batches", type=int, default=50,
                        help="timed loader batches with the bank dropped from the page cache (default 50; 0: none)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time training steps at least this long")
    parser.add_argument("--loop-steps", type=int, default=10,
                        help="training-loop case: steps per timed round (default 10; 0: no such case)")
    parser.add_argument("--rounds", type=int, default=2, help="training-loop case: timed rounds (default 2)")
    parser.add_argument("--python-ops", type=int, default=400,
                        help="contention case: tiny torch operations per stand-in step (default 400; 0: no such case)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--keep", help="build the dataset and bank in this folder and keep them (default: a "
                                       "temporary folder)")
    parser.add_argument("--mix-fraction", type=float, default=0.5,
                        help="share of each batch drawn from the bank (default 0.5, as params.yaml bank)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")


def run(args, progress) -> list[dict]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return benchmark(batch_size=args.batch_size, frames=args.frames, size=args.size, windows=args.bank_windows,
                     batches=args.batches, cold_batches=args.cold_batches, min_seconds=args.min_seconds,
                     loop_steps=args.loop_steps, rounds=args.rounds, python_ops=args.python_ops, device=device,
                     keep=args.keep, seed=args.seed, mix_fraction=args.mix_fraction, progress=progress)


def build_inputs(folder, *, frames: int, size: int, windows: int, seed: int):
    """The processed dataset and the +Nuwa bank files; returns (data path, bank path, dataset config)."""
    from pathlib import Path

    from nuwa.bank import LazyWindows, write_bank
    from nuwa.ingest import ingest, split_flags
    from nuwa.io import write_netcdf
    from nuwa.windows import load_series, select_dataset, window_counts

    split = {"train": 0.8, "val": 0.1, "test": 0.1}
    # the first length whose training split holds `windows` windows and whose val and test splits
    # one each (ingest refuses a split without a window)
    length = windows + 2 * frames - 1
    while True:
        counts = window_counts(split_flags(length, split), 2 * frames, 1)
        if counts["train"] >= windows and min(counts.values()) > 0:
            break
        length += 1
    config = {"kind": "moving_glyphs", "length": length, "height": size, "width": size, "glyphs": 2,
              "glyph_size": max(4, size // 4), "max_speed": 1.5, "respawn_every": 20, "input_frames": frames,
              "output_frames": frames, "window_stride": 1, "patch_size": max(1, size // 8), "split": split,
              "csi_thresholds": [0.5], "seed": seed}
    folder = Path(folder)
    data, bank = folder / "data.nc", folder / "bank_nuwa.nc"
    write_netcdf(ingest("loader", config), data)
    series = load_series(data)
    train = select_dataset(series, config, "train")
    starts = np.asarray(train.starts)
    grid = size // config["patch_size"]
    importance = np.random.default_rng(seed).random((len(starts), frames, grid, grid), dtype=np.float32)
    settings = {"environment_ratio": 0.25, "copies": 1, "sigma": 2.0, "history": 2, "history_decay": 0.5,
                "exclude_causal_neighbours": True, "chunk_size": 256}
    write_bank(bank, LazyWindows(lambda a, b: train.inputs(starts[a:b]), (len(starts), frames, 1, size, size)),
               starts, method="saliency", settings=settings, patch_size=config["patch_size"],
               seed=seed, importance=importance, channels=["0"], units="1", std=series.std,
               dataset_name="loader", variant="nuwa", desc="")
    return data, bank, config


def _synchronise(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _linux_rss() -> tuple[int, int] | None:
    """(current, peak) resident set size in bytes, from /proc/self/status; None where absent."""
    try:
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _drop_from_page_cache(path) -> bool:
    import os

    if not hasattr(os, "posix_fadvise"):
        return False
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    return True


def loader_seconds(pool, batch_size: int, batches: int, device: str, rows, before_batch=None) -> float:
    """Seconds per batch of the training loader: rows drawn (``rows``, a :class:`nuwa.loader.PairedRows`),
    read, normalised, moved to the device."""
    from nuwa.loader import next_batch

    total = 0.0
    for _ in range(batches):
        if before_batch is not None:
            before_batch()
        _synchronise(device)
        started = time.perf_counter()
        inputs, targets = next_batch(pool, rows, batch_size)
        inputs, targets = inputs.to(device), targets.to(device)
        _synchronise(device)
        total += time.perf_counter() - started
    return total / batches


def simvp_step(inputs, targets, device: str):
    """One training step of SimVP (small) on a batch shaped like ``inputs``/``targets``, as
    :func:`nuwa.train.train_cell` takes it: forward, loss, backward, Adam step, loss read back."""
    import torch

    from nuwa.backbones import create_backbone
    from nuwa.methods import training_loss

    model = create_backbone("simvp", in_shape=tuple(inputs.shape[1:]), out_frames=targets.shape[1],
                            size="small").to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step(inputs, targets) -> float:
        loss = training_loss(model, inputs, targets, progress=0.0, generator=generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def step_seconds(step, inputs, targets, device: str, min_seconds: float) -> float:
    """Seconds per training step on one batch already on the device."""
    inputs, targets = inputs.to(device), targets.to(device)
    for _ in range(2):  # warm-up: allocations, cuDNN's algorithm search
        step(inputs, targets)
    _synchronise(device)
    steps, started = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - started < min_seconds:
        step(inputs, targets)
        steps += 1
    _synchronise(device)
    return (time.perf_counter() - started) / steps


def training_loop_seconds(step, pool, batch_size: int, device: str, rows, loop_steps: int,
                          rounds: int) -> tuple[float, float, float]:
    """(loop, steps alone, waiting) seconds per step: the training loop with its read-ahead
    loader against the same steps on one resident batch, alternated ``rounds`` times (best kept)."""
    from nuwa.loader import BatchStream

    best = {"loop": float("inf"), "alone": float("inf"), "wait": float("inf")}
    with BatchStream(pool, rows, batch_size, device=device) as stream:
        resident = next(stream)
        for _ in range(2):  # warm-up
            step(*next(stream))
        for _ in range(max(1, rounds)):
            _synchronise(device)
            waited, started = 0.0, time.perf_counter()
            for _ in range(loop_steps):
                asked = time.perf_counter()
                inputs, targets = next(stream)
                waited += time.perf_counter() - asked
                step(inputs, targets)
            _synchronise(device)
            loop = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(loop_steps):
                step(*resident)
            _synchronise(device)
            alone = time.perf_counter() - started
            best = {"loop": min(best["loop"], loop), "alone": min(best["alone"], alone),
                    "wait": min(best["wait"], waited)}
    return best["loop"] / loop_steps, best["alone"] / loop_steps, best["wait"] / loop_steps


def contention_seconds(pool, rows, batch_size: int, nogil: bool, python_ops: int, steps: int = 40,
                       rounds: int = 8) -> tuple[float, float]:
    """(stand-in step alone, with the read-ahead loader beside it) in seconds, best of ``rounds``
    alternated rounds: the step is ``python_ops`` tiny torch operations (bound by Python)."""
    import torch

    from nuwa.loader import BatchStream

    def python_bound_step(batch) -> None:
        total = torch.zeros(4)
        for _ in range(python_ops):
            total = total + 1.0

    def timed(batches) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            python_bound_step(next(batches))
        return (time.perf_counter() - started) / steps

    resident = pool.batch(torch.arange(batch_size) % len(pool))
    alone, beside = float("inf"), float("inf")
    # the host loader, with the batch builder under test (the GPU's is the nogil one)
    with BatchStream(pool, rows, batch_size, nogil=nogil) as stream:
        timed(stream)  # warm-up: threads, compilation
        for _ in range(rounds):
            alone = min(alone, timed(iter(lambda: resident, None)))
            beside = min(beside, timed(stream))
    return alone, beside


def benchmark(batch_size: int = 16, frames: int = 10, size: int = 64, windows: int = 2048, batches: int = 200,
              cold_batches: int = 50, min_seconds: float = 2.0, loop_steps: int = 10, rounds: int = 2,
              python_ops: int = 400, device: str = "cpu", keep: str | None = None, seed: int = 0,
              mix_fraction: float = 0.5, progress=None) -> list[dict]:
    import contextlib
    import tempfile
    from pathlib import Path

    import torch

    from nuwa.io import NetCDFRows, open_netcdf
    from nuwa.loader import PairedRows, TrainingPool
    from nuwa.windows import load_series, select_dataset

    say = progress or (lambda line: None)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    with contextlib.ExitStack() as stack:
        if keep:
            folder = Path(keep)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nuwa-bench-loader-")))
        started = time.perf_counter()
        data, bank_path, config = build_inputs(folder, frames=frames, size=size, windows=windows, seed=seed)
        bank_mib = bank_path.stat().st_size / MIB
        say(f"loader: dataset and a {bank_mib:.0f} MiB bank built in {time.perf_counter() - started:.1f} s")

        series = load_series(data)
        train = select_dataset(series, config, "train")
        _ = train.normalised  # the normalised series: in memory for training whatever the pool
        bank = stack.enter_context(NetCDFRows(bank_path, "augmented"))
        with open_netcdf(bank_path, variables=("augmented", "source_index", "copy"), load=False) as handle:
            bank_sources = handle["source_index"].values  # as `nuwa train` reads them
            bank_copies = handle["copy"].values
        pool = TrainingPool(train, bank, bank_sources)
        rows = PairedRows.seeded(pool, seed, "bench", bank_copies=bank_copies, mix_fraction=mix_fraction)
        generator = torch.Generator().manual_seed(seed)
        loader_seconds(pool, batch_size, 5, device, rows)  # warm-up
        warm = loader_seconds(pool, batch_size, batches, device, rows)
        say(f"loader (warm page cache): {1e3 * warm:.2f} ms per batch of {batch_size}")
        cold = None
        if cold_batches > 0 and _drop_from_page_cache(bank_path):
            cold = loader_seconds(pool, batch_size, cold_batches, device, rows,
                                  before_batch=lambda: _drop_from_page_cache(bank_path))
            say(f"loader (bank dropped from the page cache before each batch): {1e3 * cold:.2f} ms per batch")

        # memory: one whole epoch, every row of the pool once, shuffled
        growth = None
        before = _linux_rss()
        if before is not None and _reset_peak_rss():
            order = torch.randperm(len(pool), generator=generator)
            for first in range(0, len(pool), batch_size):
                inputs, targets = pool.batch(order[first:first + batch_size])
                inputs, targets = inputs.to(device), targets.to(device)
            del inputs, targets
            after = _linux_rss()
            growth = max(after[1] - before[0], 4096) / MIB  # at least a page: a finite ratio
            say(f"loader epoch of {len(pool)} rows: peak RSS +{growth:.1f} MiB (bank {bank_mib:.0f} MiB on disk)")

        inputs, targets = pool.batch(torch.arange(batch_size) % len(pool))
        train_step = simvp_step(inputs, targets, device)
        step = step_seconds(train_step, inputs, targets, device, min_seconds)
        say(f"simvp small training step: {1e3 * step:.1f} ms per batch of {batch_size}")
        contention = {}
        if python_ops > 0:
            for builder, nogil in (("numpy", False), ("nogil", True)):
                alone_here, beside = contention_seconds(pool, rows, batch_size, nogil, python_ops)
                contention[builder] = (alone_here, max(beside - alone_here, 1e-9))
                say(f"python-bound step ({python_ops} tiny torch ops) {1e3 * alone_here:.3f} ms alone, "
                    f"+{1e3 * (beside - alone_here):.3f} ms with the loader beside it ({builder} batches)")
        loop = None
        if loop_steps > 0:
            loop, alone, waited = training_loop_seconds(train_step, pool, batch_size, device, rows, loop_steps,
                                                        rounds)
            visible = max(loop - alone, waited, 1e-9)
            say(f"training loop with the read-ahead loader: {1e3 * loop:.2f} ms per step, steps alone "
                f"{1e3 * alone:.2f} ms, waiting for batches {1e3 * waited:.3f} ms: loading visible "
                f"{1e3 * visible:.3f} ms per step")

    shape = f"{batch_size}x{frames}x1x{size}x{size}->{frames}"
    case = f"{device.split(':')[0]}/{shape}/pool{len(pool)}(bank{len(bank_sources)})"
    reference = "simvp_small_train_step"
    rows = [{"benchmark": "loader", "case": f"serial/warm/{case}", "value": batch_size / warm, "unit": "samples/s",
             "reference": reference, "reference_value": batch_size / step, "ratio": step / warm}]
    if loop is not None:
        rows.append({"benchmark": "loader", "case": f"training/warm/{case}", "value": batch_size / visible,
                     "unit": "samples/s", "reference": "simvp_small_train_step_alone",
                     "reference_value": batch_size / alone, "ratio": alone / visible})
    for builder, (alone_here, added) in contention.items():
        rows.append({"benchmark": "loader", "case": f"contention/{builder}/python{python_ops}/{case}",
                     "value": batch_size / added, "unit": "samples/s", "reference": "python_bound_step_alone",
                     "reference_value": batch_size / alone_here, "ratio": alone_here / added})
    if cold is not None:
        rows.append({"benchmark": "loader", "case": f"serial/cold/{case}", "value": batch_size / cold,
                     "unit": "samples/s", "reference": reference, "reference_value": batch_size / step,
                     "ratio": step / cold})
    if growth is not None:
        rows.append({"benchmark": "loader", "case": f"memory/epoch/{case}", "value": bank_mib, "unit": "MiB",
                     "reference": "loader_peak_rss_growth", "reference_value": growth, "ratio": bank_mib / growth})
    return rows
